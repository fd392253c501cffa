package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of ConnConfig.
const (
	// DefaultDialTimeout is ConnConfig.DialTimeout's default.
	DefaultDialTimeout = 2 * time.Second
	// DefaultWriteTimeout is ConnConfig.WriteTimeout's default.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultMaxResponseFrame is ConnConfig.MaxFrame's default: 64 MiB.
	// Nodes bound sessions far below it; it only stops a confused peer from
	// making a client allocate without limit.
	DefaultMaxResponseFrame = 64 << 20
)

// maxKeptBuffer is the largest write or read buffer a Conn keeps for reuse
// after a large frame has passed through it.
const maxKeptBuffer = 256 << 10

// keepAlive detects a peer that vanished without a reset (a crashed host, a
// partition) while requests wait: about Idle + Interval*Count.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3}

// ConnConfig configures the client side of native-protocol connections
// (Dial, NewPool). Zero or negative values take the defaults. Dial and
// NewPool copy it; it may be reused afterwards.
type ConnConfig struct {
	// DialTimeout bounds connecting, the TLS handshake and sending the
	// preamble together (DefaultDialTimeout); the ctx given to Dial may end
	// it sooner.
	DialTimeout time.Duration
	// WriteTimeout bounds each write of queued request frames
	// (DefaultWriteTimeout). A write that times out fails the connection.
	WriteTimeout time.Duration
	// TLSConfig, when set, makes the connection TLS with the native protocol
	// inside it. When its ServerName is empty, the host of the address
	// dialled is used. Nil means plaintext.
	TLSConfig *tls.Config
	// MaxFrame bounds one response frame (DefaultMaxResponseFrame). A larger
	// frame fails the connection.
	MaxFrame int
	// Magic is the connection's first byte: MagicNative when zero; a node
	// forwarding to another node sends MagicPeer.
	Magic byte
	// Token, when set, is presented (OpAuth) before any request: the node's
	// client token.
	Token string
	// Dialer, when set, replaces the TCP dial (which enables keep-alives),
	// for tests and fault injection. It must honour ctx. A connection it
	// returns that is not a *net.TCPConn is written as a TLS one is: a
	// caller writing to a node that stopped reading waits up to
	// WriteTimeout, whatever its own deadline (see Conn).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (c *ConnConfig) withDefaults() ConnConfig {
	out := *c
	if out.DialTimeout <= 0 {
		out.DialTimeout = DefaultDialTimeout
	}
	if out.WriteTimeout <= 0 {
		out.WriteTimeout = DefaultWriteTimeout
	}
	if out.MaxFrame <= 0 {
		out.MaxFrame = DefaultMaxResponseFrame
	}
	if out.Magic == 0 {
		out.Magic = MagicNative
	}
	return out
}

// ErrClosed is why a Conn closed by Close (or by its Pool's Close) failed:
// requests it interrupts fail with a *ConnError wrapping it. Pool.Get
// returns it after Close.
var ErrClosed = errors.New("transport: connection closed")

// ErrHTTPPort is why a Conn whose server answered in HTTP failed (most
// likely a node's --http admin port, given where its --listen port was
// meant): its requests fail with a *ConnError wrapping it. An HTTP server
// answers once it has read a line, so a connection whose first request
// holds a newline learns this at once: an OpAdmin body sent to an address
// not yet known to be a node's (a probe) ends its JSON with one (see
// AdminProbe); without it, the HTTP server's header timeout decides when.
var ErrHTTPPort = errors.New("answered in HTTP")

// AdminProbe returns body, a JSON admin request, ending in a newline (JSON
// white space a node ignores), for a first request to an address that may
// be an HTTP server's: see ErrHTTPPort.
func AdminProbe(body string) []byte { return []byte(body + "\n") }

// ErrDeadline is returned by Conn.RoundTripDeadline and Pool.GetDeadline
// when their deadline passes first. The connection stays usable; a request
// that timed out may or may not have been served.
var ErrDeadline = errors.New("transport: deadline passed")

// DialError reports a failed dial, TLS handshake or preamble. Err is the
// underlying error (errors.Is(err, syscall.ECONNREFUSED) works through it).
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return "transport: connect to " + e.Addr + ": " + e.Err.Error() }

