package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// Backups travel as admin ops over the native protocol, each answered by
// the leader (a follower forwards them):
//
//	{"op":"backup-begin"}  a linearizable read point (read index), then a
//	    capture of the state, serialised as the save-file document and held
//	    in the leader's memory; answers BackupInfo.
//	{"op":"backup-read","backup":ID,"offset":N,"length":L}  answers the raw
//	    bytes [N, N+L) of that document (L at most MaxBackupChunk).
//	{"op":"backup-end","backup":ID}  releases it (it also goes BackupIdle
//	    after its last read, or when the leader changes).
//	{"op":"backup-digest"}  a linearizable {"sessions","sha256"} of the
//	    whole state (fsm.View.Hash), to verify a restore.
//	{"op":"restore-batch","document":{…}}  replicates the sessions of a
//	    save-file document through raft, each keeping its own _written;
//	    answers {"loaded":N}. The client sends a large file as many such
//	    batches (RestoreRecords), each within the node's frame limit.
//
// Limits: the leader holds at most MaxHeldBackups documents at once, each
// as large as the save file; a single session larger than the node's
// --max-frame (less a few hundred bytes) cannot be restored.
const (
	// MaxBackupChunk bounds one backup-read answer; the client's response
	// frame limit (64 MiB by default) must exceed it.
	MaxBackupChunk = 16 << 20
	// DefaultBackupChunk is what FetchBackup asks for per read.
	DefaultBackupChunk = 4 << 20
	// MaxHeldBackups bounds the backups a leader holds at once.
	MaxHeldBackups = 2
	// BackupIdle releases a held backup nobody read for this long.
	BackupIdle = 2 * time.Minute
	// DefaultRestoreBatch is the document size RestoreRecords sends per
	// request: well within the node's default 1 MiB frame.
	DefaultRestoreBatch = 512 << 10
)

// BackupInfo describes a backup held by the leader.
type BackupInfo struct {
	ID       string `json:"backup"`
	Size     int64  `json:"size"`     // bytes of the document
	SHA256   string `json:"sha256"`   // hex SHA-256 of the document
	Sessions int    `json:"sessions"` // records in it
	Index    uint64 `json:"index"`    // raft index it reflects (at least)
	Leader   string `json:"leader_id"`
}

// Digest is a linearizable summary of the whole state.
type Digest struct {
	Sessions int    `json:"sessions"`
	SHA256   string `json:"sha256"` // fsm.View.Hash: the save-file document's SHA-256
	Index    uint64 `json:"index"`
	// Expired counts the sessions past the cluster's session duration
	// (--duration) that the next prune has not removed yet: they read as
	// absent (a restore of an old backup).
	Expired int `json:"expired"`
}

type heldBackup struct {
	info     BackupInfo
	doc      []byte
	lastUsed time.Time
	term     uint64
}

// backupStore holds the documents of running backups on the leader.
type backupStore struct {
	mu      sync.Mutex
	held    map[string]*heldBackup
	pending int // reserved, being serialised
}

type backupRequest struct {
	Op       string          `json:"op"`
	Backup   string          `json:"backup,omitempty"`
	Offset   int64           `json:"offset,omitempty"`
	Length   int64           `json:"length,omitempty"`
	Document json.RawMessage `json:"document,omitempty"`
}

