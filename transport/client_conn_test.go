package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kadosession/kadosession/internal/testnet"
)

// dialConn dials addr with cfg and closes the Conn when the test ends.
func dialConn(t *testing.T, addr string, cfg ConnConfig) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, cfg)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitBlocked waits until n requests wait in h's "block" restore.
func waitBlocked(t *testing.T, h *memHandler, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-h.blocked:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d requests reached the handler together", i, n)
		}
	}
}

func TestConnPipelinedRoundTrips(t *testing.T) {
	const (
		blocked    = 8
		goroutines = 64
		rounds     = 20
	)
	h := newMemHandler()
	ts := startServer(t, h, ServerConfig{})
	c := dialConn(t, ts.addr, ConnConfig{})
	ctx := context.Background()

	// Requests that only finish once all of them are in flight together,
	// on the one connection.
	var wg sync.WaitGroup
	errs := make(chan error, blocked+goroutines)
	for range blocked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &Request{Op: OpRestore, SID: "block"}
			resp, err := c.RoundTrip(ctx, req)
			if err != nil || resp.Err != nil || resp.Found || resp.ID != req.ID {
				errs <- fmt.Errorf("blocked restore: %+v, %v", resp, err)
			}
		}()
	}
	waitBlocked(t, h, blocked)

	// Many more go past them meanwhile.
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sid := fmt.Sprintf("sid%d", g)
			for i := range rounds {
				want := fmt.Sprintf(`{"g":%d,"i":%d}`, g, i)
				save := &Request{Op: OpSave, SID: sid, Data: []byte(want)}
				if resp, err := c.RoundTrip(ctx, save); err != nil || resp.Err != nil || resp.ID != save.ID {
					errs <- fmt.Errorf("save %s: %+v, %v", sid, resp, err)
					return
				}
				restore := &Request{Op: OpRestore, SID: sid}
				resp, err := c.RoundTrip(ctx, restore)
				if err != nil || resp.Err != nil || !resp.Found || string(resp.Data) != want || resp.ID != restore.ID {
					errs <- fmt.Errorf("restore %s round %d: %+v (data %s), %v; want %s", sid, i, resp, resp.Data, err, want)
					return
				}
			}
		}()
	}
	close(h.unblock)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err() = %v after the round trips; want nil", err)
	}
}

func TestConnContextEndLeavesConnUsable(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, h, ServerConfig{})
	c := dialConn(t, ts.addr, ConnConfig{})
	bg := context.Background()

	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	if _, err := c.RoundTrip(ctx, &Request{Op: OpRestore, SID: "block"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip with an ending ctx: %v; want context.DeadlineExceeded", err)
	}
	if _, err := c.RoundTripDeadline(bg, time.Now().Add(50*time.Millisecond), &Request{Op: OpRestore, SID: "block"}); err != ErrDeadline {
		t.Fatalf("RoundTripDeadline: %v; want ErrDeadline", err)
	}
	waitBlocked(t, h, 2)
	if err := c.Err(); err != nil {
		t.Fatalf("Err() = %v after a caller gave up; want nil", err)
	}

	// The late answers arrive and are dropped; the connection carries on.
	close(h.unblock)
	for i := range 20 {
		req := &Request{Op: OpSave, SID: fmt.Sprint("after", i), Data: []byte(`{}`)}
		if resp, err := c.RoundTripDeadline(bg, time.Now().Add(5*time.Second), req); err != nil || resp.Err != nil || resp.ID != req.ID {
			t.Fatalf("save after the timeouts: %+v, %v", resp, err)
		}
	}
	select {
	case <-c.Done():
		t.Fatalf("Done closed: %v", c.Err())
	default:
	}
}

