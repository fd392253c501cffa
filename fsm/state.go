package fsm

import (
	"fmt"
	"hash/maphash"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// shardCount: many small shards, so that the copy a write makes of a shard
// a snapshot still holds (shard.own) is small: ~1000 sessions at 1M.
const shardCount = 1024

var shardSeed = maphash.MakeSeed()

// State is the set of sessions. Apply must be called from one goroutine at a
// time (raft guarantees it); Get, Len and Capture are safe concurrently with
// Apply and with each other.
//
// The sessions are split over shards, each behind its own lock, and records
// are immutable. A Capture copies nothing: it shares every shard's map with
// the view and marks it shared; the first write to a shared shard copies
// that shard's map of pointers (copy on write). Raft calls Capture on the
// goroutine that applies writes, so capturing 1M sessions by copying them
// held every write for 67-470 ms; now each write pays at most the copy of
// the few shards it touches, once per capture.
type State struct {
	shards  [shardCount]shard
	version atomic.Uint64
	users   userIndex
	applied dedupe
}

type shard struct {
	mu       sync.RWMutex
	sessions map[string]*Record
	// shared: a View holds sessions, which must then not change; the next
	// write copies it first (own).
	shared bool
}

// own makes sh.sessions safe to modify: a map a View shares is copied
// first. Called with sh.mu held for writing.
func (sh *shard) own() {
	if sh.shared {
		sh.sessions = maps.Clone(sh.sessions)
		sh.shared = false
	}
}

// NewState returns an empty State.
func NewState() *State {
	s := &State{}
	for i := range s.shards {
		s.shards[i].sessions = make(map[string]*Record)
	}
	return s
}

func shardIndex(sid string) uint64 { return maphash.String(shardSeed, sid) % shardCount }

func (s *State) shard(sid string) *shard { return &s.shards[shardIndex(sid)] }

// Result is the outcome of applying one command.
type Result struct {
	// Err is a business error (an invalid patch, a session over its size
	// limit); the state is unchanged when it is set.
	Err error
	// Count is how many sessions the command removed (OpDelete, OpPrune) or
	// changed (OpTouch: 1 if the session existed and had not expired;
	// an OpPatch with IfExists: 1, or 0 when it found no live session).
	Count int
}

// Get returns the session sid unless it is missing or expired at now for the
// given lifetime (both in ms; duration <= 0 means never expire).
func (s *State) Get(sid string, now, duration int64) (*Record, bool) {
	sh := s.shard(sid)
	sh.mu.RLock()
	r, ok := sh.sessions[sid]
	sh.mu.RUnlock()
	if !ok || r.Expired(now, duration) {
		return nil, false
	}
	return r, true
}

// Len returns the number of stored sessions, expired ones not yet pruned
// included.
func (s *State) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.sessions)
		sh.mu.RUnlock()
	}
	return n
}

// Apply applies one command and returns its result. A batch returns the
// results of its commands in BatchResults order through ApplyBatch; calling
// Apply on a batch applies every element and returns the total count.
func (s *State) Apply(c *Command) Result {
	r := s.apply(c)
	if c.ID != (RequestID{}) && c.Op.deduplicated() && r.Err == nil {
		s.applied.remember(c.ID, c.Time, r.Count)
	}
	return r
}

// Applied reports whether a write with id was applied within DedupeWindow
// of now, and the Count it returned. The leader asks before proposing a
// write, so a retry of a write that already took effect is answered
// instead of applied again. (Apply itself never skips a command: replicas
// restored from a snapshot, which does not carry this table, must still
// compute the same state as the others.) Safe concurrently with Apply.
func (s *State) Applied(id RequestID, now int64) (int, bool) {
	return s.applied.check(id, now)
}

// RememberApplied records the request ids in c, a command the state
// already reflects because it was applied before the snapshot the state was
// restored from (which does not carry the table Applied reads). A node
// calls it at start for the log entries that snapshot left behind, so that
// a write retried after a restart is still answered instead of applied
// twice. The commands' results are not known: Applied reports Count 0 for
// them, and patches are skipped (a patch can fail in Apply, over the size
// or key limit, and its retry must then fail again, not be answered as
// done). Call it in log order; it does not change the sessions.
func (s *State) RememberApplied(c *Command) {
	if c.Op == OpBatch {
		for i := range c.Batch {
			s.RememberApplied(&c.Batch[i])
		}
		return
	}
	if c.ID != (RequestID{}) && c.Op.deduplicated() && c.Op != OpPatch {
		s.applied.remember(c.ID, c.Time, 0)
	}
}

