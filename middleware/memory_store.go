package middleware

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// Defaults for MemoryOptions, Kado's SessionStore defaults.
const (
	// DefaultDuration is how long a session lasts after its last save.
	DefaultDuration = 6 * time.Hour
	// DefaultPruneFrequency is how often a MemoryStore prunes expired sessions.
	DefaultPruneFrequency = time.Minute
)

// MemoryOptions configures a MemoryStore. The zero value gives Kado's
// defaults.
type MemoryOptions struct {
	// Duration is how long a session lasts after its last save; 0 means
	// DefaultDuration (6h), a negative value means sessions never expire.
	Duration time.Duration
	// PruneFrequency is how often expired sessions are removed; 0 means
	// DefaultPruneFrequency (1m), a negative value disables the background
	// pruning (call Prune yourself).
	PruneFrequency time.Duration
	// MaxSessionSize bounds one session's encoded data in bytes; 0 means
	// fsm.DefaultMaxSessionSize (1 MiB), a negative value means no bound.
	MaxSessionSize int64
	// MaxKeys bounds the keys of one session; 0 means fsm.DefaultMaxKeys
	// (1024, as a node's --max-keys), a negative value means no bound.
	MaxKeys int
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
}

// MemoryStore keeps sessions in this process's memory: Kado's
// SessionStoreMemory. It applies the same commands, with the same semantics,
// as the replicated store (it reuses fsm.State and plays the leader that
// stamps time into each command), so a program can switch between the two
// without behaving differently.
//
// A MemoryStore is safe for concurrent use. Its methods fail only on a
// cancelled context, an invalid sid, key or value, or a session over the
// size or key limit (fsm.ErrSessionTooLarge, fsm.ErrTooManyKeys); reads
// never return an expired session.
type MemoryStore struct {
	mu       sync.Mutex // serializes Apply, as fsm.State requires
	state    *fsm.State
	duration int64 // ms; <= 0 never expires
	maxSize  int64 // bytes; <= 0 no bound
	maxKeys  int   // <= 0 no bound
	now      func() time.Time

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore and, unless opts disables it,
// starts the goroutine that prunes expired sessions every PruneFrequency;
// Close stops it.
func NewMemoryStore(opts MemoryOptions) *MemoryStore {
	if opts.Duration == 0 {
		opts.Duration = DefaultDuration
	}
	if opts.PruneFrequency == 0 {
		opts.PruneFrequency = DefaultPruneFrequency
	}
	if opts.MaxSessionSize == 0 {
		opts.MaxSessionSize = fsm.DefaultMaxSessionSize
	}
	if opts.MaxKeys == 0 {
		opts.MaxKeys = fsm.DefaultMaxKeys
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	duration := opts.Duration.Milliseconds()
	if opts.Duration > 0 && duration == 0 {
		duration = 1 // sessions are timed in ms; 0 would mean they never expire
	}
	m := &MemoryStore{
		state:    fsm.NewState(),
		duration: duration,
		maxSize:  opts.MaxSessionSize,
		maxKeys:  opts.MaxKeys,
		now:      opts.Now,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if opts.PruneFrequency > 0 {
		go m.pruneLoop(opts.PruneFrequency)
	} else {
		close(m.done)
	}
	return m
}

func (m *MemoryStore) pruneLoop(every time.Duration) {
	defer close(m.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			m.Prune()
		case <-m.stop:
			return
		}
	}
}

// Close stops the background pruning and waits for it to finish. It is
// idempotent and safe to call concurrently; it always returns nil. The store
// stays usable afterwards: reads still hide expired sessions, which are
// removed only by explicit Prune calls.
func (m *MemoryStore) Close() error {
	m.closeOnce.Do(func() { close(m.stop) })
	<-m.done
	return nil
}

func (m *MemoryStore) nowMs() int64 { return m.now().UnixMilli() }

// Restore implements Store: found is false for an unknown or expired sid.
func (m *MemoryStore) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	data, found, err := m.restoreFields(ctx, sid)
	if !found {
		return nil, false, err
	}
	return data.toMap(), true, nil
}

// restoreFields is Restore without the map (a Session's): the fields share
// one copy of the record's data, which the caller may keep and modify;
// each value is capped, so writing to it, or appending, changes nothing
// else. (Not the record itself: a json.Unmarshaler that wrote into the
// bytes GetInto gave it would have changed the stored session for every
// reader.)
func (m *MemoryStore) restoreFields(ctx context.Context, sid string) (sessionData, bool, error) {
	rec, err := m.record(ctx, sid)
	if rec == nil {
		return nil, false, err
	}
	fields, err := fsm.SplitObject(bytes.Clone(rec.Data))
	if err != nil {
		// Records are validated on the way in; this is a bug.
		return nil, false, fmt.Errorf("%w: session data: %v", fsm.ErrCorrupt, err)
	}
	return fields, true, nil
}

// record returns the live record of sid, or nil (and why, when it is not
// simply absent or expired).
func (m *MemoryStore) record(ctx context.Context, sid string) (*fsm.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := fsm.ValidateSID(sid); err != nil {
		return nil, err
	}
	rec, ok := m.state.Get(sid, m.nowMs(), m.duration)
	if !ok {
		return nil, nil
	}
	return rec, nil
}

// List returns every session whose id starts with prefix ("" for all) and
// that has not expired, by id, each map as Restore returns it: a non-nil
// map, empty when none matches. It is scsstore.Lister's List. Expiry is
// judged exactly as Restore judges it, at one reading of the clock for the
// whole call. The maps are fresh copies the caller may keep and modify.
// It fails only on a cancelled context. Safe for concurrent use; it does
// not block writers for longer than one shard's scan at a time, and it is
// not a point-in-time snapshot: a session written during the call may or
// may not be in the answer. Cost: one pass over every stored session.
func (m *MemoryStore) List(ctx context.Context, prefix string) (map[string]map[string]json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	page, _ := m.state.List(prefix, "", 0, m.nowMs(), m.duration)
	out := make(map[string]map[string]json.RawMessage, len(page))
	for _, e := range page {
		data := make(map[string]json.RawMessage)
		// Unmarshal copies every value: nothing returned shares the store's bytes.
		if err := json.Unmarshal(e.Record.Data, &data); err != nil {
			// Records are validated on the way in; this is a bug.
			return nil, fmt.Errorf("%w: data of session %q: %v", fsm.ErrCorrupt, e.SID, err)
		}
		out[e.SID] = data
	}
	return out, nil
}

// Save implements Store: it replaces the whole session and renews it.
func (m *MemoryStore) Save(ctx context.Context, sid string, data map[string]json.RawMessage) error {
	return m.saveFields(ctx, sid, dataOf(data))
}

// saveFields is Save without a map. It sorts and rewrites data's slice,
// not the bytes of its values.
func (m *MemoryStore) saveFields(ctx context.Context, sid string, data sessionData) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := fsm.ValidateSID(sid); err != nil {
		return err
	}
	if err := encodeFields(data); err != nil {
		return err
	}
	if m.maxKeys > 0 && len(data) > m.maxKeys {
		return fmt.Errorf("%w: session data has %d keys, the limit is %d", fsm.ErrTooManyKeys, len(data), m.maxKeys)
	}
	obj := fsm.EncodeObject(data)
	if m.maxSize > 0 && int64(len(obj)) > m.maxSize {
		return fmt.Errorf("%w: session data is %d bytes, the limit is %d", fsm.ErrSessionTooLarge, len(obj), m.maxSize)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state.Apply(&fsm.Command{Op: fsm.OpSave, Time: m.nowMs(), SID: sid, Data: obj}).Err
}

// Patch implements Store: it sets and deletes keys atomically, creating the
// session if absent (an expired session counts as absent) and renewing it.
func (m *MemoryStore) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	_, err := m.patchFields(ctx, sid, dataOf(set), del, false)
	return err
}

