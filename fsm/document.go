package fsm

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
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

// Expired returns how many of the view's sessions are expired at now
// (Record.Expired).
func (v *View) Expired(now, duration int64) int {
	n := 0
	for _, m := range v.shards {
		n += CountExpired(m, now, duration)
	}
	return n
}

// CountExpired returns how many of records are expired at now
// (Record.Expired): a view's shard, or a save file's records.
func CountExpired(records map[string]*Record, now, duration int64) int {
	n := 0
	for _, r := range records {
		if r.Expired(now, duration) {
			n++
		}
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
	// The records are sorted with their ids rather than looked up again by
	// id afterwards, and by the ids' first 16 bytes held in the slice
	// (docEntry) before the ids themselves: comparing ids scattered over
	// the heap was a cache miss each, most of the sort's time. At 1M sessions WriteTo
	// took 2.7-3.0 s (40-hex random ids), now 1.5-1.8 s.
	all := make([]docEntry, 0, v.Len())
	for _, m := range v.shards {
		for sid, r := range m {
			all = append(all, docEntry{key: prefixKey(sid, 0), key2: prefixKey(sid, 8), sid: sid, r: r})
		}
	}
	slices.SortFunc(all, func(a, b docEntry) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		if c := cmp.Compare(a.key2, b.key2); c != 0 {
			return c
		}
		return strings.Compare(a.sid, b.sid)
	})
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	bw.WriteByte('{')
	var scratch []byte
	for i, e := range all {
		scratch = scratch[:0]
		if i > 0 {
			scratch = append(scratch, ',')
		}
		scratch = appendJSONString(scratch, e.sid)
		scratch = append(scratch, ':')
		scratch = appendRecord(scratch, e.r)
		if _, err := bw.Write(scratch); err != nil {
			return cw.n, err
		}
	}
	bw.WriteByte('}')
	err := bw.Flush()
	return cw.n, err
}

