package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// Store is where sessions live. The middleware defines it; the Go client
// package and MemoryStore satisfy it. Implementations must be safe for
// concurrent use by many goroutines.
//
// A sid is any string fsm.ValidateSID accepts; the middleware only ever
// passes 40-hex ids from GenerateID, and such an id followed by ":moved"
// (the record Session.Regenerate leaves under a login's old id). Session data maps a key to one JSON
// value; keys follow fsm.ValidateKey (non-empty, valid UTF-8, not "_written"). A Store
// must not keep the maps or slices it is handed after the call returns, and
// the caller may keep and modify the maps a Store returns.
//
// Every method honours ctx: when it is cancelled or its deadline passes, the
// method returns an error wrapping ctx.Err() (the operation may or may not
// have taken effect). Any error other than the not-found cases documented
// below means the store could not answer; the middleware answers such a
// request with HTTP 503. A store that refuses data over its limits should
// wrap fsm.ErrSessionTooLarge or fsm.ErrTooManyKeys, so the middleware can
// tell the request's data from an outage (ErrSessionTooLarge).
//
// A Store may also have
//
//	PatchExisting(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) (bool, error)
//
// a Patch that changes only a session that exists and has not expired and
// reports whether it did (the Go client's and MemoryStore have it). The
// middleware saves a session it loaded with it, so that a request still
// running when the session is destroyed (a logout in another tab,
// RevokeUser) cannot bring it back by saving; with Patch alone it can. A
// type that embeds such a store to wrap its writes (metrics, logging) has
// PatchExisting promoted: wrap it too, or the middleware's patches bypass
// the wrapper.
type Store interface {
	// Restore returns the session's data; found is false (data nil, err nil)
	// when the sid is unknown or expired. An expired session is never
	// returned, even before it is pruned. An error means the store could not
	// answer (unreachable, timed out, invalid sid): found is then false and
	// says nothing about the session.
	Restore(ctx context.Context, sid string) (data map[string]json.RawMessage, found bool, err error)
	// Save replaces the whole session and renews it (its last-save time
	// becomes now), creating it when it is absent. An error means the save
	// may not have happened: invalid data or a session over the store's
	// size limit, or an unreachable store.
	Save(ctx context.Context, sid string, data map[string]json.RawMessage) error
	// Patch sets and deletes individual keys atomically, creating the session
	// if absent, and renews it. Keys neither set nor deleted keep whatever
	// value the store holds, including values written by concurrent requests.
	// Deleting an absent key is not an error. An error means none of the
	// changes happened, or, when the store was unreachable, that they may
	// not have.
	Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error
	// Delete removes the session (no error if absent). An error means the
	// session may still exist.
	Delete(ctx context.Context, sid string) error
	// Touch renews the session's last-save time without changing its data
	// (no error if absent; an expired session is absent and stays so). An
	// error means the renewal may not have happened.
	Touch(ctx context.Context, sid string) error
}

// Errors returned by this package. Compare them with errors.Is.
var (
	// ErrStoreUnavailable wraps every error a Store returned to a Session,
	// but for ErrSessionTooLarge and ErrInvalidValue (see StoreError): the
	// session could not be loaded or saved.
	// The middleware answers the request with HTTP 503 "session store
	// unavailable" (see Options.ErrorFunc).
	ErrStoreUnavailable = errors.New("session store unavailable")
	// ErrSessionTooLarge wraps a Store's refusal of a session over its
	// limits (size or number of keys): fsm.ErrSessionTooLarge,
	// fsm.ErrTooManyKeys, or a node's transport.ErrTooLarge. Whatever the
	// store, the error is this one: it is the request's data, not an
	// outage. The middleware answers HTTP 500 "session data could not be
	// saved", and logs it as a warning.
	ErrSessionTooLarge = errors.New("session data over the store's limit")
	// ErrInvalidValue means Session.Set was given a key the store would
	// refuse or a value that cannot be encoded as JSON, or a store refused
	// a key or value (StoreError). It is remembered and returned when the
	// session is saved; the middleware answers HTTP 500.
	ErrInvalidValue = errors.New("invalid session value")
	// ErrKeyNotFound means Session.GetInto was asked for a key the session
	// does not hold.
	ErrKeyNotFound = errors.New("session key not found")
	// ErrHeadersSent means Session.Regenerate was called after the response's
	// headers went out, when the cookie naming the new id can no longer be
	// sent; nothing was changed.
	ErrHeadersSent = errors.New("session: response headers already sent")
	// ErrSessionGone is returned by an explicit Save or by Regenerate when
	// the session was deleted since this request loaded it (a logout in
	// another tab, RevokeUser, a login's Regenerate): the deletion wins, the changes are
	// dropped, and the session is now a fresh, empty one that this
	// request does not save (unless it calls Regenerate: a login); the
	// response leaves the client's cookie as the deleting request set it. An
	// explicit Save also returns it in a request that came with the
	// pre-login cookie moments after a login moved the session (see
	// Session.Regenerate). The middleware's own save treats both the same
	// way without an error.
	ErrSessionGone = errors.New("session: deleted while this request used it; its changes were not saved")
)

