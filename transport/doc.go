// Package transport owns the wire: the first-byte switch that lets one port
// carry the native protocol, the Kado JSON protocol and raft; the native
// protocol's frames, messages and typed errors; the Kado JSON compatibility
// codec; the connection server loop with its limits; and the client side of
// the native protocol: Dial returns a pipelined Conn (many concurrent
// requests over one connection, matched by request id), and a Pool keeps a
// few of them per node, redialling broken ones. The Go client (package
// client) and a node forwarding to its leader (package cluster) both use
// them.
//
// It knows nothing about raft or sessions beyond their wire shapes: a Server
// hands decoded requests to a Handler and writes back what it returns.
package transport
