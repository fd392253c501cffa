package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Handler serves decoded requests. Its methods are called concurrently, each
// with a context that ends at the request's deadline. A returned *Error (or
// one wrapped with %w) keeps its code on the wire; any other error is sent
// as CodeInternal with its text.
type Handler interface {
	// Restore returns the session's data as a JSON object; found is false
	// (and data nil) for an unknown or expired session.
	Restore(ctx context.Context, sid string, c Consistency) (data []byte, found bool, err error)
	// Save replaces the session with data, a JSON object.
	Save(ctx context.Context, sid string, data []byte) error
	// Patch sets and deletes keys of one session atomically, creating it
	// when absent; with ifExists it changes only a session that exists and
	// has not expired, and returns an error with CodeNotFound otherwise.
	Patch(ctx context.Context, sid string, set []KV, del []string, ifExists bool) error
	// Delete removes a session.
	Delete(ctx context.Context, sid string) error
	// Touch renews a session.
	Touch(ctx context.Context, sid string) error
	// Admin serves a cluster administration request with a JSON body.
	Admin(ctx context.Context, body []byte) ([]byte, error)
}

// ServerConfig holds a Server's limits. Zero values take the defaults.
type ServerConfig struct {
	// MaxFrame bounds one native frame or Kado JSON document (1 MiB).
	MaxFrame int
	// ReadTimeout bounds how long a started request may take to arrive
	// completely, and how long a new connection may take to send its first
	// byte (10 s).
	ReadTimeout time.Duration
	// IdleTimeout closes a native connection with nothing in flight that has
	// sent nothing for this long (5 min).
	IdleTimeout time.Duration
	// RequestTimeout is the deadline given to the Handler per request (10 s).
	RequestTimeout time.Duration
	// MaxConns bounds open connections of every kind together (4096).
	MaxConns int
	// MaxInflight bounds requests in flight on one native connection (256).
	MaxInflight int
	// MaxKeys, when positive, bounds the keys one patch may set, and those
	// it may delete: a session holds no more (the node's --max-keys). A
	// frame counting more is answered CodeTooLarge before its keys are
	// decoded, and the connection goes on. 0: no bound here.
	MaxKeys int
	// Routes hands connections whose first byte is a key to its function
	// (raft's stream layer). The function owns the connection; the byte has
	// been consumed.
	Routes map[byte]func(net.Conn)
	// Logger receives connection-level problems; nil discards them.
	Logger hclog.Logger
	// TLS, when set, serves TLS on the same port (first byte 0x16; the
	// decrypted stream is told apart as usual). Set ClientCAs and
	// ClientAuth (VerifyClientCertIfGiven) so peers can prove membership:
	// with TLS on, raft and peer connections need a certificate signed by
	// the CA.
	TLS *tls.Config
	// AllowPlaintext keeps accepting plaintext connections beside TLS.
	AllowPlaintext bool
	// Token, when set, is required of every client: native connections
	// send OpAuth first, Kado JSON requests carry a top-level "token", raft
	// connections without a verified certificate send a token frame.
	Token []byte
	// PeerToken, when set, is what nodes present to each other on raft
	// and peer connections (Token is refused there; with TLS, a verified
	// certificate is needed as well, not instead) and what admin requests
	// need (AdminAllowed): a native client that sends it with OpAuth may
	// ask them; one that sends Token may ask only session operations.
	// Empty: Token serves for both, and a verified certificate stands for
	// it on raft and peer connections.
	PeerToken []byte
	// AcceptPeerToken, when set, is accepted wherever the token nodes
	// present to each other is (raft and peer connections, and it gives
	// admin rights), beside it: a rolling change of that token, one node
	// restarted at a time, with nodes that present it and nodes that do
	// not yet. While it equals Token (a cluster moving from the client
	// token to PeerToken), or PeerToken is unset, a verified certificate
	// alone still makes a peer with TLS, as on nodes without a peer token.
	AcceptPeerToken []byte
}

// PeersToken is the token raft and peer connections present: PeerToken,
// or Token where none is set.
func (c *ServerConfig) PeersToken() []byte {
	if len(c.PeerToken) > 0 {
		return c.PeerToken
	}
	return c.Token
}