// StoreError wraps err, a Store's failure to do what, by what it means for
// the request: ErrSessionTooLarge when the store refused the data for its
// size or keys; ErrInvalidValue when it refused the data itself (a key or
// value it does not accept: fsm.ErrBadKey, fsm.ErrBadData, fsm.ErrBadSID,
// or a node's transport.ErrBadRequest), which no retry mends; and
// ErrStoreUnavailable otherwise. The store's error stays in the chain. The
// middleware, scsstore and gorillastore wrap their Store errors with it.
func StoreError(what string, err error) error {
	switch {
	case errors.Is(err, fsm.ErrSessionTooLarge) || errors.Is(err, fsm.ErrTooManyKeys) || errors.Is(err, transport.ErrTooLarge):
		return fmt.Errorf("%w: %s: %w", ErrSessionTooLarge, what, err)
	case errors.Is(err, fsm.ErrBadKey) || errors.Is(err, fsm.ErrBadData) || errors.Is(err, fsm.ErrBadSID) || errors.Is(err, transport.ErrBadRequest):
		return fmt.Errorf("%w: %s: %w", ErrInvalidValue, what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrStoreUnavailable, what, err)
}

// rawRestorer is a Store that can return a session's data as the JSON
// object it holds, undecoded (the Go client's RestoreRaw): the middleware
// then decodes it without encoding/json's reflection, which was 5% of an
// HTTP server's CPU on the read path.
type rawRestorer interface {
	RestoreRaw(ctx context.Context, sid string) ([]byte, bool, error)
}

// restore, save and patch call store's methods. A MemoryStore's are called
// without the maps of the Store interface (a session's map and its patch's
// map were a fifth of the middleware's allocations). It must be a
// *MemoryStore itself: a type that embeds one to wrap its methods gets
// them called.

// restore loads session sid from store, through the cheapest of its
// methods.
func restore(ctx context.Context, store Store, sid string) (sessionData, bool, error) {
	switch st := store.(type) {
	case *MemoryStore:
		return st.restoreFields(ctx, sid)
	case rawRestorer:
		raw, found, err := st.RestoreRaw(ctx, sid)
		if err != nil || !found {
			return nil, false, err
		}
		data, err := decodeObject(raw)
		if err != nil {
			return nil, false, fmt.Errorf("restore: the store returned session data that is not a JSON object: %w", err)
		}
		return data, true, nil
	}
	m, found, err := store.Restore(ctx, sid)
	if err != nil || !found {
		return nil, false, err
	}
	return dataOf(m), true, nil
}

// save replaces session sid in store with data.
func save(ctx context.Context, store Store, sid string, data sessionData) error {
	if m, ok := store.(*MemoryStore); ok {
		return m.saveFields(ctx, sid, slices.Clone(data))
	}
	return store.Save(ctx, sid, data.toMap())
}

// ExistingPatcher is a Store that can patch a session only if it still
// exists, reporting whether it did: client.Store and MemoryStore. The
// middleware and gorillastore write a session they loaded with it, so
// that a session deleted meanwhile (a logout elsewhere) is not brought
// back.
type ExistingPatcher interface {
	PatchExisting(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) (bool, error)
}

// patchExisting sets set's keys and deletes del's in session sid of store,
// a session this request loaded. It reports false when the session was
// deleted or expired since (a logout in another tab, RevokeUser), and then
// changes nothing, if store can tell (ExistingPatcher); a Store that
// cannot patches it anyway, creating it again.
func patchExisting(ctx context.Context, store Store, sid string, set sessionData, del []string) (bool, error) {
	switch st := store.(type) {
	case *MemoryStore:
		return st.patchFields(ctx, sid, set, del, true)
	case ExistingPatcher:
		return st.PatchExisting(ctx, sid, set.toMap(), del)
	}
	return true, store.Patch(ctx, sid, set.toMap(), del)
}

// renewExisting renews session sid of store, a session this request
// loaded, and reports false when it was deleted or expired since, if store
// can tell (an empty PatchExisting); Touch cannot, and then it is true.
func renewExisting(ctx context.Context, store Store, sid string) (bool, error) {
	switch store.(type) {
	case *MemoryStore, ExistingPatcher:
		return patchExisting(ctx, store, sid, nil, nil)
	}
	return true, store.Touch(ctx, sid)
}

// decodeObject decodes raw, one JSON object from outside the process, into
// its members as json.Unmarshal into a map would (the last of duplicate
// keys wins), with fsm's checking scanner instead of encoding/json's
// reflection.
func decodeObject(raw []byte) (sessionData, error) {
	fields, err := fsm.ParseObject(raw)
	return sessionData(fields), err
}
