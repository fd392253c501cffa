package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// gateHandler is a memHandler whose restores of sid "gate" wait for the
// gate to open, counting how many wait at once.
type gateHandler struct {
	*memHandler
	gate          chan struct{}
	waiting, peak atomic.Int32
}

func newGateHandler() *gateHandler {
	return &gateHandler{memHandler: newMemHandler(), gate: make(chan struct{})}
}

func (g *gateHandler) Restore(ctx context.Context, sid string, c Consistency) ([]byte, bool, error) {
	if sid != "gate" {
		return g.memHandler.Restore(ctx, sid, c)
	}
	n := g.waiting.Add(1)
	defer g.waiting.Add(-1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	select {
	case <-g.gate:
		return []byte(`{}`), true, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// TestMaxInflightBound: one connection pipelining far more slow requests
// than MaxInflight never has more than MaxInflight of them in the handler;
// the rest wait (the server stops reading the connection), other
// connections are served meanwhile, and every request is answered once the
// handler frees up.
func TestMaxInflightBound(t *testing.T) {
	const maxInflight, total = 4, 40
	h := newGateHandler()
	ts := startServer(t, h, ServerConfig{MaxInflight: maxInflight})
	n := dialNative(t, ts.addr)
	reqs := make([]Request, total)
	for i := range reqs {
		reqs[i] = Request{ID: uint64(i + 1), Op: OpRestore, SID: "gate"}
	}
	n.send(reqs...)
	poll(t, func() bool { return h.waiting.Load() == maxInflight }, 5*time.Second)
	time.Sleep(100 * time.Millisecond) // room for an over-limit request to show up
	if got := h.peak.Load(); got != maxInflight {
		t.Fatalf("%d requests of one connection in the handler at once, the limit is %d", got, maxInflight)
	}
	// A ping behind the waiting requests is not read yet; another
	// connection is served.
	other := dialNative(t, ts.addr)
	if resp := other.call(Request{ID: 1, Op: OpSave, SID: "o", Data: []byte(`{}`)}); resp.Err != nil {
		t.Fatalf("another connection: %v", resp.Err)
	}
	close(h.gate)
	seen := map[uint64]bool{}
	for range total {
		resp := n.recv()
		if resp.Err != nil || seen[resp.ID] {
			t.Fatalf("response %+v (err %v)", resp, resp.Err)
		}
		seen[resp.ID] = true
	}
	if got := h.peak.Load(); got > maxInflight {
		t.Fatalf("peak in-flight %d, the limit is %d", got, maxInflight)
	}
	t.Logf("%d pipelined slow requests: at most %d in the handler at once (MaxInflight %d)", total, h.peak.Load(), maxInflight)
}

// TestSlowLoris opens many connections that each dribble one byte every
// 50 ms — Kado JSON requests that never end, native frames that never
// complete, and connections that never say which protocol they speak —
// on a server whose ReadTimeout is 400 ms and IdleTimeout an hour. Each is
// closed within about ReadTimeout of starting its request, while a
// well-behaved client is served throughout, and nothing is held afterwards.
func TestSlowLoris(t *testing.T) {
	const (
		readTimeout = 400 * time.Millisecond
		perKind     = 30
		drip        = 50 * time.Millisecond
	)
	ts := startServer(t, newMemHandler(), ServerConfig{
		ReadTimeout: readTimeout, IdleTimeout: time.Hour, MaxConns: 3*perKind + 8,
	})
	frame := AppendRequest(nil, &Request{ID: 1, Op: OpSave, SID: "loris", Data: []byte(`{"pad":"` + strings.Repeat("x", 200) + `"}`)})
	kinds := []struct {
		name     string
		preamble []byte // sent at once, before the dribble starts
		drip     []byte // sent a byte at a time
	}{
		{"kado", nil, []byte(`{"save":{"sid":"loris","data":{"pad":"` + strings.Repeat("x", 400) + `"}}}`)},
		{"native frame", []byte{MagicNative, VersionNative}, frame},
		// White space only: the server cannot tell which protocol this is
		// until the first non-space byte.
		{"white space", nil, []byte(strings.Repeat(" ", 400))},
	}
	type result struct {
		kind string
		held time.Duration
		sent int
		err  error
	}
	results := make(chan result, len(kinds)*perKind)
	baseGoroutines := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for _, k := range kinds {
		for range perKind {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
				if err != nil {
					results <- result{kind: k.name, err: err}
					return
				}
				defer c.Close()
				_ = c.(*net.TCPConn).SetNoDelay(true)
				if len(k.preamble) > 0 {
					if _, err := c.Write(k.preamble); err != nil {
						results <- result{kind: k.name, err: err}
						return
					}
				}
				start := time.Now()
				sent := 0
				for ; sent < len(k.drip); sent++ {
					if _, err := c.Write(k.drip[sent : sent+1]); err != nil {
						break
					}
					if closedByPeer(c, drip) {
						break
					}
				}
				results <- result{kind: k.name, held: time.Since(start), sent: sent}
			}()
		}
	}
	// Meanwhile, a good client is served, each request promptly.
	stop := make(chan struct{})
	var served atomic.Int32
	var slowest atomic.Int64
	goodDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				goodDone <- nil
				return
			default:
			}
			t0 := time.Now()
			reply, err := kadoCall(ts.addr, fmt.Sprintf(`{"save":{"sid":"good%d","data":{"i":%d}}}`, i, i))
			if err != nil || reply != `{"status":"ok"}` {
				goodDone <- fmt.Errorf("good client, request %d: %q, %v", i, reply, err)
				return
			}
			if d := int64(time.Since(t0)); d > slowest.Load() {
				slowest.Store(d)
			}
			served.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	wg.Wait()
	close(stop)
	if err := <-goodDone; err != nil {
		t.Fatal(err)
	}
	close(results)
	var maxHeld time.Duration
	perKindMax := map[string]time.Duration{}
	for r := range results {
		if r.err != nil {
			t.Fatalf("%s: %v", r.kind, r.err)
		}
		if r.sent == len(kinds[0].drip) || r.held > readTimeout+time.Second {
			t.Errorf("%s: a slow client was held %s (sent %d bytes); ReadTimeout is %s", r.kind, r.held, r.sent, readTimeout)
		}
		maxHeld = max(maxHeld, r.held)
		perKindMax[r.kind] = max(perKindMax[r.kind], r.held)
	}
	poll(t, func() bool { return ts.OpenConns() == 0 }, 5*time.Second)
	poll(t, func() bool { return runtime.NumGoroutine() <= baseGoroutines+2 }, 5*time.Second)
	if served.Load() == 0 {
		t.Fatal("the good client was never served")
	}
	t.Logf("slow loris: %d connections dribbling a byte every %s, ReadTimeout %s: each closed after at most %s (kado %s, native %s, white space %s); "+
		"a good client made %d requests meanwhile, the slowest in %s; afterwards %d connections open, %d goroutines (%d before)",
		len(kinds)*perKind, drip, readTimeout, maxHeld.Round(time.Millisecond),
		perKindMax["kado"].Round(time.Millisecond), perKindMax["native frame"].Round(time.Millisecond), perKindMax["white space"].Round(time.Millisecond),
		served.Load(), time.Duration(slowest.Load()).Round(time.Millisecond), ts.OpenConns(), runtime.NumGoroutine(), baseGoroutines)
}

// closedByPeer waits up to d for the server to close c (reading whatever it
// answered on the way) and reports whether it did.
func closedByPeer(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	var buf [512]byte
	for {
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// kadoCall makes one Kado JSON request without a *testing.T, for
// goroutines.
func kadoCall(addr, doc string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(doc)); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestSlowReader: a client that pipelines requests with large answers and
// never reads them cannot hold the server: once the socket buffers are
// full, the server's writes time out after ReadTimeout and it drops the
// connection, while other clients are served.
func TestSlowReader(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	h := newMemHandler()
	h.sessions["big"] = []byte(`{"pad":"` + strings.Repeat("x", 256<<10) + `"}`)
	ts := startServer(t, h, ServerConfig{ReadTimeout: readTimeout, MaxInflight: 8})
	c := dial(t, ts.addr)
	buf := []byte{MagicNative, VersionNative}
	for i := range 200 { // 50 MiB of answers
		buf = AppendRequest(buf, &Request{ID: uint64(i + 1), Op: OpRestore, SID: "big", Consistency: Stale})
	}
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	poll(t, func() bool { return ts.OpenConns() == 1 }, 5*time.Second)
	// The server gives up on the connection; other clients are served.
	poll(t, func() bool { return ts.OpenConns() == 0 }, 10*time.Second)
	held := time.Since(start)
	if got := kado(t, ts.addr, `{"restore":{"sid":"x"}}`); got != `{"status":"ok","result":{}}` {
		t.Fatalf("another client: %s", got)
	}
	// What the client finally reads ends early: the rest was dropped.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil && !isReset(err) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading what the server sent: %v", err)
	}
	if n >= int64(200*(256<<10)) {
		t.Fatalf("the server wrote all %d bytes to a client that did not read", n)
	}
	t.Logf("slow reader: dropped after %s (ReadTimeout %s) having been sent %d KiB of 50 MiB", held.Round(time.Millisecond), readTimeout, n>>10)
}

// TestConnectionFlood holds MaxConns connections open, then opens N ≫
// MaxConns more at once: every extra one is refused with an error in its
// own protocol, the held ones keep working, a freed slot is reused, and
// goroutines and heap come back to where they were.
func TestConnectionFlood(t *testing.T) {
	const maxConns = 64
	flood := 2000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && int(lim.Cur) < 2*flood+4*maxConns+200 {
		flood = (int(lim.Cur) - 4*maxConns - 200) / 2 // two descriptors per connection: ours and the server's
	}
	if flood < 4*maxConns {
		t.Skipf("the descriptor limit (%d) is too low for a flood", lim.Cur)
	}
	ts := startServer(t, newMemHandler(), ServerConfig{MaxConns: maxConns, ReadTimeout: 30 * time.Second})
	held := make([]*nativeConn, maxConns)
	for i := range held {
		held[i] = dialNative(t, ts.addr)
		held[i].call(Request{ID: 1, Op: OpPing})
	}
	goroutines0, heap0 := memFigures()

	var refusedKado, refusedNative, closedSilently atomic.Int32
	var peakGoroutines atomic.Int64
	errs := make(chan error, flood)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range flood {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if g := int64(runtime.NumGoroutine()); g > peakGoroutines.Load() {
				peakGoroutines.Store(g)
			}
			c, err := net.DialTimeout("tcp", ts.addr, 10*time.Second)
			if err != nil {
				errs <- fmt.Errorf("dial %d: %v", i, err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			if i%2 == 0 {
				_, _ = c.Write([]byte(`{"restore":{"sid":"x"}}`))
				_ = c.(*net.TCPConn).CloseWrite()
				reply, _ := io.ReadAll(c)
				switch {
				case strings.Contains(string(reply), "too many connections"):
					refusedKado.Add(1)
				case len(reply) == 0:
					closedSilently.Add(1)
				default:
					errs <- fmt.Errorf("an extra Kado connection was answered %q", reply)
				}
				return
			}
			_, _ = c.Write(append([]byte{MagicNative, VersionNative}, AppendRequest(nil, &Request{ID: 7, Op: OpPing})...))
			frame, err := ReadFrame(newReader(c), nil, DefaultMaxFrame)
			if err != nil {
				closedSilently.Add(1)
				return
			}
			resp, err := DecodeResponse(frame, OpPing)
			if err != nil || resp.Err == nil || resp.Err.Code != CodeOverloaded {
				errs <- fmt.Errorf("an extra native connection was answered %+v (%v)", resp, err)
				return
			}
			refusedNative.Add(1)
		}()
	}
	// While the flood runs, the held connections are served.
	for i, n := range held[:8] {
		if resp := n.call(Request{ID: 2, Op: OpSave, SID: fmt.Sprint("h", i), Data: []byte(`{}`)}); resp.Err != nil {
			t.Fatalf("a held connection during the flood: %v", resp.Err)
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := ts.OpenConns(); got > maxConns {
		t.Fatalf("%d connections open, the limit is %d", got, maxConns)
	}
	if refused := refusedKado.Load() + refusedNative.Load(); refused < int32(flood)*9/10 {
		t.Errorf("only %d of %d extra connections were refused with an error (%d closed without one)", refused, flood, closedSilently.Load())
	}
	_, heapPeak := memFigures()
	for i, n := range held {
		n.call(Request{ID: 3, Op: OpPing}) // all still alive
		if i == 0 {
			n.c.Close()
		}
	}
	// The freed slot serves a new client.
	poll(t, func() bool {
		reply, err := kadoCall(ts.addr, `{"restore":{"sid":"h0"}}`)
		return err == nil && reply == `{"status":"ok","result":{}}`
	}, 5*time.Second)
	// The refusing goroutines are gone and the heap is back.
	var goroutines1 int
	var heap1 uint64
	poll(t, func() bool {
		goroutines1, heap1 = memFigures()
		return goroutines1 <= goroutines0+4
	}, 10*time.Second)
	if heap1 > heap0+16<<20 {
		t.Errorf("heap grew from %d KiB to %d KiB after the flood", heap0>>10, heap1>>10)
	}
	t.Logf("connection flood: MaxConns %d held, %d more opened in %s: %d refused with a Kado error, %d with a native CodeOverloaded, %d closed without a reply; "+
		"open connections never over %d; goroutines %d before, peak seen %d, %d after; heap in use %d KiB before, %d KiB at the end of the flood, %d KiB after",
		maxConns, flood, elapsed.Round(time.Millisecond), refusedKado.Load(), refusedNative.Load(), closedSilently.Load(),
		maxConns, goroutines0, peakGoroutines.Load(), goroutines1, heap0>>10, heapPeak>>10, heap1>>10)
}

// memFigures returns the goroutine count and the heap in use after a GC.
func memFigures() (int, uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse
}

// countingHandler is a memHandler that counts restores served.
type countingHandler struct {
	*memHandler
	restores atomic.Int64
}

func (h *countingHandler) Restore(ctx context.Context, sid string, c Consistency) ([]byte, bool, error) {
	h.restores.Add(1)
	return h.memHandler.Restore(ctx, sid, c)
}

// TestPipelinerThatDoesNotRead: a client that pipelines restores of a large
// session and reads no answers stops being served once a bounded amount of
// answers waits for it; it is not answered as fast as the node can copy
// until the write deadline gives up on it (one such connection buffered
// 1.3 GB of a 1 MB session's copies). When it reads, every request is
// answered, in full.
func TestPipelinerThatDoesNotRead(t *testing.T) {
	const total, size = 400, 256 << 10
	h, ts := bigSessionServer(t, size, ServerConfig{ReadTimeout: 20 * time.Second, MaxInflight: 8})
	n := dialNative(t, ts.addr)
	_ = n.c.SetDeadline(time.Now().Add(2 * time.Minute))
	reqs := make([]Request, total)
	for i := range reqs {
		reqs[i] = Request{ID: uint64(i + 1), Op: OpRestore, SID: "big", Consistency: Stale}
	}
	n.sendAsync(reqs...)
	time.Sleep(2 * time.Second)
	// What the kernel's socket buffers hold, a bounded queue and what is
	// in flight: a few dozen answers, not all of them.
	if served := h.restores.Load(); served > total/5 {
		t.Fatalf("%d of %d restores served (%d MiB of answers) to a client that read none", served, total, served*size>>20)
	}
	t.Logf("restores served before the client read: %d of %d", h.restores.Load(), total)
	for range total {
		resp := n.recv()
		if resp.Err != nil || len(resp.Data) < size {
			t.Fatalf("response %d: %v, %d bytes", resp.ID, resp.Err, len(resp.Data))
		}
	}
}

// TestPipelinerDroppedServesNoMore: once the write to a client that reads
// nothing fails, the requests still in the connection's read buffer are
// not served: a 64 KiB buffer holds 1400 restores, whose answers went to a
// queue nobody would read (four such connections to a node holding a 1 MB
// session took it to 2 GB after their writes had failed).
func TestPipelinerDroppedServesNoMore(t *testing.T) {
	const total, size = 5000, 256 << 10
	h, ts := bigSessionServer(t, size, ServerConfig{ReadTimeout: 300 * time.Millisecond, MaxInflight: 8})
	c := dial(t, ts.addr)
	buf := []byte{MagicNative, VersionNative}
	for i := range total {
		buf = AppendRequest(buf, &Request{ID: uint64(i + 1), Op: OpRestore, SID: "big", Consistency: Stale})
	}
	go func() { _, _ = c.Write(buf) }()
	poll(t, func() bool { return ts.OpenConns() == 1 }, 5*time.Second)
	poll(t, func() bool { return ts.OpenConns() == 0 }, 10*time.Second)
	served := h.restores.Load()
	if served > total/10 {
		t.Fatalf("%d of %d restores served to a client that read none", served, total)
	}
	t.Logf("restores served to a client that read none: %d of %d", served, total)
}