// Unwrap returns e.Err.
func (e *DialError) Unwrap() error { return e.Err }

// ConnError reports a request that got no response because its connection
// failed, before or after the request was sent: the request may or may not
// have been served. Err is why the connection failed: ErrClosed after
// Close; the node's *Error when it said why it dropped the connection (too
// many connections, an unsupported version…); otherwise the read or write
// error (io.EOF when the node closed the connection).
type ConnError struct {
	Addr string
	Op   Op
	Err  error
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("transport: %s on %s: connection lost: %v", e.Op, e.Addr, e.Err)
}

// Unwrap returns e.Err.
func (e *ConnError) Unwrap() error { return e.Err }

// ResponseError reports a response frame that could not be decoded. Only
// that request failed: the connection stays up. Err says what was wrong; it
// does not match ErrBadRequest (the request was not at fault).
type ResponseError struct {
	Addr string
	Op   Op
	Err  error
}

func (e *ResponseError) Error() string {
	return fmt.Sprintf("transport: %s on %s: malformed response: %v", e.Op, e.Addr, e.Err)
}

// Unwrap returns e.Err.
func (e *ResponseError) Unwrap() error { return e.Err }

// callResult is what a waiting call receives: the node's response, or err
// when the response was malformed or the connection failed first.
type callResult struct {
	resp Response
	err  error
}

// pendingCall is one request waiting for its response.
type pendingCall struct {
	op   Op
	done chan callResult // buffered: the one sender never blocks
}

// pendingCalls recycles calls whose channel is known to be empty.
var pendingCalls = sync.Pool{New: func() any { return &pendingCall{done: make(chan callResult, 1)} }}

// deadlineTimers recycles stopped round-trip timers. Since Go 1.23 a
// stopped timer's channel holds no stale tick, so Reset is all a reused one
// needs.
var deadlineTimers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// Conn is one persistent, pipelined native-protocol connection to a node.
// Callers append their frames to a shared buffer; whichever caller finds no
// write in progress writes the buffer out, looping while others add to it,
// so concurrent requests share system calls. One reader goroutine hands each
// response to the call waiting for its request id.
//
// A Conn is safe for concurrent use. The first read or write error (or the
// node's connection-level error frame) fails it for good: every waiting
// request fails with a *ConnError and so does every later one; Done is
// closed and Err says why. A caller that stops waiting (its ctx ended, its
// deadline passed) leaves the connection usable: the late response is
// dropped.
type Conn struct {
	addr         string
	nc           net.Conn
	writeTimeout time.Duration
	resumable    bool // a write stopped by its deadline can go on (plain TCP; TLS's cannot)
	maxFrame     int
	broken       atomic.Bool   // set once err is
	frames       atomic.Uint64 // frames read so far (silentFor)
	failed       chan struct{} // closed once err is set
	readerDone   chan struct{} // closed when readLoop returns

	mu      sync.Mutex
	err     error // why the connection failed; nil while it is healthy
	nextID  uint64
	pending map[uint64]*pendingCall
	wbuf    []byte // frames waiting to be written
	spare   []byte // the other write buffer, while wbuf is being written
	writing bool   // a caller is writing; others only append to wbuf
}

