package transport

import (
	"context"
	"net"
)

// Protocol names for RequestProtocol.
const (
	ProtocolNative = "native" // a native-protocol client (MagicNative)
	ProtocolPeer   = "peer"   // another node forwarding a request (MagicPeer)
	ProtocolKado   = "kado"   // a Kado JSON request, or a call made in-process
)

// RequestProtocol tells which protocol the request ctx belongs to arrived
// by, for metrics: ProtocolNative, ProtocolPeer, or ProtocolKado for a Kado
// JSON request (and for any ctx that did not come from a Server). It is a
// pure function of ctx, safe anywhere.
func RequestProtocol(ctx context.Context) string {
	switch info := infoOf(ctx); {
	case info == nil:
		return ProtocolKado
	case info.peer:
		return ProtocolPeer
	}
	return ProtocolNative
}

// OpenConns returns how many client and peer connections the server is
// serving now (native, Kado JSON, and ones not yet told apart); connections
// handed to Routes (raft) are their owners' and not counted. Safe for
// concurrent use.
func (s *Server) OpenConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// InFlight returns how many requests the server is serving now: native
// and peer requests read and not yet answered, and Kado JSON connections
// (one request each) from their first byte until they close. A request the
// server has not read yet, and raft's own traffic, are not counted. Safe
// for concurrent use; it costs the serving path nothing (it reads each
// connection's in-flight slots).
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.conns {
		if l.kado {
			n++
		} else {
			n += len(l.inflight)
		}
	}
	return n
}

// connLoad is what one connection has in flight, for InFlight; its fields
// are set under Server.mu.
type connLoad struct {
	inflight chan struct{} // a native connection's slots, once it has them
	kado     bool          // a Kado JSON connection: one request
}

// setLoad sets c's connLoad fields with f, if c is still tracked.
func (s *Server) setLoad(c net.Conn, f func(*connLoad)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.conns[c]; l != nil {
		f(l)
	}
}
