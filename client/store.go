package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/kadosession/kadosession/transport"
)

// Store is a session store backed by a kadosession cluster: the Go
// counterpart of Kado's SessionStoreLocal. It satisfies middleware.Store.
// All its methods are safe for concurrent use by many goroutines; requests
// from concurrent callers share a few pipelined connections per node.
//
// Every method is bounded by its ctx and by Config.RequestTimeout per
// attempt. An error that wraps ctx.Err() or context.DeadlineExceeded means
// the operation may or may not have taken effect. Errors the node reported
// wrap its *transport.Error: compare them with errors.Is against
// ErrBadRequest, ErrTooLarge, ErrNotLeader and the rest. After Close, every
// method returns ErrClosed.
type Store struct {
	nonceBase [8]byte       // random per Store: nonces are unique across clients
	nonceSeq  atomic.Uint64 // and across the writes of one
	cfg       Config
	connCfg   transport.ConnConfig           // how every node's connections are dialled
	done      chan struct{}                  // closed by Close
	cur       atomic.Pointer[transport.Pool] // the node calls go to first
	readers   atomic.Pointer[readerSet]      // where reads go (ReadFollower); nil: to be made
	readStart uint32                         // this Store's place in the readers (random)

	mu      sync.Mutex
	closed  bool
	addrs   []string // every known node, in the order learnt
	nodes   map[string]*transport.Pool
	readMap map[*transport.Pool]*reader // each node's read health, kept across readerSets
	// unreachable holds the nodes this Store failed to connect to lately,
	// with when (UnixNano) that stops counting (see hintPause).
	unreachable map[string]int64
	// watches holds each node's stallWatch (*transport.Pool → *stallWatch).
	watches sync.Map
}

// New returns a Store for the cluster cfg names. It checks cfg (see
// Config.Validate) but does not connect: connections are made on first use,
// so New succeeds while the cluster is down and the first call reports
// what is wrong.
func New(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{
		cfg:   cfg.withDefaults(),
		done:  make(chan struct{}),
		nodes: make(map[string]*transport.Pool),

		readMap:     make(map[*transport.Pool]*reader),
		unreachable: make(map[string]int64),
		readStart:   mrand.Uint32(),
	}
	s.connCfg = transport.ConnConfig{
		DialTimeout:  s.cfg.DialTimeout,
		WriteTimeout: s.cfg.RequestTimeout,
		TLSConfig:    s.cfg.TLSConfig,
		Token:        s.cfg.Token,
		Dialer:       s.cfg.Dialer,
	}
	if _, err := rand.Read(s.nonceBase[:]); err != nil {
		return nil, fmt.Errorf("kadosession: make write nonces: %w", err)
	}
	for _, a := range s.cfg.Addrs {
		s.nodeLocked(a)
	}
	s.cur.Store(s.nodes[s.cfg.Addrs[0]])
	return s, nil
}

// Restore returns the session's data; found is false (data nil, err nil)
// when the sid is unknown or expired. The read has Config.Consistency. An
// error means the cluster could not answer, and says nothing about the
// session. The returned map is the caller's to keep and modify.
func (s *Store) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	raw, found, err := s.RestoreRaw(ctx, sid)
	if err != nil || !found {
		return nil, false, err
	}
	var data map[string]json.RawMessage
	if err := json.Unmarshal(raw, &data); err != nil {
		return nil, false, fmt.Errorf("kadosession: restore: the node returned session data that is not a JSON object: %v", err)
	}
	if data == nil {
		data = map[string]json.RawMessage{}
	}
	return data, true, nil
}

// RestoreRaw is Restore returning the session's data as the JSON object the
// node stores, without decoding it. The slice is the caller's.
func (s *Store) RestoreRaw(ctx context.Context, sid string) ([]byte, bool, error) {
	resp, err := s.do(ctx, &transport.Request{Op: transport.OpRestore, SID: sid, Consistency: s.cfg.Consistency})
	if err != nil || !resp.Found {
		return nil, false, err
	}
	return resp.Data, true, nil
}

// Save replaces the whole session with data and renews it, creating it when
// it is absent. A nil map saves an empty session and a nil value means JSON
// null. A value that is not valid JSON fails with an error matching
// ErrBadRequest before anything is sent. Any other error means the save may
// not have happened. data is not kept.
func (s *Store) Save(ctx context.Context, sid string, data map[string]json.RawMessage) error {
	raw := []byte("{}")
	if len(data) > 0 {
		var err error
		if raw, err = json.Marshal(data); err != nil {
			for k, v := range data {
				if len(v) > 0 && !json.Valid(v) {
					return badRequest("save", "the value of key %q is not valid JSON", k)
				}
			}
			return badRequest("save", "encode session data: %v", err)
		}
	}
	return s.SaveRaw(ctx, sid, raw)
}

// SaveRaw is Save with the session's data already encoded as one JSON
// object, sent as is (the node checks it; empty means {}). data is not
// kept.
func (s *Store) SaveRaw(ctx context.Context, sid string, data []byte) error {
	if len(data) == 0 {
		data = []byte("{}")
	}
	_, err := s.do(ctx, &transport.Request{Op: transport.OpSave, SID: sid, Data: data, Nonce: s.nonce()})
	return err
}

// Patch sets the keys of set and deletes the keys of del in one atomic
// change, creating the session if absent, and renews it. Keys in neither
// keep whatever value the cluster holds. Deleting an absent key is not an
// error. A nil value in set means JSON null; a value that is not valid JSON
// fails with an error matching ErrBadRequest before anything is sent. Any
// other error means the change may not have happened. Neither argument is
// kept.
func (s *Store) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	_, err := s.patch(ctx, sid, set, del, false)
	return err
}