func (c *ServerConfig) withDefaults() ServerConfig {
	out := *c
	if out.MaxFrame <= 0 {
		out.MaxFrame = DefaultMaxFrame
	}
	if out.ReadTimeout <= 0 {
		out.ReadTimeout = 10 * time.Second
	}
	if out.IdleTimeout <= 0 {
		out.IdleTimeout = 5 * time.Minute
	}
	if out.RequestTimeout <= 0 {
		out.RequestTimeout = 10 * time.Second
	}
	if out.MaxConns <= 0 {
		out.MaxConns = 4096
	}
	if out.MaxInflight <= 0 {
		out.MaxInflight = 256
	}
	if out.Logger == nil {
		out.Logger = hclog.NewNullLogger()
	}
	return out
}

// Server accepts connections and serves both client protocols, handing
// other first bytes to Routes. It is safe for concurrent use; Close stops it.
type Server struct {
	h     Handler
	cfg   ServerConfig
	slots chan struct{}

	mu       sync.Mutex
	closed   bool
	lns      map[net.Listener]struct{}
	conns    map[net.Conn]*connLoad
	ctx      context.Context
	cancel   context.CancelFunc
	handlers sync.WaitGroup
	workers  *workers
	reqCtx   atomic.Pointer[sharedContext]

	refused, refusedReported, refusedLogged atomic.Int64 // for the rate-limited refusal log
}

// NewServer returns a Server for h.
func NewServer(h Handler, cfg ServerConfig) *Server {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		h: h, cfg: cfg,
		slots:   make(chan struct{}, cfg.MaxConns),
		lns:     map[net.Listener]struct{}{},
		conns:   map[net.Conn]*connLoad{},
		ctx:     ctx,
		cancel:  cancel,
		workers: newWorkers(ctx),
	}
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("transport: server closed")

// Serve accepts connections on l until Close or a listener error.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.lns[l] = struct{}{}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("accept failed; retrying", "error", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		select {
		case s.slots <- struct{}{}:
		default:
			s.refuse(c)
			continue
		}
		if !s.track(c) {
			<-s.slots
			c.Close()
			return ErrServerClosed
		}
		go s.serveConn(c)
	}
}

// refusePlaintext answers a plaintext connection to a node that requires
// TLS, in the protocol it speaks, and closes it.
func (s *Server) refusePlaintext(c net.Conn, first byte) {
	msg := "this node requires TLS: connect with TLS (the Go client: Config.TLSConfig; kadosession commands: --tls-ca)"
	_ = c.SetDeadline(time.Now().Add(s.cfg.ReadTimeout))
	switch first {
	case MagicNative, MagicPeer:
		_, _ = c.Write(AppendResponse(nil, OpPing, &Response{Err: &Error{Code: CodeUnauthorized, Message: msg}}))
	case MagicRaft:
		return
	default:
		// A Kado client reads the answer only after sending its request.
		_, _ = readAll(c, first, s.cfg.MaxFrame)
		_, _ = c.Write(KadoError(msg))
	}
	// Let the client read the answer instead of a reset: stop sending, and
	// take what it still sends for a moment.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	s.cfg.Logger.Debug("plaintext connection refused", "remote", c.RemoteAddr())
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// refuse answers a connection over MaxConns in whichever protocol it speaks,
// if it speaks within a short time, and closes it.
func (s *Server) refuse(c net.Conn) {
	go func() {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		msg := fmt.Sprintf("too many connections: the node's limit is %d", s.cfg.MaxConns)
		if b[0] == MagicNative {
			_, _ = c.Write(AppendResponse(nil, OpPing, &Response{Err: &Error{Code: CodeOverloaded, Message: msg}}))
		} else {
			_, _ = c.Write(KadoError(msg))
		}
		// Read what the client is still sending (bounded by the deadline
		// above) so that closing does not reset the connection and destroy
		// the reply before the client reads it.
		if tc, ok := c.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, int64(s.cfg.MaxFrame)))
	}()
	// A flood must not flood the log too: one line a second, with a count.
	n := s.refused.Add(1)
	now := time.Now().UnixNano()
	if last := s.refusedLogged.Load(); now-last >= int64(time.Second) && s.refusedLogged.CompareAndSwap(last, now) {
		s.cfg.Logger.Warn("connections refused: too many connections", "limit", s.cfg.MaxConns,
			"refused_since_last_report", n-s.refusedReported.Swap(n), "latest_remote", c.RemoteAddr())
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = &connLoad{}
	s.handlers.Add(1)
	return true
}