// backupAdmin answers the backup ops; handled is false for any other body,
// which then goes to Node.Admin.
func (n *Node) backupAdmin(ctx context.Context, body []byte) (out []byte, handled bool, err error) {
	// Cheap test first: most admin bodies are not ours.
	if !bytes.Contains(body, []byte(`"backup-`)) && !bytes.Contains(body, []byte(`"restore-batch"`)) {
		return nil, false, nil
	}
	var req backupRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, false, nil // Node.Admin reports it
	}
	switch req.Op {
	case "backup-begin", "backup-read", "backup-end", "backup-digest", "restore-batch":
	default:
		return nil, false, nil
	}
	if err := adminOnly(ctx, req.Op); err != nil {
		return nil, true, err
	}
	if err := n.awaitLeader(ctx); err != nil {
		return nil, true, err
	}
	if n.raft.State() != raft.Leader {
		if transport.FromPeer(ctx) {
			return nil, true, notLeader(n.raft)
		}
		if resp, forwarded, err := n.forward(ctx, &transport.Request{Op: transport.OpAdmin, Data: body}); forwarded {
			return resp.Data, true, err
		}
	}
	switch req.Op {
	case "backup-begin":
		info, err := n.beginBackup(ctx)
		n.obs.observeBackup(err)
		if err != nil {
			return nil, true, err
		}
		out, err = json.Marshal(info)
		return out, true, err
	case "backup-read":
		out, err = n.backups.read(req.Backup, req.Offset, req.Length, n.raft.CurrentTerm())
		return out, true, err
	case "backup-end":
		n.backups.release(req.Backup)
		return []byte(`{}`), true, nil
	case "backup-digest":
		if err := n.reads.wait(ctx); err != nil {
			return nil, true, err
		}
		index := n.fsm.applied.get()
		v := n.fsm.State.Capture()
		out, err = json.Marshal(Digest{Sessions: v.Len(), SHA256: v.Hash(), Index: index,
			Expired: v.Expired(time.Now().UnixMilli(), n.cfg.Duration.Milliseconds())})
		return out, true, err
	default: // restore-batch
		now := time.Now().UnixMilli()
		records, err := fsm.ReadDocument(bytes.NewReader(req.Document), now)
		if err != nil {
			return nil, true, transport.Errorf(transport.CodeBadRequest, "restore batch: %v", err)
		}
		moved, err := n.screenRecords(records, now)
		if err != nil {
			return nil, true, transport.Errorf(transport.CodeBadRequest, "restore batch: %v", err)
		}
		if moved > 0 {
			n.log.Warn("restored sessions were saved in the future by this node's clock; they count as saved now", "sessions", moved)
		}
		if err := n.importRecords(records); err != nil {
			return nil, true, applyError(err, n.raft)
		}
		n.obs.observeRestored(len(records))
		return []byte(`{"loaded":` + strconv.Itoa(len(records)) + `,"moved":` + strconv.Itoa(moved) + `}`), true, nil
	}
}

// beginBackup captures the state at a linearizable point and holds its
// document for backup-read.
func (n *Node) beginBackup(ctx context.Context) (BackupInfo, error) {
	if err := n.reads.wait(ctx); err != nil {
		return BackupInfo{}, err
	}
	term := n.raft.CurrentTerm()
	index := n.fsm.applied.get()
	v := n.fsm.State.Capture()
	if err := n.backups.reserve(); err != nil {
		return BackupInfo{}, err
	}
	var buf bytes.Buffer
	if _, err := v.WriteTo(&buf); err != nil {
		n.backups.unreserve()
		return BackupInfo{}, transport.Errorf(transport.CodeInternal, "serialise backup: %v", err)
	}
	sum := sha256.Sum256(buf.Bytes())
	var id [8]byte
	_, _ = rand.Read(id[:])
	info := BackupInfo{ID: hex.EncodeToString(id[:]), Size: int64(buf.Len()), SHA256: hex.EncodeToString(sum[:]),
		Sessions: v.Len(), Index: index, Leader: n.id}
	n.backups.put(&heldBackup{info: info, doc: buf.Bytes(), lastUsed: time.Now(), term: term})
	n.log.Info("backup captured", "backup", info.ID, "sessions", info.Sessions, "bytes", info.Size, "index", index)
	return info, nil
}

func newBackupStore() *backupStore { return &backupStore{held: map[string]*heldBackup{}} }

func (s *backupStore) sweepLocked() {
	for id, b := range s.held {
		if time.Since(b.lastUsed) > BackupIdle {
			delete(s.held, id)
		}
	}
}

// reserve takes a slot for a backup about to be serialised, so that
// concurrent begins cannot hold more than MaxHeldBackups documents.
func (s *backupStore) reserve() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked()
	if len(s.held)+s.pending >= MaxHeldBackups {
		return transport.Errorf(transport.CodeOverloaded, "%d backups are already running on the leader: retry when one ends (at most %s after its last read)", MaxHeldBackups, BackupIdle)
	}
	s.pending++
	return nil
}