// writtenLast finds, in a compact object whose last member is WrittenKey
// with an integer value (as appendRecord writes it), the index at which the
// object without that member would close (its ',' or, when it is the only
// member, its '"'), and the integer.
func writtenLast(obj []byte) (at int, written int64, ok bool) {
	const member = `"` + WrittenKey + `":`
	end := len(obj) - 1 // the closing '}'
	if end < 1 || obj[end] != '}' {
		return 0, 0, false
	}
	digits := end
	for digits > 0 && (obj[digits-1] >= '0' && obj[digits-1] <= '9' || obj[digits-1] == '-') {
		digits--
	}
	start := digits - len(member)
	if start < 1 || string(obj[start:digits]) != member {
		return 0, 0, false
	}
	written, err := strconv.ParseInt(string(obj[digits:end]), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	switch obj[start-1] {
	case ',':
		return start - 1, written, true
	case '{':
		return start, written, true
	}
	return 0, 0, false
}

// docEntry is one session in WriteTo's sort: key and key2 are bytes 0-7
// and 8-15 of sid, big-endian, zero-padded, so that (key, key2) order
// agrees with sid order wherever they differ (random ids like
// GenerateID's differ in key; short ones like "user-123456" in key2).
type docEntry struct {
	key, key2 uint64
	sid       string
	r         *Record
}

func prefixKey(sid string, from int) uint64 {
	var b [8]byte
	if from < len(sid) {
		copy(b[:], sid[from:])
	}
	return binary.BigEndian.Uint64(b[:])
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
// reported as ErrCorrupt with the byte offset where it was found, and so is
// a session id given twice (JSON.parse would keep the later session and
// drop the other without a word; neither Kado nor kadosession writes one).
func ReadDocument(r io.Reader, defaultWritten int64) (map[string]*Record, error) {
	out, _, err := readRecords(r, defaultWritten, false)
	return out, err
}

// ReadSaveFile is ReadDocument for a save file to import, which Kado may
// have written: Kado took any cookie's value for a session id, so its file
// may hold ids ValidateSID refuses (over MaxSIDLen bytes, say). Those
// sessions are skipped and counted in badIDs: no request could name them
// here, and refusing the file kept every other session from being
// imported.
func ReadSaveFile(r io.Reader, defaultWritten int64) (records map[string]*Record, badIDs int, err error) {
	return readRecords(r, defaultWritten, true)
}

func readRecords(r io.Reader, defaultWritten int64, skipBadIDs bool) (map[string]*Record, int, error) {
	out := make(map[string]*Record)
	bad := 0
	var badIDs *int
	if skipBadIDs {
		badIDs = &bad
	}
	err := readDocument(r, defaultWritten, func(sid string, rec *Record) error {
		if _, ok := out[sid]; ok {
			return errors.New("its id was given to an earlier session of the document too")
		}
		out[sid] = rec
		return nil
	}, badIDs)
	if err != nil {
		return nil, 0, err
	}
	return out, bad, nil
}

// readDocument is ReadDocument handing each session to put, in document
// order; an error from put stops the reading. A session whose id
// ValidateSID refuses is corrupt, unless badIDs is set: the session is
// then read, skipped and counted there.
func readDocument(r io.Reader, defaultWritten int64, put func(sid string, rec *Record) error, badIDs *int) error {
	d := &docReader{r: bufio.NewReaderSize(r, 256<<10)}
	c, err := d.next()
	if errors.Is(err, io.EOF) {
		return d.corrupt("the file is empty (an empty store is written as {})", nil)
	}
	if err != nil {
		return d.corrupt("read failed", err)
	}
	if c != '{' {
		what := "the document must be a JSON object of sessions"
		if kind := describeJSON([]byte{c}); kind == "invalid JSON" {
			what = "not JSON: " + what
		} else {
			what += ", got " + kind
		}
		if c != '[' && c != '"' {
			// What the file starts with: a first byte alone misleads (a line
			// of text starting with "t" reads as a boolean). Not for an
			// array or a string, which may hold session ids (credentials).
			rest, _ := d.r.Peek(19)
			start := append([]byte{c}, rest...)
			if i := bytes.IndexByte(start, '\n'); i >= 0 {
				start = start[:i]
			}
			what = fmt.Sprintf("%s; it starts with %q", what, start)
		}
		return d.corrupt(what, nil)
	}
	count := 0 // sessions read
	c, err = d.next()
	for err == nil && c != '}' {
		if c != '"' {
			return d.corrupt("a session id (a JSON string) was expected", nil)
		}
		var sid string
		if sid, err = d.key(); err != nil {
			return d.corrupt("reading a session id", err)
		}
		skip := false
		if err := ValidateSID(sid); err != nil {
			if badIDs == nil {
				return d.corrupt("bad session id", err)
			}
			*badIDs++
			skip = true
		}
		if c, err = d.next(); err == nil && c != ':' {
			return d.corrupt(fmt.Sprintf("':' expected after the id of session #%d", count+1), nil)
		}
		if c, err = d.next(); err == nil && c != '{' {
			return d.corrupt(fmt.Sprintf("session #%d must be a JSON object, got %s", count+1, describeJSON([]byte{c})), nil)
		}
		var raw []byte
		if err == nil {
			raw, err = d.object()
		}
		if err != nil {
			return d.corrupt(fmt.Sprintf("reading session #%d", count+1), err)
		}
		rec, derr := decodeRecord(raw, defaultWritten)
		if derr != nil {
			return d.corrupt(fmt.Sprintf("session #%d", count+1), derr)
		}
		if !skip {
			if perr := put(sid, rec); perr != nil {
				return d.corrupt(fmt.Sprintf("session #%d", count+1), perr)
			}
		}
		count++
		if c, err = d.next(); err == nil {
			switch c {
			case ',':
				if c, err = d.next(); err == nil && c == '}' {
					return d.corrupt("a session id was expected after ',' (JSON allows no trailing comma)", nil)
				}
			case '}':
			default:
				return d.corrupt("',' or '}' expected after a session", nil)
			}
		}
	}
	if err != nil {
		return d.corrupt("unterminated document", err)
	}
	if _, err := d.next(); !errors.Is(err, io.EOF) {
		return d.corrupt("trailing data after the document", err)
	}
	return nil
}

// docReader reads the save-file document's outer object a byte at a time
// (buffered) and each session's object whole, so no reflection is involved.
type docReader struct {
	r   *bufio.Reader
	off int64
	buf []byte // scratch for the session being read
}

func (d *docReader) corrupt(what string, err error) error {
	if err != nil && err != io.EOF {
		return fmt.Errorf("%w: save file at byte %d: %s: %v", ErrCorrupt, d.off, what, err)
	}
	return fmt.Errorf("%w: save file at byte %d: %s", ErrCorrupt, d.off, what)
}

// next returns the next byte that is not JSON white space.
func (d *docReader) next() (byte, error) {
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			return 0, err
		}
		d.off++
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return c, nil
		}
	}
}