// Dial connects to addr, with TLS when cfg says so, sends the preamble
// (cfg.Magic, VersionNative) and starts the connection's reader. It is
// bounded by ctx and cfg.DialTimeout. Its errors are *DialErrors.
func Dial(ctx context.Context, addr string, cfg ConnConfig) (*Conn, error) {
	cfg = cfg.withDefaults()
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	dialer := cfg.Dialer
	if dialer == nil {
		d := net.Dialer{KeepAliveConfig: keepAlive}
		dialer = d.DialContext
	}
	nc, err := dialer(dctx, "tcp", addr)
	if err != nil {
		return nil, &DialError{Addr: addr, Err: err}
	}
	if cfg.TLSConfig != nil {
		tc := cfg.TLSConfig
		if tc.ServerName == "" {
			tc = tc.Clone()
			tc.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tlsConn := tls.Client(nc, tc)
		if err := tlsConn.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, &DialError{Addr: addr, Err: fmt.Errorf("TLS handshake: %w", err)}
		}
		nc = tlsConn
	}
	dl, _ := dctx.Deadline()
	_ = nc.SetWriteDeadline(dl)
	if _, err := nc.Write([]byte{cfg.Magic, VersionNative}); err != nil {
		nc.Close()
		return nil, &DialError{Addr: addr, Err: err}
	}
	_, resumable := nc.(*net.TCPConn)
	c := &Conn{
		addr:         addr,
		nc:           nc,
		resumable:    resumable,
		writeTimeout: cfg.WriteTimeout,
		maxFrame:     cfg.MaxFrame,
		failed:       make(chan struct{}),
		readerDone:   make(chan struct{}),
		pending:      make(map[uint64]*pendingCall),
	}
	go c.readLoop()
	if cfg.Token != "" {
		resp, err := c.RoundTrip(dctx, &Request{Op: OpAuth, Data: []byte(cfg.Token)})
		if err == nil && resp.Err != nil {
			err = resp.Err
		}
		if err != nil {
			c.Close()
			return nil, &DialError{Addr: addr, Err: fmt.Errorf("authenticate: %w", err)}
		}
	}
	return c, nil
}

// Addr returns the address the Conn was dialled to.
func (c *Conn) Addr() string { return c.addr }

// Err returns why the connection failed, or nil while it is healthy. It is
// safe to call at any time.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Done returns a channel that is closed when the connection fails or is
// closed; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.failed }

// RoundTrip sends req and waits for its response or for ctx to end. It sets
// req.ID (ids are the Conn's to assign); req is not kept after RoundTrip
// returns. A response carrying the node's error is returned with a nil
// error: the caller reads resp.Err. The error is ctx.Err(), a *ConnError or
// a *ResponseError. Safe for concurrent use.
func (c *Conn) RoundTrip(ctx context.Context, req *Request) (Response, error) {
	return c.roundTrip(ctx, time.Time{}, nil, checker{}, req)
}

// RoundTripDeadline is RoundTrip that also gives up at deadline (none when
// zero) with ErrDeadline. It saves the caller a derived context: the timer
// is pooled.
func (c *Conn) RoundTripDeadline(ctx context.Context, deadline time.Time, req *Request) (Response, error) {
	return c.RoundTripChecked(ctx, deadline, req, 0, nil)
}

// ErrMoved is returned by Conn.RoundTripChecked when the call's check said
// the answer should be sought elsewhere.
var ErrMoved = errors.New("transport: call moved elsewhere")

// RoundTripChecked is RoundTripDeadline that, each time the call has waited
// every without an answer (and before its deadline), calls check, which
// returns a channel that is closed if the call should stop waiting (or one
// that never is, or nil). Once it is closed, the call stops waiting and
// returns ErrMoved: a node that stopped answering (a frozen process, a
// host gone without a reset) may have been replaced, which check finds out
// by asking elsewhere. Every zero or check nil: no checks. The one pooled
// timer serves the deadline and the checks.
func (c *Conn) RoundTripChecked(ctx context.Context, deadline time.Time, req *Request, every time.Duration, check func() <-chan struct{}) (Response, error) {
	if check == nil || every <= 0 {
		if deadline.IsZero() {
			return c.roundTrip(ctx, time.Time{}, nil, checker{}, req)
		}
		every = 0
	}
	t := deadlineTimers.Get().(*time.Timer)
	t.Reset(nextWake(deadline, every))
	resp, err := c.roundTrip(ctx, deadline, t, checker{every, check}, req)
	t.Stop()
	deadlineTimers.Put(t)
	return resp, err
}

// checker is RoundTripChecked's check and its interval (zero: none).
type checker struct {
	every time.Duration
	check func() <-chan struct{}
}

// nextWake is how long to sleep until the deadline (zero: none) or the next
// check (every zero: none), whichever is first.
func nextWake(deadline time.Time, every time.Duration) time.Duration {
	if deadline.IsZero() {
		return every
	}
	d := time.Until(deadline)
	if every > 0 && every < d {
		return every
	}
	return d
}

