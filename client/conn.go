package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// maxResponseFrame bounds one response frame. Nodes bound sessions far
// below it; it only stops a confused peer from making us allocate without
// limit.
const maxResponseFrame = 64 << 20

// maxKeptBuffer is the largest write or read buffer a connection keeps for
// reuse after a large frame has passed through it.
const maxKeptBuffer = 256 << 10

// keepAlive detects a peer that vanished without a reset (a crashed host, a
// partition) while requests wait: about Idle + Interval*Count.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3}

// result is what a waiting call receives: the node's response, or err when
// the response was malformed or the connection failed first.
type result struct {
	resp transport.Response
	err  *callError
}

// call is one request waiting for its response.
type call struct {
	op   transport.Op
	done chan result // buffered: the one sender never blocks
}

// calls recycles calls whose channel is known to be empty.
var calls = sync.Pool{New: func() any { return &call{done: make(chan result, 1)} }}

// conn is one persistent, pipelined native-protocol connection to a node.
// Callers append their frames to a shared buffer; whichever caller finds no
// write in progress writes the buffer out, looping while others add to it,
// so concurrent requests share system calls. One reader goroutine hands each
// response to the call waiting for its id. conn is safe for concurrent use.
type conn struct {
	addr         string
	nc           net.Conn
	writeTimeout time.Duration
	broken       atomic.Bool   // set once err is
	readerDone   chan struct{} // closed when readLoop returns

	mu      sync.Mutex
	err     error // why the connection failed; nil while it is healthy
	nextID  uint64
	pending map[uint64]*call
	wbuf    []byte // frames waiting to be written
	spare   []byte // the other write buffer, while wbuf is being written
	writing bool   // a caller is writing; others only append to wbuf
}

// dial connects to addr, with TLS when cfg says so, sends the native
// preamble and starts the connection's reader. Errors are connectErrors.
func dial(ctx context.Context, addr string, cfg *Config) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAliveConfig: keepAlive}
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, connectError(addr, err, cfg.DialTimeout)
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
			return nil, connectError(addr, fmt.Errorf("TLS handshake: %w", err), cfg.DialTimeout)
		}
		nc = tlsConn
	}
	dl, _ := dctx.Deadline()
	_ = nc.SetWriteDeadline(dl)
	if _, err := nc.Write([]byte{transport.MagicNative, transport.VersionNative}); err != nil {
		nc.Close()
		return nil, connectError(addr, err, cfg.DialTimeout)
	}
	c := &conn{
		addr:         addr,
		nc:           nc,
		writeTimeout: cfg.RequestTimeout,
		readerDone:   make(chan struct{}),
		pending:      make(map[uint64]*call),
	}
	go c.readLoop()
	return c, nil
}

// errExpired is returned by roundTrip and node.get when the attempt's
// timer fired; the Store turns it into a timeoutError.
var errExpired = errors.New("attempt timed out")

// roundTrip sends req (setting its ID) and waits for the response, for ctx
// to end or for expired (nil for none) to fire. A response that comes after
// the caller stopped waiting is discarded by the reader. The error is a
// *callError, ctx's error or errExpired.
func (c *conn) roundTrip(ctx context.Context, expired <-chan time.Time, req *transport.Request) (transport.Response, error) {
	cl := calls.Get().(*call)
	cl.op = req.Op

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		calls.Put(cl)
		return transport.Response{}, lostError(req.Op, c.addr, err)
	}
	c.nextID++ // ids start at 1: 0 is the node's connection-level error
	id := c.nextID
	req.ID = id
	c.pending[id] = cl
	c.wbuf = transport.AppendRequest(c.wbuf, req)
	if !c.writing {
		c.flushLocked()
	}
	c.mu.Unlock()

	select {
	case res := <-cl.done:
		calls.Put(cl)
		if res.err != nil {
			return transport.Response{}, res.err
		}
		return res.resp, nil
	case <-ctx.Done():
		c.abandon(id, cl)
		return transport.Response{}, ctx.Err()
	case <-expired:
		c.abandon(id, cl)
		return transport.Response{}, errExpired
	}
}

// abandon stops waiting for the response to id.
func (c *conn) abandon(id uint64, cl *call) {
	c.mu.Lock()
	_, waiting := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if waiting {
		calls.Put(cl) // nobody will send on it now
	}
}

// flushLocked writes wbuf out, and whatever other callers append to it
// meanwhile, until it is empty. c.mu is held on entry and on return but not
// during the writes.
func (c *conn) flushLocked() {
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
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
		_, err := c.nc.Write(out)
		if err != nil {
			c.fail(err)
		}
		c.mu.Lock()
		if cap(out) <= maxKeptBuffer {
			c.spare = out[:0]
		} else {
			c.spare = nil
		}
	}
	c.wbuf = c.wbuf[:0]
	c.writing = false
}

// readLoop hands each response to its waiting call until the connection
// fails.
func (c *conn) readLoop() {
	defer close(c.readerDone)
	r := bufio.NewReaderSize(c.nc, 32<<10)
	var buf []byte
	for {
		frame, err := transport.ReadFrame(r, buf, maxResponseFrame)
		if err != nil {
			c.fail(err)
			return
		}
		if cap(frame) <= maxKeptBuffer {
			buf = frame
		}
		id := binary.BigEndian.Uint64(frame)
		c.mu.Lock()
		cl, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if !ok {
			if id == 0 {
				// The node explains why it is dropping the connection.
				resp, err := transport.DecodeResponse(frame, transport.OpPing)
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
		resp, err := transport.DecodeResponse(frame, cl.op)
		if err != nil {
			cl.done <- result{err: &callError{
				text:  fmt.Sprintf("kadosession: %s on %s: malformed response: %v", cl.op, c.addr, err),
				cause: errors.New(err.Error()), // not the node's ErrBadRequest
				class: classFinal,
			}}
			continue
		}
		cl.done <- result{resp: resp}
	}
}

// fail marks the connection failed with cause (the first cause wins),
// closes it and fails every waiting call. It is safe to call many times and
// from any goroutine.
func (c *conn) fail(cause error) {
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
	c.nc.Close()
	for _, cl := range pending {
		cl.done <- result{err: lostError(cl.op, c.addr, cause)}
	}
}

// close fails the connection with cause and waits for its reader to stop.
func (c *conn) close(cause error) {
	c.fail(cause)
	<-c.readerDone
}
