package transport

import "context"

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