// A node whose host vanished sends no reset, and TCP takes some 15 minutes
// to give up: a call that waited silentAfter with nothing at all read on
// its connection gives the connection up, so the next call redials (and a
// failed dial says the node cannot be reached) instead of every call
// waiting out its whole deadline on it. A request that is merely slow,
// while the node answers others, leaves the connection alone (above).
func TestConnSilentNodeIsGivenUp(t *testing.T) {
	defer func(d time.Duration) { silentAfter = d }(silentAfter)
	silentAfter = 100 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() { // reads what comes and never answers, as a vanished host
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, nc)
			mu.Unlock()
			go io.Copy(io.Discard, nc)
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, nc := range held {
			nc.Close()
		}
	})
	bg := context.Background()
	for _, tc := range []struct {
		name string
		call func(c *Conn) error
	}{
		{"the request's deadline", func(c *Conn) error {
			_, err := c.RoundTripDeadline(bg, time.Now().Add(200*time.Millisecond), &Request{Op: OpRestore, SID: "s"})
			return err
		}},
		{"the caller's context deadline", func(c *Conn) error {
			ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
			defer cancel()
			_, err := c.RoundTrip(ctx, &Request{Op: OpRestore, SID: "s"})
			return err
		}},
	} {
		c := dialConn(t, ln.Addr().String(), ConnConfig{})
		// A deadline shorter than silentAfter says nothing about the node.
		if _, err := c.RoundTripDeadline(bg, time.Now().Add(20*time.Millisecond), &Request{Op: OpRestore, SID: "s"}); err != ErrDeadline {
			t.Fatalf("%s: a short call: %v; want ErrDeadline", tc.name, err)
		}
		if err := c.Err(); err != nil {
			t.Fatalf("%s: a 20 ms timeout gave the connection up: %v", tc.name, err)
		}
		waiting := make(chan error, 1)
		go func() {
			_, err := c.RoundTripDeadline(bg, time.Now().Add(5*time.Second), &Request{Op: OpRestore, SID: "other"})
			waiting <- err
		}()
		if err := tc.call(c); err == nil {
			t.Fatalf("%s: a call to a silent node succeeded", tc.name)
		}
		if err := c.Err(); err == nil || !strings.Contains(err.Error(), "the node may be gone") {
			t.Fatalf("%s: after a silent timeout the connection's error is %v; want it given up", tc.name, err)
		}
		select {
		case err := <-waiting:
			var ce *ConnError
			if !errors.As(err, &ce) {
				t.Fatalf("%s: the other waiting call got %v; want a *ConnError", tc.name, err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: the other call still waits on the given-up connection", tc.name)
		}
	}
}

func TestConnBrokenFailsWaiters(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, h, ServerConfig{})
	c := dialConn(t, ts.addr, ConnConfig{})
	const waiters = 3
	errs := make(chan error, waiters)
	for range waiters {
		go func() {
			_, err := c.RoundTrip(context.Background(), &Request{Op: OpRestore, SID: "block"})
			errs <- err
		}()
	}
	waitBlocked(t, h, waiters)
	ts.Close() // drops every connection

	for range waiters {
		select {
		case err := <-errs:
			var ce *ConnError
			if !errors.As(err, &ce) || ce.Op != OpRestore || ce.Addr != ts.addr {
				t.Errorf("waiter: %v; want a *ConnError for restore on %s", err, ts.addr)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiter was not failed when the node dropped the connection")
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	cause := c.Err()
	if cause == nil {
		t.Fatal("Err() = nil on a broken connection")
	}
	_, err := c.RoundTrip(context.Background(), &Request{Op: OpPing})
	var ce *ConnError
	if !errors.As(err, &ce) || ce.Err != cause {
		t.Errorf("RoundTrip on a broken conn: %v; want a *ConnError with cause %v", err, cause)
	}
}

func TestConnNodeRefusesConnection(t *testing.T) {
	// The node's id-0 frame (here: too many connections) fails the
	// connection with the node's own error.
	ts := startServer(t, newMemHandler(), ServerConfig{MaxConns: 1})
	c1 := dialConn(t, ts.addr, ConnConfig{})
	if _, err := c1.RoundTrip(context.Background(), &Request{Op: OpPing}); err != nil {
		t.Fatal(err)
	}
	c2 := dialConn(t, ts.addr, ConnConfig{})
	_, err := c2.RoundTrip(context.Background(), &Request{Op: OpPing})
	var te *Error
	if !errors.Is(err, ErrOverloaded) || !errors.As(err, &te) || te.Message != "too many connections: the node's limit is 1" {
		t.Fatalf("RoundTrip on a refused connection: %v; want the node's overloaded error", err)
	}
	if !errors.Is(c2.Err(), ErrOverloaded) {
		t.Errorf("Err() = %v; want the node's overloaded error", c2.Err())
	}
}

func TestDialErrors(t *testing.T) {
	addr := testnet.ClosedAddr(t)
	_, err := Dial(context.Background(), addr, ConnConfig{})
	var de *DialError
	if !errors.As(err, &de) || de.Addr != addr || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Dial to a closed port: %v; want a *DialError wrapping ECONNREFUSED", err)
	}

	// DialTimeout bounds a dial that hangs.
	hang := func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	start := time.Now()
	_, err = Dial(context.Background(), addr, ConnConfig{DialTimeout: 50 * time.Millisecond, Dialer: hang})
	if !errors.As(err, &de) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial that hangs: %v; want a *DialError wrapping DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial took %s with a 50ms DialTimeout", d)
	}
}

// pipeNode is a fake node at the other end of a net.Pipe, for replies no
// real node sends.
type pipeNode struct {
	t        *testing.T
	nc       net.Conn
	preamble [2]byte
}

func pipeDial(t *testing.T, cfg ConnConfig) (*Conn, *pipeNode) {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { server.Close() })
	n := &pipeNode{t: t, nc: server}
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(server, n.preamble[:])
		read <- err
	}()
	cfg.Dialer = func(context.Context, string, string) (net.Conn, error) { return client, nil }
	c := dialConn(t, "pipe:1", cfg)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	return c, n
}

