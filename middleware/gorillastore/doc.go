// Package gorillastore makes any kadosession middleware.Store (a
// MemoryStore or the cluster client) a github.com/gorilla/sessions Store.
//
//	store := gorillastore.New(kadosessionStore, hashKey)
//	session, err := store.Get(r, "session") // through sessions.GetRegistry
//	session.Values["user"] = "alice"
//	err = session.Save(r, w)
//
// The cookie carries only the session id, signed (and, with an encryption
// key, encrypted) by github.com/gorilla/securecookie from the key pairs
// given to New; the values live in kadosession under that id. Ids come from
// middleware.GenerateID (160 bits of SHA-1 over 256 random bits).
//
// The store is strict, like kadosession's own middleware: a validly signed
// cookie naming an id the store does not hold (expired, pruned, deleted, or
// from another cluster) yields a new, empty session that gets a fresh id
// when saved; an id from a cookie is never adopted.
//
// Values are kept by a Serializer. GobSerializer, the default, accepts
// everything gorilla's own stores accept (any key type; register custom
// value types with gob.Register) and stores one opaque field. JSONSerializer
// stores each value as its own JSON field, readable by kadosession's
// middleware and by Kado, but needs string keys and gives back JSON types
// (numbers as float64).
//
// Save writes the session's values over the stored ones: of two concurrent
// requests saving one session, the last one's values win (with
// JSONSerializer, a field only the other request set is kept). Unlike
// gorilla's own stores, a session loaded from the store and deleted
// meanwhile (a logout in another request, RevokeUser) is not brought back:
// Save returns an error wrapping middleware.ErrSessionGone and sets no
// cookie. Nor is a session whose load failed because the store could not
// answer (New's error wraps middleware.ErrStoreUnavailable): gorilla's
// stores hand back a new session, which a handler that ignores Get's error
// then saved under a new id, logging its user out after one failed read;
// here Save refuses it (middleware.ErrStoreUnavailable), as kadosession's
// middleware refuses to save a session it could not load. Save with
// Options.MaxAge < 0 deletes the session and expires the cookie.
//
// Errors from the underlying store are classified by middleware.StoreError
// (middleware.ErrStoreUnavailable when it could not answer,
// ErrSessionTooLarge or ErrInvalidValue when it refused the values) and
// keep the store's own error (and a context's error) in their chain;
// compare them with errors.Is.
package gorillastore