func (s *State) apply(c *Command) Result {
	s.version.Add(1)
	switch c.Op {
	case OpSave:
		s.put(c.SID, &Record{Data: c.Data, Written: c.Time})
		return Result{}
	case OpPatch:
		return s.patch(c)
	case OpDelete:
		return Result{Count: s.remove(c.SID)}
	case OpDeleteUser:
		return Result{Count: s.deleteUser(c.SID)}
	case OpTouch:
		sh := s.shard(c.SID)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		if r, ok := sh.sessions[c.SID]; ok && !r.Expired(c.Time, c.Duration) {
			sh.own()
			sh.sessions[c.SID] = &Record{Data: r.Data, Written: c.Time, User: r.User}
			return Result{Count: 1}
		}
		return Result{}
	case OpPrune:
		return Result{Count: s.prune(c.Time, c.Duration)}
	case OpExpire:
		return Result{Count: s.expire(c.Del, c.Time, c.Duration)}
	case OpBatch:
		total := 0
		for _, r := range s.ApplyBatch(c.Batch) {
			total += r.Count
		}
		return Result{Count: total}
	}
	return Result{Err: fmt.Errorf("%w: unknown op %d", ErrCorrupt, byte(c.Op))}
}

// ApplyBatch applies commands in order and returns one result for each.
func (s *State) ApplyBatch(cmds []Command) []Result {
	out := make([]Result, len(cmds))
	for i := range cmds {
		if cmds[i].Op == OpBatch {
			out[i] = Result{Err: fmt.Errorf("%w: nested batch", ErrCorrupt)}
			continue
		}
		out[i] = s.Apply(&cmds[i])
	}
	return out
}

func (s *State) put(sid string, r *Record) {
	r.User = userOf(r.Data)
	sh := s.shard(sid)
	sh.mu.Lock()
	old := sh.sessions[sid]
	sh.own()
	sh.sessions[sid] = r
	sh.mu.Unlock()
	oldUser := ""
	if old != nil {
		oldUser = old.User
	}
	s.users.move(sid, oldUser, r.User)
}

// patchLinearMax is how many keys a patch may name before State.patch
// looks them up in a map rather than by scanning the session's.
const patchLinearMax = 16

func (s *State) patch(c *Command) Result {
	sh := s.shard(c.SID)
	sh.mu.RLock()
	old, ok := sh.sessions[c.SID]
	sh.mu.RUnlock()
	live := ok && !old.Expired(c.Time, c.Duration)
	if c.IfExists && !live {
		return Result{} // gone since the writer loaded it: not brought back
	}
	var fields []Field
	if live {
		var err error
		if fields, _, err = splitCompact(old.Data, true); err != nil { // a Record's Data never changes
			return Result{Err: err}
		}
	}
	// Linear lookups serve the usual few keys; a patch naming many
	// (a log entry written before nodes bounded them, or a MemoryStore
	// caller's) gets a map, and one that must end over MaxKeys stops as
	// soon as it must: quadratic work here held every write for minutes.
	var idx map[string]int
	if len(c.Set)+len(c.Del) > patchLinearMax {
		idx = make(map[string]int, len(fields)+len(c.Set))
		for i, f := range fields {
			idx[f.Key] = i
		}
	}
	for _, set := range c.Set {
		i := -1
		if idx != nil {
			if j, ok := idx[set.Key]; ok {
				i = j
			}
		} else {
			i = slices.IndexFunc(fields, func(f Field) bool { return f.Key == set.Key })
		}
		if i >= 0 {
			fields[i].Value = set.Value
			continue
		}
		if c.MaxKeys > 0 && int64(len(fields)) >= c.MaxKeys+int64(len(c.Del)) {
			// The deletes cannot bring it back under the limit.
			return Result{Err: fmt.Errorf("%w: the patch gives the session more than %d keys, the limit is %d",
				ErrTooManyKeys, len(fields), c.MaxKeys)}
		}
		fields = append(fields, set)
		if idx != nil {
			idx[set.Key] = len(fields) - 1
		}
	}
	if len(c.Del) > 0 {
		drop := func(k string) bool { return slices.Contains(c.Del, k) }
		if idx != nil {
			del := make(map[string]struct{}, len(c.Del))
			for _, k := range c.Del {
				del[k] = struct{}{}
			}
			drop = func(k string) bool { _, ok := del[k]; return ok }
		}
		kept := fields[:0]
		for _, f := range fields {
			if !drop(f.Key) {
				kept = append(kept, f)
			}
		}
		fields = kept
	}
	if c.MaxKeys > 0 && int64(len(fields)) > c.MaxKeys {
		return Result{Err: fmt.Errorf("%w: the patch gives the session %d keys, the limit is %d",
			ErrTooManyKeys, len(fields), c.MaxKeys)}
	}
	data := EncodeObject(fields)
	if c.MaxSize > 0 && int64(len(data)) > c.MaxSize {
		return Result{Err: fmt.Errorf("%w: the patch makes session data %d bytes, the limit is %d",
			ErrSessionTooLarge, len(data), c.MaxSize)}
	}
	s.put(c.SID, &Record{Data: data, Written: c.Time})
	if c.IfExists {
		return Result{Count: 1}
	}
	return Result{}
}