// serve reads one request and answers it with reply(request id).
func (n *pipeNode) serve(reply func(id uint64) []byte) {
	frame, err := ReadFrame(n.nc, nil, DefaultMaxFrame)
	if err != nil {
		n.t.Errorf("fake node: %v", err)
		return
	}
	if _, err := n.nc.Write(reply(binary.BigEndian.Uint64(frame))); err != nil {
		n.t.Errorf("fake node: %v", err)
	}
}

func TestConnOddResponses(t *testing.T) {
	c, n := pipeDial(t, ConnConfig{Magic: 'Z', MaxFrame: 1024})
	if n.preamble != [2]byte{'Z', VersionNative} {
		t.Errorf("preamble %q; want Z and version %d", n.preamble, VersionNative)
	}
	ctx := context.Background()

	// A response that does not decode fails its request only.
	go n.serve(func(id uint64) []byte { return frame(id, byte(CodeOK)) }) // no leader hint
	_, err := c.RoundTrip(ctx, &Request{Op: OpRestore, SID: "x"})
	var re *ResponseError
	if !errors.As(err, &re) || re.Op != OpRestore || errors.Is(err, ErrBadRequest) {
		t.Fatalf("truncated response: %v; want a *ResponseError that is not ErrBadRequest", err)
	}
	go n.serve(func(id uint64) []byte {
		return AppendResponse(nil, OpRestore, &Response{ID: id, Leader: "10.0.0.1:3001", Found: true, Data: []byte(`{}`)})
	})
	resp, err := c.RoundTrip(ctx, &Request{Op: OpRestore, SID: "x"})
	if err != nil || !resp.Found || resp.Leader != "10.0.0.1:3001" || string(resp.Data) != "{}" {
		t.Fatalf("restore after a malformed response: %+v, %v", resp, err)
	}

	// A frame over MaxFrame fails the connection.
	go n.serve(func(id uint64) []byte { return frame(id, append([]byte{byte(CodeOK), 0}, make([]byte, 2000)...)...) })
	_, err = c.RoundTrip(ctx, &Request{Op: OpAdmin, Data: []byte(`{}`)})
	var ce *ConnError
	if !errors.As(err, &ce) || !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized response: %v; want a *ConnError wrapping ErrFrameTooLarge", err)
	}
}

// frame builds a response frame with the given status and body.
func frame(id uint64, body ...byte) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 4), id)
	b = append(b, body...)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// A Conn dialed to an HTTP server (a node's --http port given for its
