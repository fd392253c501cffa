package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingDialer dials TCP and counts the dials.
func countingDialer(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// newPool returns a Pool closed when the test ends.
func newPool(t *testing.T, addr string, size int, cfg ConnConfig) *Pool {
	t.Helper()
	p := NewPool(addr, size, cfg)
	t.Cleanup(func() { p.Close() })
	return p
}

func ping(t *testing.T, c *Conn) {
	t.Helper()
	if resp, err := c.RoundTrip(context.Background(), &Request{Op: OpPing}); err != nil || resp.Err != nil {
		t.Fatalf("ping: %+v, %v", resp, err)
	}
}

func TestPoolRoundRobinAndClose(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, h, ServerConfig{})
	var dials atomic.Int64
	p := newPool(t, ts.addr, 3, ConnConfig{Dialer: countingDialer(&dials)})
	if p.Addr() != ts.addr {
		t.Errorf("Addr() = %q; want %q", p.Addr(), ts.addr)
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("NewPool dialled %d times; want 0 (lazy)", n)
	}
	ctx := context.Background()
	var conns []*Conn
	for range 4 {
		c, err := p.Get(ctx)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		ping(t, c)
		conns = append(conns, c)
	}
	if conns[0] == conns[1] || conns[1] == conns[2] || conns[0] == conns[2] || conns[3] != conns[0] {
		t.Errorf("Get did not go round the 3 slots: %p %p %p %p", conns[0], conns[1], conns[2], conns[3])
	}
	if n := dials.Load(); n != 3 {
		t.Errorf("%d dials; want 3", n)
	}

	// Close fails a request in flight and every later Get.
	errs := make(chan error, 1)
	go func() {
		_, err := conns[1].RoundTrip(ctx, &Request{Op: OpRestore, SID: "block"})
		errs <- err
	}()
	waitBlocked(t, h, 1)
	p.Close()
	var ce *ConnError
	if err := <-errs; !errors.As(err, &ce) || !errors.Is(err, ErrClosed) {
		t.Errorf("request in flight at Close: %v; want a *ConnError wrapping ErrClosed", err)
	}
	for i, c := range conns[:3] {
		select {
		case <-c.Done():
		default:
			t.Errorf("conn %d still open after Close", i)
		}
	}
	if _, err := p.Get(ctx); err != ErrClosed {
		t.Errorf("Get after Close: %v; want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestPoolRedialsBrokenConn(t *testing.T) {
	// The node closes idle connections: the Conn breaks (EOF) and the
	// pool's next Get dials a new one.
	ts := startServer(t, newMemHandler(), ServerConfig{IdleTimeout: 50 * time.Millisecond})
	var dials atomic.Int64
	p := newPool(t, ts.addr, 1, ConnConfig{Dialer: countingDialer(&dials)})
	ctx := context.Background()
	c1, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, c1)
	select {
	case <-c1.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not closed by the node")
	}
	if err := c1.Err(); !errors.Is(err, io.EOF) {
		t.Errorf("Err() = %v; want io.EOF", err)
	}
	c2, err := p.Get(ctx)
	if err != nil {
		t.Fatalf("Get after the connection broke: %v", err)
	}
	if c2 == c1 {
		t.Fatal("Get returned the broken connection")
	}
	ping(t, c2)
	if c3, _ := p.Get(ctx); c3 != c2 {
		t.Error("Get redialled a healthy connection")
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials; want 2", n)
	}
}

// goroutinesIn counts the goroutines whose stack contains fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), fn)
}

func TestPoolSharesFailedDial(t *testing.T) {
	// Callers queued behind a dial that fails share its error instead of
	// each dialling (and waiting) again.
	var dials atomic.Int64
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	boom := errors.New("boom")
	p := newPool(t, "127.0.0.1:1", 1, ConnConfig{Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
		dials.Add(1)
		entered <- struct{}{}
		<-release
		return nil, boom
	}})
	const callers = 5
	errs := make(chan error, callers)
	get := func() {
		_, err := p.Get(context.Background())
		errs <- err
	}
	go get()
	<-entered
	for range callers - 1 {
		go get()
	}
	poll(t, func() bool { return goroutinesIn("(*Pool).waitLock") == callers-1 }, 5*time.Second)
	close(release)
	for range callers {
		var de *DialError
		if err := <-errs; !errors.As(err, &de) || !errors.Is(err, boom) {
			t.Errorf("Get: %v; want the shared *DialError", err)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials; want 1", n)
	}

	// A later Get tries again.
	release = make(chan struct{})
	close(release)
	go get()
	<-entered
	if err := <-errs; !errors.Is(err, boom) {
		t.Errorf("later Get: %v", err)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials; want 2", n)
	}
}

func TestPoolGetDeadline(t *testing.T) {
	entered := make(chan struct{})
	p := newPool(t, "127.0.0.1:1", 1, ConnConfig{DialTimeout: 10 * time.Second, Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	var wg sync.WaitGroup
	wg.Add(1)
	var first error
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer wg.Done()
		_, first = p.Get(ctx)
	}()
	<-entered

	// Waiting behind a hung dial ends at the deadline…
	start := time.Now()
	if _, err := p.GetDeadline(context.Background(), time.Now().Add(50*time.Millisecond)); err != ErrDeadline {
		t.Errorf("GetDeadline behind a hung dial: %v; want ErrDeadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("GetDeadline took %s", d)
	}
	// …and at Close.
	errs := make(chan error, 1)
	go func() {
		_, err := p.Get(context.Background())
		errs <- err
	}()
	poll(t, func() bool { return goroutinesIn("(*Pool).waitLock") == 1 }, 5*time.Second)
	p.Close()
	if err := <-errs; err != ErrClosed {
		t.Errorf("Get waiting at Close: %v; want ErrClosed", err)
	}
	wg.Wait() // Close ended the hung dial too (TestPoolCloseEndsADial)
	cancel()
	if !errors.Is(first, ErrClosed) {
		t.Errorf("the hung dial's Get: %v; want ErrClosed", first)
	}
}

// TestPoolCloseEndsADial: Close ends a dial in progress at once, with
// ErrClosed; before, a caller dialling a node that drops packets waited out
// the whole DialTimeout after Close.
func TestPoolCloseEndsADial(t *testing.T) {
	dialing := make(chan struct{})
	blackhole := func(ctx context.Context, network, addr string) (net.Conn, error) {
		close(dialing)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	p := newPool(t, "10.1.2.3:3001", 1, ConnConfig{DialTimeout: 10 * time.Second, Dialer: blackhole})
	errc := make(chan error, 1)
	go func() {
		_, err := p.Get(context.Background())
		errc <- err
	}()
	<-dialing
	p.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Get after Close = %v; want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end the dial in progress")
	}
}
