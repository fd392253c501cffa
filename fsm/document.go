package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// View is a point-in-time copy of the sessions, made by State.Capture. It is
// immutable and safe to use from any goroutine while the State moves on.
type View struct {
	shards []map[string]*Record
}

// Len returns the number of sessions in the view.
func (v *View) Len() int {
	n := 0
	for _, m := range v.shards {
		n += len(m)
	}
	return n
}

// Get returns the record for sid in the view, expired or not.
func (v *View) Get(sid string) (*Record, bool) {
	r, ok := v.shards[shardIndex(sid)][sid]
	return r, ok
}

// WriteTo writes the view as the save-file document:
//
//	{"<sid>":{<data…>,"_written":<ms>},…}
//
// with sids in byte order, so equal states give byte-identical documents.
// This one encoder serves both the save file and the raft snapshot.
func (v *View) WriteTo(w io.Writer) (int64, error) {
	sids := make([]string, 0, v.Len())
	for _, m := range v.shards {
		for sid := range m {
			sids = append(sids, sid)
		}
	}
	slices.Sort(sids)
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	bw.WriteByte('{')
	var scratch []byte
	for i, sid := range sids {
		r := v.shards[shardIndex(sid)][sid]
		scratch = scratch[:0]
		if i > 0 {
			scratch = append(scratch, ',')
		}
		scratch = appendJSONString(scratch, sid)
		scratch = append(scratch, ':')
		scratch = appendRecord(scratch, r)
		if _, err := bw.Write(scratch); err != nil {
			return cw.n, err
		}
	}
	bw.WriteByte('}')
	err := bw.Flush()
	return cw.n, err
}

// appendRecord appends r as one save-file record: its data object with
// WrittenKey added as the last member.
func appendRecord(dst []byte, r *Record) []byte {
	data := r.Data
	if len(data) < 2 {
		data = []byte("{}")
	}
	dst = append(dst, data[:len(data)-1]...)
	if len(data) > 2 {
		dst = append(dst, ',')
	}
	dst = append(dst, `"`+WrittenKey+`":`...)
	dst = strconv.AppendInt(dst, r.Written, 10)
	return append(dst, '}')
}

// Hash returns the hex SHA-256 of the view's save-file document; replicas
// with identical state have identical hashes.
func (v *View) Hash() string {
	h := sha256.New()
	_, _ = v.WriteTo(h) // a hash never fails to write
	return hex.EncodeToString(h.Sum(nil))
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadDocument decodes a save-file document (a Kado save file or one of
// ours; the raft snapshot too). A record without WrittenKey — Kado's own
// SessionStorage wrote none — gets defaultWritten. Any syntax error, a record
// that is not an object, an invalid sid or a non-integer WrittenKey is
// reported as ErrCorrupt with the byte offset where it was found.
func ReadDocument(r io.Reader, defaultWritten int64) (map[string]*Record, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 256<<10))
	dec.UseNumber()
	corrupt := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("%w: save file at byte %d: %s: %v", ErrCorrupt, dec.InputOffset(), what, err)
		}
		return fmt.Errorf("%w: save file at byte %d: %s", ErrCorrupt, dec.InputOffset(), what)
	}
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, corrupt("the file is empty (an empty store is written as {})", nil)
	}
	if err != nil {
		return nil, corrupt("not JSON", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, corrupt("the document must be a JSON object of sessions", nil)
	}
	out := make(map[string]*Record)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, corrupt("reading a session id", err)
		}
		sid, _ := tok.(string)
		if err := ValidateSID(sid); err != nil {
			return nil, corrupt("bad session id", err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, corrupt(fmt.Sprintf("reading session %q", sid), err)
		}
		rec, err := decodeRecord(raw, defaultWritten)
		if err != nil {
			return nil, corrupt(fmt.Sprintf("session %q", sid), err)
		}
		out[sid] = rec
	}
	if _, err := dec.Token(); err != nil {
		return nil, corrupt("unterminated document", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, corrupt("trailing data after the document", err)
	}
	return out, nil
}

func decodeRecord(raw []byte, defaultWritten int64) (*Record, error) {
	fields, err := ParseObject(raw)
	if err != nil {
		return nil, err
	}
	rec := &Record{Written: defaultWritten}
	kept := fields[:0]
	for _, f := range fields {
		if f.Key != WrittenKey {
			kept = append(kept, f)
			continue
		}
		w, err := strconv.ParseInt(string(bytes.TrimSpace(f.Value)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s must be an integer of ms since the epoch, got %s", WrittenKey, f.Value)
		}
		rec.Written = w
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, EncodeObject(kept)); err != nil {
		return nil, err
	}
	rec.Data = buf.Bytes()
	return rec, nil
}