// roundTrip sends req and waits for the response, for ctx to end or for
// deadline (zero: none; t is its timer, nil when there is neither a
// deadline nor checks) to pass, running ch's checks meanwhile. A response
// that comes after the caller stopped waiting is discarded by the reader.
func (c *Conn) roundTrip(ctx context.Context, deadline time.Time, t *time.Timer, ch checker, req *Request) (Response, error) {
	cl := pendingCalls.Get().(*pendingCall)
	cl.op = req.Op

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		pendingCalls.Put(cl)
		return Response{}, &ConnError{Addr: c.addr, Op: req.Op, Err: err}
	}
	c.nextID++ // ids start at 1: 0 is the node's connection-level error
	id := c.nextID
	req.ID = id
	c.pending[id] = cl
	c.wbuf = AppendRequest(c.wbuf, req)
	if !c.writing {
		until := deadline
		if d, ok := ctx.Deadline(); ok && (until.IsZero() || d.Before(until)) {
			until = d
		}
		c.flushLocked(until)
	}
	c.mu.Unlock()
	sent, seen := time.Now(), c.frames.Load()

	var wake <-chan time.Time
	if t != nil {
		wake = t.C
	}
	var moved <-chan struct{} // closed when the last check says to stop
	for {
		select {
		case res := <-cl.done:
			pendingCalls.Put(cl)
			return res.resp, res.err
		case <-ctx.Done():
			c.abandon(id, cl)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				c.silentFor(sent, seen)
			}
			return Response{}, ctx.Err()
		case <-moved:
			c.abandon(id, cl)
			c.silentFor(sent, seen)
			return Response{}, ErrMoved
		case <-wake:
			if ch.check == nil || !deadline.IsZero() && !time.Now().Before(deadline) {
				c.abandon(id, cl)
				c.silentFor(sent, seen)
				return Response{}, ErrDeadline
			}
			moved = ch.check()
			t.Reset(nextWake(deadline, ch.every))
		}
	}
}

// silentAfter is how long a call must have waited, with nothing at all read
// on its connection meanwhile, for silentFor to give the connection up (a
// variable for tests).
var silentAfter = time.Second

// silentFor fails the connection when a call sent at sent timed out after
// at least silentAfter and no frame came on it since (seen: the frames read
// by then). A node whose host vanished (power lost, a partition dropping
// packets) sends no reset: TCP's retransmissions take some 15 minutes to
// give up, keep-alives wait for them, and every call on the connection
// meanwhile waited out its whole deadline. Given up, the connection is
// redialled by the next call, and a dial that fails says the node cannot
// be reached. Calls still waiting on it fail as on a lost connection.
func (c *Conn) silentFor(sent time.Time, seen uint64) {
	if c.frames.Load() != seen {
		return // the node answers others: this request is merely slow
	}
	if waited := time.Since(sent); waited >= silentAfter {
		c.fail(fmt.Errorf("no answer for %s and nothing else read on the connection meanwhile: the node may be gone", waited.Round(time.Millisecond)))
	}
}

// abandon stops waiting for the response to id.
func (c *Conn) abandon(id uint64, cl *pendingCall) {
	c.mu.Lock()
	_, waiting := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if waiting {
		pendingCalls.Put(cl) // nobody will send on it now
	}
	// Otherwise the reader or fail has sent (or is about to send) on cl:
	// it is left to the garbage collector rather than reused with a stale
	// result in its channel.
}