// PatchExisting is Patch for a session that must still exist: it changes
// the session only if it exists and has not expired, and reports whether
// it did. A request that loaded a session saves its changes this way (the
// middleware does), so that it cannot bring back a session deleted
// meanwhile: a logout in another tab, or RevokeUser. Nodes older than this
// method refuse it with ErrBadRequest ("unknown op 9").
func (s *Store) PatchExisting(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) (bool, error) {
	return s.patch(ctx, sid, set, del, true)
}

func (s *Store) patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string, ifExists bool) (bool, error) {
	kvs := make([]transport.KV, 0, len(set))
	for k, v := range set {
		if len(v) == 0 {
			v = json.RawMessage("null")
		} else if !json.Valid(v) {
			return false, badRequest("patch", "the value of key %q is not valid JSON", k)
		}
		kvs = append(kvs, transport.KV{Key: k, Value: v})
	}
	slices.SortFunc(kvs, func(a, b transport.KV) int {
		switch {
		case a.Key < b.Key:
			return -1
		case a.Key > b.Key:
			return 1
		}
		return 0
	})
	_, err := s.do(ctx, &transport.Request{Op: transport.OpPatch, SID: sid, Set: kvs, Del: del, Nonce: s.nonce(), IfExists: ifExists})
	if ifExists && errors.Is(err, transport.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Delete removes the session; deleting an absent session is not an error.
// An error means the session may still exist.
func (s *Store) Delete(ctx context.Context, sid string) error {
	_, err := s.do(ctx, &transport.Request{Op: transport.OpDelete, SID: sid, Nonce: s.nonce()})
	return err
}

// Touch renews the session's last-save time without changing its data; an
// absent (or expired) session is not an error and stays absent. An error
// means the renewal may not have happened.
func (s *Store) Touch(ctx context.Context, sid string) error {
	_, err := s.do(ctx, &transport.Request{Op: transport.OpTouch, SID: sid, Nonce: s.nonce()})
	return err
}

// Admin sends a cluster administration request (a JSON body: status, join,
// remove…) to the current node, following leader hints like every other
// call, and returns the node's JSON answer. It is retried like every
// other call. The reads and join are idempotent, and a node answers a
// remove of a node it removed in the last minute as done; a revoke_user
// should carry a "nonce", a string unique to the call (up to 64 bytes):
// for a minute, a retry of a revoke that took effect, reaching any leader,
// is answered with the first count instead of run again (RevokeUser sends
// one). Without it a retry runs the revoke again.
func (s *Store) Admin(ctx context.Context, body []byte) ([]byte, error) {
	resp, err := s.do(ctx, &transport.Request{Op: transport.OpAdmin, Data: body})
	if err != nil {
		return nil, err
	}
	return resp.Data, nil
}

// Ping checks that a node answers on the native protocol, trying the known
// nodes like every other call. It does not check that the cluster has a
// leader.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.do(ctx, &transport.Request{Op: transport.OpPing})
	return err
}

// Close closes every connection. Calls in flight fail at once with an error
// wrapping ErrClosed (their operations may or may not have taken effect);
// later calls return ErrClosed. Close is idempotent and always returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	nodes := make([]*transport.Pool, 0, len(s.nodes))
	for _, n := range s.nodes {
		nodes = append(nodes, n)
	}
	s.mu.Unlock()
	for _, n := range nodes {
		n.Close()
	}
	return nil
}

// isClosed reports whether Close has been called.
func (s *Store) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// badRequest is an error for a request refused before it was sent; it
// matches ErrBadRequest.
func badRequest(op, format string, args ...any) error {
	te := transport.Errorf(transport.CodeBadRequest, format, args...)
	return fmt.Errorf("kadosession: %s: %w", op, te)
}

// UserSessions lists the ids of the live sessions tagged with user (see
// middleware Session.SetUser), read linearizably from the leader. Safe for
// concurrent use; errors are like Restore's.
func (s *Store) UserSessions(ctx context.Context, user string) ([]string, error) {
	body, _ := json.Marshal(map[string]string{"op": "user_sessions", "user": user})
	out, err := s.Admin(ctx, body)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Sessions []string `json:"sessions"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("kadosession: user_sessions answer: %w", err)
	}
	return reply.Sessions, nil
}

// RevokeUser deletes every session tagged with user, in one replicated
// command, and returns how many there were — across the whole cluster.
// Safe for concurrent use; retried like the other writes, with a nonce
// (see Admin), so a retry of a revoke that took effect gets its count.
func (s *Store) RevokeUser(ctx context.Context, user string) (int, error) {
	nonce := s.nonce()
	body, _ := json.Marshal(map[string]string{"op": "revoke_user", "user": user, "nonce": hex.EncodeToString(nonce[:])})
	out, err := s.Admin(ctx, body)
	if err != nil {
		return 0, err
	}
	var reply struct {
		Revoked int `json:"revoked"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return 0, fmt.Errorf("kadosession: revoke_user answer: %w", err)
	}
	return reply.Revoked, nil
}

// nonce returns a new idempotency key for one logical write: the node
// applies it once however many times the write is retried.
func (s *Store) nonce() transport.Nonce {
	var n transport.Nonce
	copy(n[:8], s.nonceBase[:])
	binary.BigEndian.PutUint64(n[8:], s.nonceSeq.Add(1))
	return n
}