// PatchExisting is Patch for a session that must still exist, as
// client.Store's: it changes the session only if it exists and has not
// expired, and reports whether it did. The middleware saves a session it
// loaded this way, so that a request still running when the session is
// destroyed cannot bring it back.
func (m *MemoryStore) PatchExisting(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) (bool, error) {
	return m.patchFields(ctx, sid, dataOf(set), del, true)
}

// patchFields is Patch (or, with ifExists, PatchExisting) without a map.
// It sorts and rewrites set's slice, not the bytes of its values.
func (m *MemoryStore) patchFields(ctx context.Context, sid string, set sessionData, del []string, ifExists bool) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := fsm.ValidateSID(sid); err != nil {
		return false, err
	}
	if err := encodeFields(set); err != nil {
		return false, err
	}
	for _, k := range del {
		if err := fsm.ValidateKey(k); err != nil {
			return false, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.state.Apply(&fsm.Command{
		Op: fsm.OpPatch, Time: m.nowMs(), SID: sid,
		Set: set, Del: del, Duration: m.duration, MaxSize: m.maxSize, MaxKeys: int64(m.maxKeys), IfExists: ifExists,
	})
	if r.Err != nil {
		return false, r.Err
	}
	return !ifExists || r.Count == 1, nil
}

// Delete implements Store: it removes the session; an absent one is not an
// error.
func (m *MemoryStore) Delete(ctx context.Context, sid string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := fsm.ValidateSID(sid); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state.Apply(&fsm.Command{Op: fsm.OpDelete, Time: m.nowMs(), SID: sid}).Err
}

// Touch implements Store: it renews a live session; an absent or expired one
// is left alone and is not an error.
func (m *MemoryStore) Touch(ctx context.Context, sid string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := fsm.ValidateSID(sid); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// The command's Duration keeps an expired session from coming back.
	return m.state.Apply(&fsm.Command{Op: fsm.OpTouch, Time: m.nowMs(), SID: sid, Duration: m.duration}).Err
}

// Prune removes every session whose last save plus the duration is at or
// before now (Kado: _written + duration <= now) and returns how many it
// removed. It is safe for concurrent use.
func (m *MemoryStore) Prune() int {
	// Found without the store's lock, so writers wait only for the
	// removal, as on a node (Node.Prune); the removal checks each again.
	now := m.nowMs()
	expired := m.state.ExpiredSessions(now, m.duration)
	if len(expired) == 0 {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state.Apply(&fsm.Command{Op: fsm.OpExpire, Time: now, Duration: m.duration, Del: expired}).Count
}

// Len returns the number of stored sessions, expired ones not yet pruned
// included. It is safe for concurrent use.
func (m *MemoryStore) Len() int { return m.state.Len() }

// encodeFields validates data and compacts its values, in place, and sorts
// it by key, so equal sessions always encode to equal bytes. data holds
// each key once.
func encodeFields(data sessionData) error {
	sortFields(data)
	for i := range data {
		f := &data[i]
		if err := fsm.ValidateKey(f.Key); err != nil {
			return err
		}
		if len(f.Value) == 0 {
			f.Value = []byte("null") // as the client sends an empty json.RawMessage
			continue
		}
		// The value may be the caller's own slice: the state copies it
		// into the record it encodes.
		v, err := fsm.CompactValue(f.Value)
		if err != nil {
			return fmt.Errorf("%w: value of %q is not JSON: %v", fsm.ErrBadData, f.Key, err)
		}
		f.Value = v
	}
	return nil
}

// UserSessions implements UserStore: the ids of the live sessions tagged
// with user, in byte order.
func (m *MemoryStore) UserSessions(ctx context.Context, user string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if user == "" {
		return nil, errEmptyUser
	}
	return m.state.UserSessions(user, m.nowMs(), m.duration), nil
}

// errEmptyUser refuses an empty user as a node does (client.ErrBadRequest):
// Session's methods answer it without asking the store.
var errEmptyUser = transport.Errorf(transport.CodeBadRequest, "user is empty")

// RevokeUser implements UserStore: it deletes every session tagged with
// user and returns how many there were.
func (m *MemoryStore) RevokeUser(ctx context.Context, user string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if user == "" {
		return 0, errEmptyUser
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state.Apply(&fsm.Command{Op: fsm.OpDeleteUser, Time: m.nowMs(), SID: user}).Count, nil
}