// flushLocked writes wbuf out, and whatever other callers append to it
// meanwhile, until it is empty. c.mu is held on entry and on return but not
// during the writes.
//
// The caller writes for everyone, but waits no longer than its own
// deadline (until; zero: none): when that passes in the middle of a write
// (the node stopped reading, its socket buffers full), the rest of the
// write and of the flush is handed to a goroutine, bound by the
// connection's WriteTimeout, which fails the connection when it passes.
// The caller gives up as it would waiting for the answer, and one caller's
// short deadline does not break the connection for the others. A write
// stopped by a deadline can go on on a plain TCP connection; after a TLS
// write's timeout the connection is spoilt, so there the caller waits for
// the write as before (WriteTimeout at most).
func (c *Conn) flushLocked(until time.Time) {
	c.writing = true
	for len(c.wbuf) > 0 && c.err == nil {
		// Let callers that are ready to run append their frames first,
		// so that one write carries them all.
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
		if c.err != nil {
			break
		}
		out := c.wbuf
		c.wbuf = c.spare[:0]
		c.mu.Unlock()
		limit := time.Now().Add(c.writeTimeout)
		mine := c.resumable && !until.IsZero() && until.Before(limit)
		if mine {
			limit = until
		}
		_ = c.nc.SetWriteDeadline(limit)
		n, err := c.nc.Write(out)
		if err != nil && mine && errors.Is(err, os.ErrDeadlineExceeded) {
			go c.writeOn(out, n) // still writing: c.writing stays set
			c.mu.Lock()
			return
		}
		if err != nil {
			c.fail(err)
		}
		c.mu.Lock()
		c.keepSpare(out)
	}
	c.wbuf = c.wbuf[:0]
	c.writing = false
}

// writeOn writes out[n:], the rest of a write whose caller's deadline
// passed, then flushes what was queued meanwhile, under the connection's
// own WriteTimeout.
func (c *Conn) writeOn(out []byte, n int) {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	if _, err := c.nc.Write(out[n:]); err != nil {
		c.fail(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keepSpare(out)
	c.flushLocked(time.Time{})
}

// keepSpare keeps out, a written buffer, for the next write unless it grew
// too large to keep. c.mu is held.
func (c *Conn) keepSpare(out []byte) {
	if cap(out) <= maxKeptBuffer {
		c.spare = out[:0]
	} else {
		c.spare = nil
	}
}

// httpAsFrameSize is "HTTP" (an HTTP server's answer) read as a frame's
// length.
const httpAsFrameSize = 'H'<<24 | 'T'<<16 | 'T'<<8 | 'P'

// readLoop hands each response to its waiting call until the connection
// fails.
func (c *Conn) readLoop() {
	defer close(c.readerDone)
	r := bufio.NewReaderSize(c.nc, 32<<10)
	var buf []byte
	for {
		frame, err := ReadFrame(r, buf, c.maxFrame)
		if err != nil {
			if fe := (*FrameTooLargeError)(nil); errors.As(err, &fe) && fe.Size == httpAsFrameSize {
				err = fmt.Errorf("the server at %s %w: is that a node's --http (admin) port? Give its --listen port", c.addr, ErrHTTPPort)
			}
			c.fail(err)
			return
		}
		if cap(frame) <= maxKeptBuffer {
			buf = frame
		}
		c.frames.Add(1)
		id := binary.BigEndian.Uint64(frame)
		c.mu.Lock()
		cl, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if !ok {
			if id == 0 {
				// The node explains why it is dropping the connection.
				resp, err := DecodeResponse(frame, OpPing)
				if err == nil && resp.Err != nil {
					err = resp.Err
				} else {
					err = errors.New("the node sent an unexpected frame with request id 0")
				}
				c.fail(err)
				return
			}
			continue // the answer to a call that stopped waiting
		}
		resp, err := DecodeResponse(frame, cl.op)
		if err != nil {
			// Not the node's ErrBadRequest: keep only the words.
			cl.done <- callResult{err: &ResponseError{Addr: c.addr, Op: cl.op, Err: errors.New(err.Error())}}
			continue
		}
		cl.done <- callResult{resp: resp}
	}
}

// fail marks the connection failed with cause (the first cause wins),
// closes it and fails every waiting call. It is safe to call many times and
// from any goroutine.
func (c *Conn) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = cause
	c.broken.Store(true)
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	close(c.failed)
	c.nc.Close()
	for _, cl := range pending {
		cl.done <- callResult{err: &ConnError{Addr: c.addr, Op: cl.op, Err: cause}}
	}
}

// Close fails the connection with ErrClosed (unless it had already failed)
// and waits for its reader to stop. Requests in flight fail with a
// *ConnError wrapping ErrClosed. Close is idempotent and returns nil.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	<-c.readerDone
	return nil
}
