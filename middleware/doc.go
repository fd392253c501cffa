// Package middleware owns the web side of kadosession: the Session a request
// handler reads and writes, the Store interface a session is kept in, an
// in-process MemoryStore (Kado's SessionStoreMemory), GenerateID, and the
// net/http middleware that ties a Session to each request through a cookie.
//
// The package never knows about raft or sockets: it sees a Store. The Go
// client package satisfies Store without importing this package; only the
// binary and tests wire the two together.
//
// What the middleware guarantees, fixing Kado where Kado was wrong:
//
//   - The session is loaded lazily, on the first use of the Session in a
//     request; a handler that never touches it costs no store call and sets
//     no cookie.
//   - A cookie naming a session the store does not hold is never adopted
//     (strict mode): the request gets a fresh id from GenerateID.
//   - A modified session is saved before the response's first byte (on
//     WriteHeader, Write or Flush), so a redirect never reads stale data.
//   - Only the keys a request changed are sent to the store (Store.Patch), so
//     two concurrent requests on one session do not erase each other's keys.
//   - A store failure answers HTTP 503 (500 for session data over the
//     store's limits; Options.ErrorFunc chooses otherwise) and is logged;
//     it is never silently lost. Log lines name a session by a salted hash, never by its id.
//   - Options.IdleTimeout and Options.AbsoluteLifetime end a session after a
//     time unused or a time since its creation (OWASP Session Management),
//     with timestamps kept under the reserved key MetaKey ("_meta").
package middleware