// --listen port) says so: it reported a frame of 1213486160 bytes. The fake
// node answers as Go's HTTP server does a line that is no HTTP request.
func TestConnToAnHTTPServerSaysSo(t *testing.T) {
	c, n := pipeDial(t, ConnConfig{})
	go n.serve(func(uint64) []byte {
		return []byte("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.RoundTrip(ctx, &Request{Op: OpPing})
	if !errors.Is(err, ErrHTTPPort) || !strings.Contains(err.Error(), "answered in HTTP") || !strings.Contains(err.Error(), "--listen port") {
		t.Fatalf("a request to an HTTP server: %v", err)
	}
}

// TestWritingCallerKeepsItsDeadline: the caller that finds no write in
// progress writes for everyone; against a node that stopped reading (its
// socket buffers full) it still gives up at its own deadline, not at the
// connection's WriteTimeout, and the write goes on without it: the
// connection stays usable once the node reads again.
func TestWritingCallerKeepsItsDeadline(t *testing.T) {
	// More than the loopback socket buffers hold while the node reads
	// nothing: the client's send buffer is set to 256 KiB (512 KiB as the
	// kernel counts it; left alone it grows to tcp_wmem's 4 MiB) and the
	// receive buffer grows only as the application reads, so some 600 KiB
	// fit. Not below one segment (64 KiB on loopback): there the window
	// reopens only by the sender's backed-off probes, and the drained
	// writes crawl. The frame is kept small because building it is part
	// of the call: a 24 MiB frame in fresh memory took 0.7-4.8 s to build
	// under -race on a loaded machine, past the bound below, before any
	// write began.
	big := &Request{Op: OpSave, SID: "s", Data: bytes.Repeat([]byte("x"), 4<<20)}
	smallSendBuffer := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err == nil {
			err = nc.(*net.TCPConn).SetWriteBuffer(256 << 10)
		}
		return nc, err
	}
	for _, tc := range []struct {
		name string
		call func(c *Conn) error
	}{
		{"the request's deadline", func(c *Conn) error {
			_, err := c.RoundTripDeadline(context.Background(), time.Now().Add(200*time.Millisecond), big)
			return err
		}},
		{"the caller's context", func(c *Conn) error {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := c.RoundTrip(ctx, big)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A connection of its own: on a shared one the second call
			// would find the first one's write going on and only queue.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- nc
			}()
			c := dialConn(t, ln.Addr().String(), ConnConfig{WriteTimeout: 10 * time.Second, Dialer: smallSendBuffer})
			srv := <-accepted
			defer srv.Close()

			start := time.Now()
			if err := tc.call(c); err == nil {
				t.Fatal("a call to a node that reads nothing succeeded")
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("the writing caller took %s to give up, past its 200 ms deadline", took)
			}
			if err := c.Err(); err != nil {
				t.Fatalf("a caller's deadline broke the connection: %v", err)
			}
			c.mu.Lock()
			handedOver := c.writing
			c.mu.Unlock()
			if !handedOver {
				t.Fatal("the frame was written whole to a node that reads nothing: it fit the socket buffers, and the test tested nothing")
			}
			// The node reads again: the handed-over write finishes whole
			// and the connection stays healthy.
			var read atomic.Int64
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := srv.Read(buf)
					read.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
			want := int64(len(big.Data))
			for deadline := time.Now().Add(5 * time.Second); read.Load() < want && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if n := read.Load(); n < want {
				t.Fatalf("the node received %d bytes, want the big frame's %d", n, len(big.Data))
			}
			if err := c.Err(); err != nil {
				t.Fatalf("the connection failed once the node read again: %v", err)
			}
		})
	}
}

// RoundTripChecked asks its check each time the call has waited its
// interval: a check whose channel is never closed leaves the call waiting
// (until its deadline, or its answer), one whose channel is closed ends it
// with ErrMoved; an answer before the first interval asks nothing.
func TestConnRoundTripChecked(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, h, ServerConfig{})
	c := dialConn(t, ts.addr, ConnConfig{})
	bg := context.Background()
	var asked atomic.Int32
	never := make(chan struct{})
	stay := func() <-chan struct{} { asked.Add(1); return never }

	if resp, err := c.RoundTripChecked(bg, time.Now().Add(5*time.Second), &Request{Op: OpSave, SID: "s", Data: []byte(`{}`)}, time.Second, stay); err != nil || resp.Err != nil {
		t.Fatalf("a quick call: %+v, %v", resp, err)
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("a call answered at once was checked %d times", n)
	}

	start := time.Now()
	if _, err := c.RoundTripChecked(bg, start.Add(300*time.Millisecond), &Request{Op: OpRestore, SID: "block"}, 40*time.Millisecond, stay); err != ErrDeadline {
		t.Fatalf("a blocked call whose checks say stay: %v; want ErrDeadline", err)
	}
	if n := asked.Load(); n < 2 || n > 8 {
		t.Fatalf("a call blocked 300 ms with checks every 40 ms was checked %d times", n)
	}

	moved := make(chan struct{})
	checks := 0
	moveSecond := func() <-chan struct{} {
		checks++
		if checks == 2 {
			close(moved)
		}
		return moved
	}
	start = time.Now()
	if _, err := c.RoundTripChecked(bg, start.Add(5*time.Second), &Request{Op: OpRestore, SID: "block"}, 50*time.Millisecond, moveSecond); err != ErrMoved {
		t.Fatalf("a blocked call whose second check says move: %v; want ErrMoved", err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("the call moved after %v; want about 100 ms", waited)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err() = %v after calls moved; want nil (the node answers others)", err)
	}
	close(h.unblock)
}