// unexpected turns io.EOF inside a value into io.ErrUnexpectedEOF and keeps
// any other read error as it is.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// key reads a JSON string whose opening quote was consumed.
func (d *docReader) key() (string, error) {
	d.buf = append(d.buf[:0], '"')
	defer func() { d.buf = d.buf[:0] }()
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			return "", unexpected(err)
		}
		d.off++
		d.buf = append(d.buf, c)
		if c == '\\' {
			e, err := d.r.ReadByte()
			if err != nil {
				return "", unexpected(err)
			}
			d.off++
			d.buf = append(d.buf, e)
			continue
		}
		if c == '"' {
			break
		}
		if len(d.buf) > MaxSIDLen*6+2 {
			return "", fmt.Errorf("session id longer than %d bytes", MaxSIDLen)
		}
	}
	var s string
	if err := json.Unmarshal(d.buf, &s); err != nil {
		return "", err
	}
	return s, nil
}

// object reads a JSON object whose '{' was consumed, up to its matching '}',
// and returns it whole (validated later by decodeRecord). It scans the
// reader's buffer in place rather than a byte per call; the returned slice
// is reused by the next call.
func (d *docReader) object() ([]byte, error) {
	d.buf = append(d.buf[:0], '{')
	depth, inString, escape := 1, false, false
	for {
		if d.r.Buffered() == 0 {
			if _, err := d.r.Peek(1); err != nil {
				return nil, unexpected(err)
			}
		}
		chunk, _ := d.r.Peek(d.r.Buffered())
		for i := 0; i < len(chunk); i++ {
			c := chunk[i]
			switch {
			case escape:
				escape = false
			case inString:
				// Most of a record is string content: jump to the next
				// quote, and look for a backslash only before it.
				rest := chunk[i:]
				q := bytes.IndexByte(rest, '"')
				if q >= 0 {
					rest = rest[:q]
				}
				if b := bytes.IndexByte(rest, '\\'); b >= 0 {
					i += b // the backslash; the loop steps past it
					escape = true
					continue
				}
				if q < 0 {
					i = len(chunk) - 1 // the string goes on in the next chunk
					continue
				}
				i += q
				inString = false
			case c == '"':
				inString = true
			case c == '{' || c == '[':
				depth++
			case c == '}' || c == ']':
				depth--
				if depth == 0 {
					d.buf = append(d.buf, chunk[:i+1]...)
					d.off += int64(i + 1)
					_, _ = d.r.Discard(i + 1)
					return d.buf, nil
				}
			}
		}
		d.buf = append(d.buf, chunk...)
		d.off += int64(len(chunk))
		_, _ = d.r.Discard(len(chunk))
	}
}

func decodeRecord(raw []byte, defaultWritten int64) (*Record, error) {
	compact, err := compactObject(raw)
	if err != nil {
		return nil, err
	}
	if at, written, ok := writtenLast(compact); ok {
		// What WriteTo writes: WrittenKey last. The rest is kept as it is
		// when it needs no rewriting (no other WrittenKey, no duplicate or
		// escaped key), instead of being split up and encoded again.
		was := compact[at]
		compact[at] = '}'
		if _, rewrite, err := splitCompact(compact[:at+1], true); err == nil && !rewrite {
			return &Record{Written: written, Data: compact[:at+1]}, nil
		}
		compact[at] = was
	}
	fields, rewrite, err := splitCompact(compact, true) // dropped, or encoded afresh, before compact changes
	if err != nil {
		return nil, err
	}
	rec := &Record{Written: defaultWritten, Data: compact}
	if !rewrite {
		return rec, nil
	}
	for _, f := range fields {
		if f.Key != WrittenKey {
			continue
		}
		w, err := strconv.ParseInt(string(f.Value), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s must be an integer of ms since the epoch, got %s", WrittenKey, f.Value)
		}
		rec.Written = w
	}
	rec.Data = EncodeObject(withoutWritten(fields))
	return rec, nil
}
