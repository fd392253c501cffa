// Package client is the Go client of a kadosession cluster: the counterpart
// of Kado's SessionStoreLocal, grown leader-aware.
//
// A Store talks the native protocol (see package transport) to any node(s)
// of a cluster. It keeps a small pool of persistent connections per node
// (transport.Pool) and pipelines many requests over each (transport.Conn): one reader goroutine per connection
// matches responses to callers by request id, and writers coalesce the frames
// of concurrent callers into shared writes. It remembers which node answered
// last, follows the leader hints a follower gives (transport.ErrNotLeader
// with Error.Leader, or Response.Leader on a request it served by forwarding
// it to the leader) unless it could not connect to that address lately,
// moves to the next known node when one is down or has no leader, sends
// reads to a follower instead when Config.Reads says so, and retries the
// operations that are safe to retry (all of them are idempotent: a restore,
// a whole-session save, a key set/delete, a delete, a touch, a ping) with a
// jittered exponential backoff.
//
// Every call is bounded by its context and by Config.RequestTimeout per
// attempt. A node that stops answering without closing the connection (a
// frozen process or VM, a host gone without a reset) does not hold calls
// for their whole RequestTimeout: after a fifth of it (at least 200 ms)
// without an answer, the Store asks another node who leads, and when that
// node names a leader other than the silent one, the waiting calls move
// there, as after a not-leader answer. Errors say what happened and where: a refused or timed-out
// connection, a lost connection, a timeout, or the node's own error, kept as
// a *transport.Error so that errors.Is(err, client.ErrBadRequest) and
// errors.As work.
//
// A Store satisfies middleware.Store without importing it. It is safe for
// concurrent use by many goroutines.
package client