// routedConn is a connection handed to a route: closing it frees its slot
// among MaxConns, once.
type routedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (r *routedConn) Close() error {
	err := r.Conn.Close()
	r.once.Do(r.release)
	return err
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	<-s.slots
	s.handlers.Done()
}

// Close stops accepting, closes every connection this server is serving and
// waits for their handlers to return. Connections handed to Routes are
// their owners' to close.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for l := range s.lns {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.handlers.Wait()
	return nil
}

func (s *Server) serveConn(c net.Conn) {
	handedOff := false
	defer func() {
		if handedOff {
			// The route's connection keeps its slot until it is closed
			// (routedConn): raft's transport reads it with no deadline, and
			// connections that bypassed MaxConns let anyone who may speak
			// raft hold every descriptor the process has.
			s.handlers.Done()
			return
		}
		c.Close()
		s.untrack(c)
	}()
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		if errors.Is(err, io.EOF) { // half-closed without a byte
			_ = c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
			_, _ = c.Write(KadoError(emptyRequest))
		}
		return
	}
	conn, verified := c, false
	if first[0] == MagicTLS && s.cfg.TLS != nil {
		tc, ok, err := s.startTLS(c, first[0])
		if err != nil {
			s.cfg.Logger.Debug("TLS handshake failed", "remote", c.RemoteAddr(), "error", err)
			return
		}
		conn, verified = tc, ok
		_ = conn.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		if _, err := io.ReadFull(conn, first[:]); err != nil {
			return
		}
	} else if s.cfg.TLS != nil && !s.cfg.AllowPlaintext {
		s.refusePlaintext(c, first[0])
		return
	}
	needsCert := s.cfg.TLS != nil // peers prove membership with a CA-signed certificate
	switch {
	case first[0] == MagicNative:
		r := rightsNone
		if len(s.cfg.Token) == 0 {
			r = s.clientRights()
		}
		s.serveNative(conn, c, false, r)
	case first[0] == MagicPeer:
		if needsCert && !verified {
			s.cfg.Logger.Warn("peer connection refused: no certificate signed by the cluster CA", "remote", c.RemoteAddr())
			return
		}
		// A certificate signed by the cluster's CA makes a peer, unless a
		// PeerToken is set: then the token too (an app server given a
		// certificate by the same CA is no node).
		r := rightsNone
		if len(s.cfg.PeersToken()) == 0 || verified && s.cfg.certAlone() {
			r = rightsPeer
		}
		s.serveNative(conn, c, true, r)
	case s.cfg.Routes[first[0]] != nil:
		if needsCert && !verified {
			s.cfg.Logger.Warn("raft connection refused: no certificate signed by the cluster CA", "remote", c.RemoteAddr())
			return
		}
		needToken := len(s.cfg.PeersToken()) > 0 && (!verified || !s.cfg.certAlone())
		if !needToken && verified && len(s.cfg.PeersToken()) > 0 {
			conn, needToken = s.peekPeerTokenFrame(conn)
		}
		if needToken {
			if err := s.readRaftToken(conn); err != nil {
				s.cfg.Logger.Warn("raft connection refused: bad token", "remote", c.RemoteAddr())
				return
			}
		}
		_ = conn.SetReadDeadline(time.Time{})
		s.mu.Lock()
		delete(s.conns, c) // the route owns it now
		s.mu.Unlock()
		handedOff = true
		s.cfg.Routes[first[0]](&routedConn{Conn: conn, release: func() { <-s.slots }})
	default:
		// Kado JSON, or something that is not a request at all (null,
		// garbage): the Kado handler reads it to the end and answers with a
		// JSON error saying what was wrong.
		if tc, ok := conn.(*tls.Conn); ok {
			conn = tlsCloseWriter{tc}
		}
		s.setLoad(c, func(l *connLoad) { l.kado = true })
		s.serveKado(conn, first[0])
	}
}