func (s *backupStore) unreserve() {
	s.mu.Lock()
	s.pending--
	s.mu.Unlock()
}

// put turns a reserved slot into a held backup.
func (s *backupStore) put(b *heldBackup) {
	s.mu.Lock()
	s.pending--
	s.held[b.info.ID] = b
	s.mu.Unlock()
}

func (s *backupStore) release(id string) {
	s.mu.Lock()
	delete(s.held, id)
	s.mu.Unlock()
}

// read answers bytes [off, off+length) of backup id. A backup taken in an
// earlier term is gone: this node may have been deposed and re-elected
// meanwhile, and the client should start over anyway.
func (s *backupStore) read(id string, off, length int64, term uint64) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked()
	b, ok := s.held[id]
	if !ok || b.term != term {
		delete(s.held, id)
		return nil, transport.Errorf(transport.CodeBadRequest,
			"backup %q is not held by the leader (it ended, sat idle for %s, or the leader changed): start the backup again", id, BackupIdle)
	}
	if off < 0 || off > int64(len(b.doc)) {
		return nil, transport.Errorf(transport.CodeBadRequest, "backup offset %d is outside its %d bytes", off, len(b.doc))
	}
	if length <= 0 || length > MaxBackupChunk {
		length = MaxBackupChunk
	}
	b.lastUsed = time.Now()
	end := min(off+length, int64(len(b.doc)))
	return b.doc[off:end], nil
}

// AdminFunc sends one admin request body to a node and returns its answer
// (transport.Conn.RoundTrip with OpAdmin, or Node's handler in tests). It
// must be safe to call again after an error.
type AdminFunc func(ctx context.Context, body []byte) ([]byte, error)

// BackupOptions tunes FetchBackup.
type BackupOptions struct {
	// Chunk is the bytes asked for per read (DefaultBackupChunk; at most
	// MaxBackupChunk).
	Chunk int64
	// Progress, when set, is called after every chunk.
	Progress func(done, total int64)
}

