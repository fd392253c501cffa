package middleware

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/fsm"
)

// Session is one client's session: Kado's Session. Values are kept as JSON;
// Set encodes them and Get decodes them.
//
// A Session from FromContext loads itself from the store on its first use in
// the request (any method but Err) and is saved by the middleware; a Session
// from NewSession is loaded and saved by explicit Restore and Save calls.
// Methods without a context argument do their store I/O, when there is any,
// bounded by Options.Timeout: the lazy load under the request's context, so
// that it stops when the client has gone (nothing would read its answer),
// and the middleware's saves under the request's context without its
// cancellation, so that a save that started finishes; under
// context.Background for a Session from NewSession.
//
// A Session is safe for concurrent use by the goroutines of one request:
// every method holds the Session's lock, store calls included. Errors from
// methods that cannot return one (a failed load, an unencodable value) are
// remembered: Err reports them, Save returns them, and the middleware answers
// the request with an error (Options.ErrorFunc) instead of letting them pass
// unnoticed.
type Session struct {
	mu      sync.Mutex
	store   Store
	base    context.Context // context of the middleware's saves: the request's, without its cancellation
	req     context.Context // context of the lazy load: the request's own; nil outside a request
	timeout time.Duration   // bound on each store call; <= 0 none
	web     *webRequest     // nil unless the session belongs to the middleware

	id       string
	loaded   bool
	isNew    bool   // the store holds no record for id (yet)
	data     values // the session as this request sees it
	dirty    values // keys set (in data) or deleted (not in data); no values
	loadErr  error
	valueErr error

	// detached: the request's cookie named a session a login moved
	// moments ago (movedLately), or the session was deleted while the
	// request used it (goneLocked); the session is empty, and saves write
	// nothing and set no cookie until a Regenerate (a login).
	detached bool

	meta      sessionMeta // timestamps under MetaKey (Options.IdleTimeout, AbsoluteLifetime)
	metaDirty bool        // meta must be written with the next save
}

// NewSession returns a Session for sid kept in store, without touching the
// store: Kado's `new Session(sid, store)`. Call Restore to load it and Save
// to write it. An empty sid gets a fresh one from GenerateID. Unlike the
// middleware, a Session made here adopts sid even when the store does not
// know it.
func NewSession(sid string, store Store) *Session {
	if store == nil {
		panic("middleware.NewSession: store is nil")
	}
	if sid == "" {
		sid = GenerateID("", "")
	}
	return &Session{store: store, base: context.Background(), id: sid}
}

// ID returns the session id. In a middleware request it first loads the
// session, because a cookie naming a session the store does not hold is
// replaced by a fresh id (strict mode); the id also changes on Regenerate and
// Destroy.
func (s *Session) ID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.web != nil {
		s.loadLocked(s.loadCtx())
	}
	return s.id
}

// Get returns the value of key decoded from JSON into an any (objects become
// map[string]any, numbers float64, as encoding/json does), or nil when the
// session holds no such key or could not be loaded (see Err). Use GetInto to
// decode into a typed value.
func (s *Session) Get(key string) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	raw, ok := s.data.get(key)
	if !ok {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil // the store handed back invalid JSON; nothing useful to return
	}
	return v
}

// GetInto decodes the value of key into v (a pointer), as json.Unmarshal
// does: the typed counterpart of Get, e.g. `var u User; s.GetInto("user", &u)`.
// It returns an error wrapping ErrKeyNotFound when the session holds no such
// key (v is left alone), the load error when the session could not be
// loaded, or json.Unmarshal's error.
func (s *Session) GetInto(key string, v any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	return s.getIntoLocked(key, v)
}

// getIntoLocked is GetInto with s.mu held and the load done.
func (s *Session) getIntoLocked(key string, v any) error {
	if s.loadErr != nil {
		return s.loadErr
	}
	raw, ok := s.data.get(key)
	if !ok {
		return fmt.Errorf("%w: %q", ErrKeyNotFound, key)
	}
	if decodeScalar(raw, v) {
		return nil
	}
	return json.Unmarshal(raw, v)
}

// decodeScalar decodes the commonest session values (an integer into an
// *int or *int64, a plain string into a *string) without encoding/json's
// reflection, with json.Unmarshal's result. It reports false, having
// changed nothing, for anything else.
func decodeScalar(raw []byte, v any) bool {
	switch p := v.(type) {
	case *int64:
		n, ok := plainInt(raw, 64)
		if ok {
			*p = n
		}
		return ok
	case *int:
		n, ok := plainInt(raw, strconv.IntSize)
		if ok {
			*p = int(n)
		}
		return ok
	case *string:
		if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' || !plainString(raw[1:len(raw)-1]) {
			return false
		}
		*p = string(raw[1 : len(raw)-1])
		return true
	}
	return false
}

