package scsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/middleware"
)

// DefaultPrefix is put before every scs token to make the kadosession
// session id, keeping scs sessions apart from others in the same store.
const DefaultPrefix = "scs:"

// The two fields of a record (see the package documentation).
const (
	fieldData   = "scs"
	fieldExpiry = "exp"
)

// Errors returned by this package. Compare them with errors.Is. Errors from
// the underlying store are wrapped with middleware.ErrStoreUnavailable (a
// commit's refused data with middleware.ErrSessionTooLarge or
// ErrInvalidValue: middleware.StoreError) and keep the store's own error
// (and a context's error) in their chain.
var (
	// ErrNotIterable means All or AllCtx was called on an adapter whose
	// store does not implement Lister and that was given no WithLister.
	ErrNotIterable = errors.New("scsstore: the kadosession store cannot list sessions (give scsstore.New a store implementing scsstore.Lister, or WithLister)")
	// ErrInvalidToken means Commit was given a token that, with the prefix,
	// is not a valid kadosession id (empty, over 512 bytes, or not UTF-8).
	ErrInvalidToken = errors.New("scsstore: invalid session token")
)

// Lister is what a store must offer for All and AllCtx: every session whose
// id starts with prefix and that has not expired in the store's own sense,
// by id, each with its data as middleware.Store.Restore would return it.
// The adapter filters the records further (scs expiry, record format), so a
// Lister may return sessions that are not the adapter's. It must be safe
// for concurrent use, return a nil error only with a complete answer, and
// honour ctx as middleware.Store's methods do. The adapter does not keep or
// modify the maps it is given.
type Lister interface {
	// List returns the sessions whose id starts with prefix, by id.
	List(ctx context.Context, prefix string) (map[string]map[string]json.RawMessage, error)
}

// Option configures a Store built by New.
type Option func(*Store)

// WithPrefix sets the prefix put before each scs token to make the
// kadosession id (DefaultPrefix when not given; "" for none).
func WithPrefix(prefix string) Option { return func(s *Store) { s.prefix = prefix } }

// WithClock sets the clock expiry is checked against (time.Now when not
// given or nil). Tests inject a fake one.
func WithClock(now func() time.Time) Option {
	return func(s *Store) {
		if now != nil {
			s.now = now
		}
	}
}

// WithLister sets the Lister All and AllCtx use, instead of the store
// itself when it implements Lister.
func WithLister(l Lister) Option { return func(s *Store) { s.lister = l } }

// Store adapts a kadosession middleware.Store to scs. It is safe for
// concurrent use by many goroutines when the underlying store is (every
// middleware.Store must be); it keeps no state of its own besides its
// configuration.
type Store struct {
	store  middleware.Store
	prefix string
	now    func() time.Time
	lister Lister
}

var (
	_ scs.Store            = (*Store)(nil)
	_ scs.CtxStore         = (*Store)(nil)
	_ scs.IterableStore    = (*Store)(nil)
	_ scs.IterableCtxStore = (*Store)(nil)
)

// New returns an scs store keeping its sessions in store. It never fails;
// store must not be nil.
func New(store middleware.Store, opts ...Option) *Store {
	s := &Store{store: store, prefix: DefaultPrefix, now: time.Now}
	if l, ok := store.(Lister); ok {
		s.lister = l
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// sid returns the kadosession id for token, and whether it is a valid one.
func (s *Store) sid(token string) (string, bool) {
	sid := s.prefix + token
	return sid, fsm.ValidateSID(sid) == nil
}

// Find is FindCtx with context.Background().
func (s *Store) Find(token string) ([]byte, bool, error) {
	return s.FindCtx(context.Background(), token)
}

// FindCtx returns the data committed for token. found is false and err nil
// when the token is unknown, expired (by its scs expiry or the store's own
// lifetime), malformed (not a valid kadosession id once prefixed), or names
// a record this adapter did not write. An error means the store could not
// answer: it wraps middleware.ErrStoreUnavailable and the store's error.
// Safe for concurrent use.
func (s *Store) FindCtx(ctx context.Context, token string) ([]byte, bool, error) {
	sid, ok := s.sid(token)
	if !ok {
		return nil, false, nil
	}
	data, found, err := s.store.Restore(ctx, sid)
	if err != nil {
		return nil, false, fmt.Errorf("%w: scsstore: find: %w", middleware.ErrStoreUnavailable, err)
	}
	if !found {
		return nil, false, nil
	}
	b, exp, ok := decode(data)
	if !ok || s.expired(exp) {
		return nil, false, nil
	}
	return b, true, nil
}

// Commit is CommitCtx with context.Background().
func (s *Store) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

// CommitCtx stores b for token until expiry, replacing whatever token held.
// An expiry not after now deletes the session instead (it could never be
// found again). It returns ErrInvalidToken for a token that is not a valid
// kadosession id once prefixed; any other error means the commit may not
// have happened and wraps the store's error, classified by
// middleware.StoreError (middleware.ErrSessionTooLarge when b,
// base64-encoded, is over the store's size limit; ErrStoreUnavailable when
// the store could not answer). Safe for concurrent use.
func (s *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	sid, ok := s.sid(token)
	if !ok {
		return fmt.Errorf("%w: %q", ErrInvalidToken, token)
	}
	if !expiry.After(s.now()) {
		return s.delete(ctx, sid)
	}
	data, err := encode(b, expiry)
	if err != nil {
		return err
	}
	if err := s.store.Save(ctx, sid, data); err != nil {
		return middleware.StoreError("scsstore: commit", err)
	}
	return nil
}

// Delete is DeleteCtx with context.Background().
func (s *Store) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

// DeleteCtx removes token's session. Deleting an unknown or malformed token
// is a no-op that returns nil. An error means the session may still exist;
// it wraps middleware.ErrStoreUnavailable and the store's error. Safe for
// concurrent use.
func (s *Store) DeleteCtx(ctx context.Context, token string) error {
	sid, ok := s.sid(token)
	if !ok {
		return nil
	}
	return s.delete(ctx, sid)
}

func (s *Store) delete(ctx context.Context, sid string) error {
	if err := s.store.Delete(ctx, sid); err != nil {
		return fmt.Errorf("%w: scsstore: delete: %w", middleware.ErrStoreUnavailable, err)
	}
	return nil
}

// All is AllCtx with context.Background().
func (s *Store) All() (map[string][]byte, error) {
	return s.AllCtx(context.Background())
}

// AllCtx returns the data of every active session by token: a non-nil map,
// empty when there is none. Records under the prefix that this adapter did
// not write are skipped. It returns ErrNotIterable when no Lister is
// available (see the package documentation); any other error comes from the
// Lister, wrapped with middleware.ErrStoreUnavailable. Safe for concurrent
// use; the answer is only as consistent as the Lister's.
func (s *Store) AllCtx(ctx context.Context) (map[string][]byte, error) {
	if s.lister == nil {
		return nil, ErrNotIterable
	}
	recs, err := s.lister.List(ctx, s.prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: scsstore: list: %w", middleware.ErrStoreUnavailable, err)
	}
	all := make(map[string][]byte, len(recs))
	for sid, data := range recs {
		token, ok := strings.CutPrefix(sid, s.prefix)
		if !ok {
			continue
		}
		b, exp, ok := decode(data)
		if !ok || s.expired(exp) {
			continue
		}
		all[token] = b
	}
	return all, nil
}

// expired reports whether a record expiring at exp (ms, rounded up) has
// expired: once now is past it, as scs's own stores judge (up to a ms
// late, never early).
func (s *Store) expired(exp int64) bool { return s.now().After(time.UnixMilli(exp)) }