// FetchBackup takes a consistent backup through call and writes the
// save-file document to w, reading it in chunks and checking its SHA-256
// as it goes. On any error the backup is released on the leader and what
// was written to w must be discarded. A change of leader midway fails it:
// run it again.
func FetchBackup(ctx context.Context, call AdminFunc, w io.Writer, opts BackupOptions) (BackupInfo, error) {
	if opts.Chunk <= 0 {
		opts.Chunk = DefaultBackupChunk
	}
	var info BackupInfo
	body, err := call(ctx, []byte(`{"op":"backup-begin"}`))
	if err != nil {
		return info, fmt.Errorf("start backup: %w", err)
	}
	if err := json.Unmarshal(body, &info); err != nil || info.ID == "" {
		return info, fmt.Errorf("start backup: the node answered %.100q, not a backup (is it older than this client?)", body)
	}
	defer func() {
		end, _ := json.Marshal(backupRequest{Op: "backup-end", Backup: info.ID})
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = call(rctx, end)
	}()
	h := sha256.New()
	var off int64
	for off < info.Size {
		req, _ := json.Marshal(backupRequest{Op: "backup-read", Backup: info.ID, Offset: off, Length: opts.Chunk})
		chunk, err := call(ctx, req)
		if err != nil {
			return info, fmt.Errorf("read backup at byte %d of %d: %w", off, info.Size, err)
		}
		if len(chunk) == 0 {
			return info, fmt.Errorf("read backup at byte %d of %d: the leader sent nothing", off, info.Size)
		}
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return info, fmt.Errorf("write backup: %w", err)
		}
		off += int64(len(chunk))
		if opts.Progress != nil {
			opts.Progress(off, info.Size)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != info.SHA256 {
		return info, fmt.Errorf("backup damaged in transit: SHA-256 %s, the leader's is %s", got, info.SHA256)
	}
	return info, nil
}

// FetchDigest asks the leader, through call, for a linearizable digest of
// the whole state.
func FetchDigest(ctx context.Context, call AdminFunc) (Digest, error) {
	var d Digest
	body, err := call(ctx, []byte(`{"op":"backup-digest"}`))
	if err != nil {
		return d, err
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return d, fmt.Errorf("digest: the node answered %.100q", body)
	}
	return d, nil
}

// DocumentDigest returns the Digest of records as the cluster would report
// it once it holds exactly these sessions.
func DocumentDigest(records map[string]*fsm.Record) Digest {
	st := fsm.NewState()
	st.Replace(records)
	v := st.Capture()
	return Digest{Sessions: v.Len(), SHA256: v.Hash()}
}

// RestoreOptions tunes RestoreRecords.
type RestoreOptions struct {
	// BatchBytes is the size of the document sent per request
	// (DefaultRestoreBatch); it must stay below the node's --max-frame.
	BatchBytes int
	// Progress, when set, is called after every batch.
	Progress func(done, total int)
	// Moved, when set, is called with the number of a batch's sessions
	// whose save time the node moved to its now: they were saved more
	// than a minute in its future (the clock of the machine that wrote
	// the file), and would never have expired.
	Moved func(n int)
}

// RestoreRecords replicates records into the cluster through call, in
// save-file documents of about opts.BatchBytes, each record keeping its own
// _written; an existing session with the same sid is replaced, others are
// left alone. A batch that fails is retried a few times (it is idempotent).
// It returns how many records were loaded.
func RestoreRecords(ctx context.Context, call AdminFunc, records map[string]*fsm.Record, opts RestoreOptions) (int, error) {
	batchBytes := opts.BatchBytes
	if batchBytes <= 0 {
		batchBytes = DefaultRestoreBatch
	}
	sids := make([]string, 0, len(records))
	for sid := range records {
		sids = append(sids, sid)
	}
	sort.Strings(sids)
	loaded := 0
	var doc []byte
	count := 0
	flush := func() error {
		if count == 0 {
			return nil
		}
		doc = append(doc, '}')
		body := append([]byte(`{"op":"restore-batch","document":`), doc...)
		body = append(body, '}')
		var err error
		var answer []byte
		for try := 0; try < 5; try++ {
			if answer, err = call(ctx, body); err == nil {
				break
			}
			if ctx.Err() != nil || errors.Is(err, transport.ErrBadRequest) || errors.Is(err, transport.ErrTooLarge) {
				break // the same batch would be refused again
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(try+1) * 200 * time.Millisecond):
			}
		}
		if errors.Is(err, transport.ErrTooLarge) {
			err = fmt.Errorf("%w (send smaller batches: --batch-size below the nodes' --max-frame)", err)
		}
		if err != nil {
			return fmt.Errorf("restore batch of %d sessions (%d bytes) after %d loaded: %w", count, len(doc), loaded, err)
		}
		loaded += count
		var got struct {
			Moved int `json:"moved"`
		}
		if json.Unmarshal(answer, &got) == nil && got.Moved > 0 && opts.Moved != nil {
			opts.Moved(got.Moved)
		}
		if opts.Progress != nil {
			opts.Progress(loaded, len(records))
		}
		doc, count = doc[:0], 0
		return nil
	}
	for _, sid := range sids {
		rec := appendDocRecord(nil, sid, records[sid])
		if count > 0 && len(doc)+len(rec) > batchBytes {
			if err := flush(); err != nil {
				return loaded, err
			}
		}
		if count == 0 {
			doc = append(doc, '{')
		} else {
			doc = append(doc, ',')
		}
		doc = append(doc, rec...)
		count++
	}
	return loaded, flush()
}

// appendDocRecord appends `"sid":{data…,"_written":ms}`: one member of a
// save-file document.
func appendDocRecord(dst []byte, sid string, r *fsm.Record) []byte {
	k, _ := json.Marshal(sid)
	dst = append(dst, k...)
	dst = append(dst, ':')
	data := r.Data
	if len(data) < 2 {
		data = []byte("{}")
	}
	dst = append(dst, data[:len(data)-1]...)
	if len(bytes.TrimSpace(data[1:len(data)-1])) > 0 {
		dst = append(dst, ',')
	}
	dst = append(dst, `"`+fsm.WrittenKey+`":`...)
	dst = strconv.AppendInt(dst, r.Written, 10)
	return append(dst, '}')
}
