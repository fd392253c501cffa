package transport

import (
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
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
	if !s.peerTokenMatches(string(tok)) {
		return errors.New("wrong token")
	}
	return nil
}

// peerTokenMatches reports whether token is one a node may present on a
// raft or peer connection: PeersToken, or AcceptPeerToken during a rolling
// change.
func (s *Server) peerTokenMatches(token string) bool {
	if TokenMatches(s.cfg.PeersToken(), token) {
		return true
	}
	return len(s.cfg.AcceptPeerToken) > 0 && TokenMatches(s.cfg.AcceptPeerToken, token)
}

// certAlone reports whether, with TLS, a certificate signed by the CA makes
// a peer without a token: without a peer token, and while a cluster moves
// from the client token to one (AcceptPeerToken is the client token), for
// the nodes that do not present a peer token yet.
func (c *ServerConfig) certAlone() bool {
	if len(c.PeerToken) == 0 {
		return true
	}
	return len(c.AcceptPeerToken) > 0 && subtle.ConstantTimeCompare(c.AcceptPeerToken, c.Token) == 1
}

// peekPeerTokenFrame tells, on a raft connection over verified TLS where
// a certificate alone would do (certAlone), whether a token frame comes
// anyway: while a cluster moves from the client token to a peer token, the
// nodes that present the peer token send one and the others do not. It
// reads the two bytes after MagicRaft and returns conn with them put back.
// A frame starts with the length of a peer token; raft's first message
// starts with its type (below 16) and then a msgpack map or nil (0x80 and
// above), which no accepted length matches (CheckPeerTokens refuses the
// lengths that could). With no peer token to look for, nothing is read.
func (s *Server) peekPeerTokenFrame(c net.Conn) (net.Conn, bool) {
	var lens []int
	for _, t := range [][]byte{s.cfg.PeerToken, s.cfg.AcceptPeerToken} {
		if len(t) > 0 && subtle.ConstantTimeCompare(t, s.cfg.Token) != 1 {
			lens = append(lens, len(t))
		}
	}
	if len(lens) == 0 {
		return c, false
	}
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return c, true // what came is no raft message: readRaftToken refuses it
	}
	_ = c.SetReadDeadline(time.Time{})
	l := int(binary.BigEndian.Uint16(b[:]))
	return &prefixConn{Conn: c, prefix: b[:]}, slices.Contains(lens, l)
}

// CheckPeerTokens reports a PeerToken / AcceptPeerToken combination that
// cannot work: AcceptPeerToken with neither (there is no token the nodes
// present now, to change from), or equal to the token the node presents
// (nothing changes), or, while a certificate alone still makes a peer with
// TLS (certAlone), a peer token whose length raft's first bytes could be
// taken for (peekPeerTokenFrame).
func (c *ServerConfig) CheckPeerTokens() error {
	if len(c.AcceptPeerToken) == 0 {
		return nil
	}
	if len(c.PeersToken()) == 0 {
		return errors.New("a second peer token to accept is for a rolling change of the token nodes present to each other, and they present none: set the client token (--auth-token-file) on every node first, or set the peer token on every node together")
	}
	if subtle.ConstantTimeCompare(c.AcceptPeerToken, c.PeersToken()) == 1 {
		return errors.New("the second peer token to accept is the token this node presents already: give the other one (the client token or old peer token being replaced, or the new peer token)")
	}
	if c.TLS == nil || !c.certAlone() {
		return nil
	}
	for _, t := range [][]byte{c.PeerToken, c.AcceptPeerToken} {
		if len(t)%256 >= 128 && subtle.ConstantTimeCompare(t, c.Token) != 1 {
			return fmt.Errorf("with TLS, while nodes move from the client token to a peer token, the peer token's length must not be 128-255 bytes more than a multiple of 256 (it is %d): raft's first bytes could read as it; make it shorter or longer", len(t))
		}
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
// token counts (and AcceptPeerToken, which also gives admin rights: while
// it is the client token, operators' admin commands keep working with it).
func (s *Server) authenticate(token string, peer bool) rights {
	if peer {
		if s.peerTokenMatches(token) {
			return rightsPeer
		}
		return rightsNone
	}
	for _, t := range [][]byte{s.cfg.PeerToken, s.cfg.AcceptPeerToken} {
		if len(t) > 0 && TokenMatches(t, token) {
			return rightsAdmin
		}
	}
	if TokenMatches(s.cfg.Token, token) {
		return s.clientRights()
	}
	return rightsNone
}