// plainInt parses raw when it is a JSON integer that fits in bits, written
// as strconv and JSON both read it: an optional minus, then digits without
// a leading zero.
func plainInt(raw []byte, bits int) (int64, bool) {
	d := raw
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) == 0 || (d[0] == '0' && len(d) > 1) {
		return 0, false
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(raw), 10, bits)
	return n, err == nil
}

// plainString reports whether s is printable ASCII that JSON writes as is,
// without escapes (json.Marshal's HTML-safe escaping included), so that
// quoting it is its JSON encoding and unquoting it its decoding.
func plainString[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// encodeScalar is json.Marshal for the commonest session values (integers,
// booleans, plain strings), without reflection; ok is false for anything
// else.
func encodeScalar(value any) (raw []byte, ok bool) {
	switch x := value.(type) {
	case int:
		return strconv.AppendInt(nil, int64(x), 10), true
	case int64:
		return strconv.AppendInt(nil, x, 10), true
	case bool:
		return strconv.AppendBool(nil, x), true
	case string:
		if !plainString(x) {
			return nil, false
		}
		raw = make([]byte, 0, len(x)+2)
		raw = append(raw, '"')
		raw = append(raw, x...)
		return append(raw, '"'), true
	}
	return nil, false
}

// Set stores value, encoded with json.Marshal, under key and returns s for
// chaining. An invalid key (see fsm.ValidateKey) or a value that cannot be
// encoded is not stored; the error, wrapping ErrInvalidValue, is remembered
// and returned by the next Save (in a middleware request the response
// becomes HTTP 500, see Options.ErrorFunc).
func (s *Session) Set(key string, value any) *Session {
	raw, ok := encodeScalar(value)
	var err error
	if !ok {
		raw, err = json.Marshal(value) // outside the lock: value's MarshalJSON may be slow
	}
	if err != nil {
		err = fmt.Errorf("%w: key %q: %v", ErrInvalidValue, key, err)
	} else if kerr := fsm.ValidateKey(key); kerr != nil {
		err = fmt.Errorf("%w: %v", ErrInvalidValue, kerr)
	} else if key == MetaKey {
		err = fmt.Errorf("%w: key %q is reserved for the middleware's timestamps", ErrInvalidValue, key)
	} else if key == fsm.UserKey && (len(raw) == 0 || raw[0] != '"') {
		// Anything but a string would tag no user: User would return ""
		// and RevokeUser would not find the session.
		err = fmt.Errorf("%w: key %q is reserved for the user id (SetUser), a string; got %s", ErrInvalidValue, key, raw)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	if err != nil {
		if s.valueErr == nil {
			s.valueErr = err
		}
		return s
	}
	s.data.set(key, raw)
	s.markDirty(key)
	return s
}

// Delete removes key and returns s for chaining. Deleting a key the session
// does not hold changes nothing.
func (s *Session) Delete(key string) *Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	if s.data.remove(key) {
		s.markDirty(key)
	}
	return s
}

// Clear removes every key. Like any change it is saved as the deletion of
// the keys this request saw (a patch), so keys another request set
// meanwhile stay, and a session deleted meanwhile (a logout elsewhere) is
// not brought back.
func (s *Session) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	for _, f := range s.data.fields {
		s.markDirty(f.Key)
	}
	s.data.clear()
}

// Keys returns the session's keys in sorted order.
func (s *Session) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	keys := make([]string, 0, len(s.data.fields))
	for _, f := range s.data.fields {
		keys = append(keys, f.Key)
	}
	slices.Sort(keys)
	return keys
}

// Err returns the error remembered from a failed load (wrapping
// ErrStoreUnavailable) or a rejected Set (wrapping ErrInvalidValue), or nil.
// It does not load the session.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loadErr != nil {
		return s.loadErr
	}
	return s.valueErr
}

// markDirty notes that key was set or deleted.
func (s *Session) markDirty(key string) {
	s.dirty.set(key, nil)
	if w := s.web; w != nil && w.finished && !w.warnedLate {
		w.warnedLate = true
		w.log(hclog.Warn, "the session was changed after its request finished (from a goroutine the handler left running); the middleware does not save such changes", s.id, nil)
	}
}

// modifiedLocked reports whether the session holds changes the store has not
// seen.
func (s *Session) modifiedLocked() bool {
	return len(s.dirty.fields) > 0
}

// loadCtx is the context of the lazy load: the request's own in a
// middleware request (a client gone stops it; saves use base), base
// otherwise.
func (s *Session) loadCtx() context.Context {
	if s.req != nil {
		return s.req
	}
	return s.base
}

// callCtx bounds one store call by the session's timeout.
func (s *Session) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := s.store.(*MemoryStore); ok {
		// A bare MemoryStore waits on nothing but its own locks: no
		// deadline of its own (a timer per call cost the middleware a
		// sixth of its time per request). A type wrapping one runs its
		// own methods, which may wait, and gets one.
		return ctx, func() {}
	}
	if s.timeout > 0 {
		return context.WithTimeout(ctx, s.timeout)
	}
	return context.WithCancel(ctx)
}
