package transport

import (
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// TokenMatches compares a presented token with the required one in constant
// time. An empty required token accepts everything.
func TokenMatches(required []byte, presented string) bool {
	if len(required) == 0 {
		return true
	}
	return subtle.ConstantTimeCompare(required, []byte(presented)) == 1
}

// ErrTokenRequired answers requests that arrive without the node's token.
var errTokenRequired = &Error{Code: CodeUnauthorized, Message: "unauthorized: this node requires a client token (native: the client's Token; Kado JSON: a top-level \"token\" field)"}

// prefixConn replays bytes already read before reading from the connection:
// the first byte the server read to tell protocols apart, before a TLS
// handshake that needs it.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// CloseWrite half-closes the underlying TCP connection when it can.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("half-close not supported")
}

// tlsCloseWriter lets the Kado handler half-close a TLS connection.
type tlsCloseWriter struct{ *tls.Conn }

func (t tlsCloseWriter) CloseWrite() error { return t.Conn.CloseWrite() }

// startTLS runs the server side of a TLS handshake on a connection whose
// first byte (0x16) was already read, within ReadTimeout. verified reports
// whether the peer presented a certificate signed by the configured CA.
func (s *Server) startTLS(c net.Conn, first byte) (conn net.Conn, verified bool, err error) {
	tc := tls.Server(&prefixConn{Conn: c, prefix: []byte{first}}, s.cfg.TLS)
	_ = c.SetDeadline(time.Now().Add(s.cfg.ReadTimeout))
	if err := tc.Handshake(); err != nil {
		return nil, false, err
	}
	_ = c.SetDeadline(time.Time{})
	return tc, len(tc.ConnectionState().VerifiedChains) > 0, nil
}

// AppendRaftToken appends the token frame a raft connection sends after
// MagicRaft when the cluster uses a token and no client certificates.
func AppendRaftToken(dst []byte, token []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(token)))
	return append(dst, token...)
}

// readRaftToken reads and checks the token frame of a raft connection.
func (s *Server) readRaftToken(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
	defer c.SetReadDeadline(time.Time{})
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return err
	}
	l := int(binary.BigEndian.Uint16(n[:]))
	if l > 4096 {
		return fmt.Errorf("token of %d bytes", l)
	}
	tok := make([]byte, l)
	if _, err := io.ReadFull(c, tok); err != nil {
		return err
	}
	if !TokenMatches(s.cfg.PeersToken(), string(tok)) {
		return errors.New("wrong token")
	}
	return nil
}

// rights is what a native connection may ask.
type rights uint8

const (
	rightsNone   rights = iota // nothing yet: it must authenticate
	rightsClient               // session operations
	rightsAdmin                // also admin requests (AdminAllowed)
	rightsPeer                 // a peer's connection: admin, and FromPeer
)

// clientRights is what a client that presented Token (or needed none) may
// ask: admin requests too unless a PeerToken sets them apart.
func (s *Server) clientRights() rights {
	if len(s.cfg.PeerToken) > 0 {
		return rightsClient
	}
	return rightsAdmin
}

// authenticate returns the rights a native connection's OpAuth token
// gives, rightsNone for a wrong one. On a peer connection only the peer
// token counts.
func (s *Server) authenticate(token string, peer bool) rights {
	if peer {
		if TokenMatches(s.cfg.PeersToken(), token) {
			return rightsPeer
		}
		return rightsNone
	}
	if len(s.cfg.PeerToken) > 0 && TokenMatches(s.cfg.PeerToken, token) {
		return rightsAdmin
	}
	if TokenMatches(s.cfg.Token, token) {
		return s.clientRights()
	}
	return rightsNone
}