// prune removes every session expired at now (OpPrune).
func (s *State) prune(now, duration int64) int {
	return s.expire(s.ExpiredSessions(now, duration), now, duration)
}

// expire removes the sessions among sids that are expired at now.
func (s *State) expire(sids []string, now, duration int64) int {
	if duration <= 0 {
		return 0
	}
	expired := func(r *Record) bool { return r.Expired(now, duration) }
	n := 0
	for _, sid := range sids {
		n += s.removeIf(sid, expired)
	}
	return n
}

// ExpiredSessions returns the ids of the sessions expired at now for
// duration, for an OpExpire. It reads each shard under its read lock and
// may run beside Apply; a session it names may be saved again before the
// OpExpire applies, which then leaves it alone.
func (s *State) ExpiredSessions(now, duration int64) []string {
	if duration <= 0 {
		return nil
	}
	var out []string
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for sid, r := range sh.sessions {
			if r.Expired(now, duration) {
				out = append(out, sid)
			}
		}
		sh.mu.RUnlock()
	}
	return out
}

// Version counts applied commands (and Replace calls); a saver compares it
// with the version it last wrote to know whether anything changed.
func (s *State) Version() uint64 { return s.version.Load() }

// Capture returns a point-in-time view of every session when called from
// the goroutine that applies (raft's FSM goroutine), and otherwise a view in
// which each shard is as it was at some moment during the call. It copies
// nothing (see State): O(shards).
func (s *State) Capture() *View {
	v := &View{shards: make([]map[string]*Record, shardCount)}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		v.shards[i] = sh.sessions
		sh.shared = true
		sh.mu.Unlock()
	}
	return v
}

// Replace swaps the whole state for the sessions in m (an imported save
// file or backup). It takes every shard's lock in turn.
func (s *State) Replace(m map[string]*Record) {
	b := newStateBuilder(len(m))
	for sid, r := range m {
		b.put(sid, r)
	}
	s.install(b)
}

// Restore swaps the whole state for the sessions of a save-file document
// (a raft snapshot), read straight into the new shards rather than into one
// map first. On an error the state is unchanged.
func (s *State) Restore(r io.Reader) error {
	b := newStateBuilder(0)
	if err := readDocument(r, 0, b.put, nil); err != nil {
		return err
	}
	s.install(b)
	return nil
}

// stateBuilder collects a whole new state's shards and user index.
type stateBuilder struct {
	shards []map[string]*Record
	users  map[string]map[string]struct{}
}

func newStateBuilder(sessions int) *stateBuilder {
	b := &stateBuilder{shards: make([]map[string]*Record, shardCount), users: map[string]map[string]struct{}{}}
	for i := range b.shards {
		b.shards[i] = make(map[string]*Record, sessions/shardCount+1)
	}
	return b
}

// put adds one session; a later one with the same id replaces it.
func (b *stateBuilder) put(sid string, r *Record) error {
	shard := b.shards[shardIndex(sid)]
	if old, ok := shard[sid]; ok && old.User != "" {
		delete(b.users[old.User], sid)
	}
	r.User = userOf(r.Data)
	if r.User != "" {
		if b.users[r.User] == nil {
			b.users[r.User] = map[string]struct{}{}
		}
		b.users[r.User][sid] = struct{}{}
	}
	shard[sid] = r
	return nil
}

func (s *State) install(b *stateBuilder) {
	s.users.reset(b.users)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.sessions = b.shards[i]
		sh.shared = false
		sh.mu.Unlock()
	}
	s.version.Add(1)
}
