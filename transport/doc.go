// Package transport owns the wire: the first-byte switch that lets one port
// carry the native protocol, the Kado JSON protocol and raft; the native
// protocol's frames, messages and typed errors; the Kado JSON compatibility
// codec; and the connection server loop with its limits.
//
// It knows nothing about raft or sessions beyond their wire shapes: a Server
// hands decoded requests to a Handler and writes back what it returns.
package transport
