package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/transport"
)

// abuseNative is a bare native-protocol connection for these tests.
type abuseNative struct {
	c net.Conn
	r *bufio.Reader
}

func abuseDialNative(t *testing.T, addr string) *abuseNative {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{transport.MagicNative, transport.VersionNative}); err != nil {
		t.Fatal(err)
	}
	return &abuseNative{c: c, r: bufio.NewReader(c)}
}

func (a *abuseNative) call(t *testing.T, req transport.Request) transport.Response {
	t.Helper()
	if _, err := a.c.Write(transport.AppendRequest(nil, &req)); err != nil {
		t.Fatal(err)
	}
	frame, err := transport.ReadFrame(a.r, nil, transport.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := transport.DecodeResponse(frame, req.Op)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestAbuseSessionLimitsOverTCP: the session size and key-count limits
// hold against requests arriving over the node's port, in both protocols,
// and a refused request leaves the stored session as it was.
func TestAbuseSessionLimitsOverTCP(t *testing.T) {
	n := startNode(t, Config{MaxSessionSize: 256, MaxKeys: 4})
	addr := n.Addr()
	if got := kadoRequest(t, addr, []byte(`{"save":{"sid":"lim","data":{"a":1}}}`)); got != `{"status":"ok"}` {
		t.Fatalf("a small save: %s", got)
	}
	big := strings.Repeat("z", 300)
	for _, tc := range []struct{ name, req, want string }{
		{"kado save over the size", `{"save":{"sid":"lim","data":{"big":"` + big + `"}}}`, "256"},
		{"kado save over the keys", `{"save":{"sid":"lim","data":{"a":1,"b":2,"c":3,"d":4,"e":5}}}`, "limit is 4"},
	} {
		got := kadoRequest(t, addr, []byte(tc.req))
		if !strings.Contains(got, `"status":"error"`) || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %s, want an error naming the limit %q", tc.name, got, tc.want)
		}
	}
	nc := abuseDialNative(t, addr)
	for i, tc := range []struct {
		name string
		req  transport.Request
	}{
		{"native save over the size", transport.Request{Op: transport.OpSave, SID: "lim", Data: []byte(`{"big":"` + big + `"}`)}},
		{"native patch growing over the size", transport.Request{Op: transport.OpPatch, SID: "lim", Set: []transport.KV{{Key: "big", Value: []byte(`"` + big + `"`)}}}},
		{"native patch growing over the keys", transport.Request{Op: transport.OpPatch, SID: "lim", Set: []transport.KV{
			{Key: "b", Value: []byte(`1`)}, {Key: "c", Value: []byte(`1`)}, {Key: "d", Value: []byte(`1`)}, {Key: "e", Value: []byte(`1`)}}}},
	} {
		tc.req.ID = uint64(i + 1)
		resp := nc.call(t, tc.req)
		if resp.Err == nil || resp.Err.Code != transport.CodeTooLarge {
			t.Errorf("%s: %+v (err %v), want CodeTooLarge", tc.name, resp, resp.Err)
		}
	}
	// Many small patches: each within the limit until the keys run out.
	for i := range 6 {
		resp := nc.call(t, transport.Request{ID: uint64(10 + i), Op: transport.OpPatch, SID: "grow", Set: []transport.KV{{Key: fmt.Sprint("k", i), Value: []byte(`1`)}}})
		if ok := resp.Err == nil; ok != (i < 4) {
			t.Errorf("patch %d adding key %d of at most 4: err %v", i, i+1, resp.Err)
		}
	}
	if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"lim"}}`)); got != `{"status":"ok","result":{"a":1}}` {
		t.Fatalf("after refused writes the session is %s", got)
	}
}

// TestAbuseSlowLorisAndFloodNode runs both attacks against a real node at
// once: connections that dribble a byte at a time, and a flood of extra
// connections over MaxConns. Slow clients are dropped within ReadTimeout,
// extra connections are refused with an error, and the node keeps
// committing writes through raft and answering a well-behaved client.
func TestAbuseSlowLorisAndFloodNode(t *testing.T) {
	const (
		readTimeout = 400 * time.Millisecond
		maxConns    = 32
		loris       = 24
		flood       = 600
	)
	n := startNode(t, Config{Server: transport.ServerConfig{ReadTimeout: readTimeout, MaxConns: maxConns, IdleTimeout: time.Hour}})
	addr := n.Addr()
	g0, heap0 := abuseMem()

	var wg sync.WaitGroup
	var maxHeld atomic.Int64
	errs := make(chan error, loris+flood)
	for i := range loris {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			drip := []byte(`{"save":{"sid":"loris","data":{"pad":"` + strings.Repeat("x", 200) + `"}}}`)
			if i%2 == 1 {
				_, _ = c.Write([]byte{transport.MagicNative, transport.VersionNative})
				drip = transport.AppendRequest(nil, &transport.Request{ID: 1, Op: transport.OpSave, SID: "loris", Data: drip[30:]})
			}
			start := time.Now()
			for _, b := range drip {
				if _, err := c.Write([]byte{b}); err != nil {
					break
				}
				if abuseClosed(c, 50*time.Millisecond) {
					break
				}
			}
			held := time.Since(start)
			if held > readTimeout+time.Second {
				errs <- fmt.Errorf("slow client %d held for %s", i, held)
			}
			for h := maxHeld.Load(); int64(held) > h && !maxHeld.CompareAndSwap(h, int64(held)); h = maxHeld.Load() {
			}
		}()
	}
	var refused, served, silent atomic.Int32
	sem := make(chan struct{}, 32)
	for range flood {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write([]byte(`{"restore":{"sid":"x"}}`))
			_ = c.(*net.TCPConn).CloseWrite()
			reply, _ := io.ReadAll(c)
			switch {
			case strings.Contains(string(reply), "too many connections"):
				refused.Add(1)
			case string(reply) == `{"status":"ok","result":{}}`: // got a slot freed by a dropped slow client
				served.Add(1)
			case len(reply) == 0:
				silent.Add(1)
			default:
				errs <- fmt.Errorf("flood reply %q", reply)
			}
		}()
	}
	// Meanwhile raft keeps committing.
	ctx := context.Background()
	for i := range 20 {
		if err := n.Save(ctx, fmt.Sprint("during", i), []byte(`{"i":1}`)); err != nil {
			t.Fatalf("a write during the attack: %v", err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every extra connection was told why, or served once a slot was free.
	if refused.Load() == 0 || silent.Load() > flood/20 {
		t.Errorf("of %d flood connections %d were refused with an error, %d served, %d closed without a word", flood, refused.Load(), served.Load(), silent.Load())
	}
	// Served afterwards, and nothing held.
	poll(t, func() bool {
		return kadoRequest(t, addr, []byte(`{"restore":{"sid":"during19"}}`)) == `{"status":"ok","result":{"i":1}}`
	}, 5*time.Second, "a request served after the attack")
	var g1 int
	var heap1 uint64
	poll(t, func() bool { g1, heap1 = abuseMem(); return g1 <= g0+4 }, 10*time.Second, "goroutines back to their count before the attack")
	if heap1 > heap0+16<<20 {
		t.Errorf("heap grew from %d KiB to %d KiB", heap0>>10, heap1>>10)
	}
	t.Logf("node under attack: %d slow clients dropped after at most %s (ReadTimeout %s); %d extra connections over MaxConns %d: %d refused with an error, %d served once a slot was free, %d closed silently; "+
		"goroutines %d before, %d after; heap in use %d KiB before, %d KiB after",
		loris, time.Duration(maxHeld.Load()).Round(time.Millisecond), readTimeout, flood, maxConns, refused.Load(), served.Load(), silent.Load(), g0, g1, heap0>>10, heap1>>10)
}

// abuseClosed waits up to d for the node to close c and reports whether it
// did.
func abuseClosed(c net.Conn, d time.Duration) bool {
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

func abuseMem() (int, uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse
}

// The frame limit follows the session size: a session just under
// MaxSessionSize is saved through either protocol (with both at 1 MiB it
// was refused as a frame too large), one over it is refused by the size
// limit, and an explicit frame too small for the session size is refused
// at start.
func TestFrameLimitFollowsSessionSize(t *testing.T) {
	for _, size := range []int{0, 2 << 20} {
		n := startNode(t, Config{MaxSessionSize: size})
		limit := size
		if limit == 0 {
			limit = transport.DefaultMaxFrame
		}
		under := `{"x":"` + strings.Repeat("a", limit-16) + `"}`
		if got := kadoRequest(t, n.Addr(), []byte(`{"save":{"sid":"under","data":`+under+`}}`)); got != `{"status":"ok"}` {
			t.Fatalf("session size %d: a Kado save of a %d-byte session: %.200s", limit, len(under), got)
		}
		nc := abuseDialNative(t, n.Addr())
		if resp := nc.call(t, transport.Request{ID: 1, Op: transport.OpSave, SID: "under2", Data: []byte(under)}); resp.Err != nil {
			t.Fatalf("session size %d: a native save of a %d-byte session: %v", limit, len(under), resp.Err)
		}
		over := `{"x":"` + strings.Repeat("a", limit) + `"}`
		resp := nc.call(t, transport.Request{ID: 2, Op: transport.OpSave, SID: "over", Data: []byte(over)})
		if resp.Err == nil || resp.Err.Code != transport.CodeTooLarge || !strings.Contains(resp.Err.Message, "session") {
			t.Fatalf("session size %d: a save of %d bytes: %v, want the session size limit's refusal", limit, len(over), resp.Err)
		}
		n.Close()
	}
	_, err := Open(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: testLogger(),
		MaxSessionSize: 2 << 20, Server: transport.ServerConfig{MaxFrame: 1 << 20}})
	if err == nil || !strings.Contains(err.Error(), "raise --max-frame") {
		t.Fatalf("open with a frame smaller than the session size: %v", err)
	}
}

// One oversized request does not fail the others sharing its connection: a
// Go client's pool carries many users' requests, and the node used to close
// the connection under all of them.
func TestOversizedRequestSparesItsConnection(t *testing.T) {
	n := startNode(t, Config{MaxSessionSize: 4096, Server: transport.ServerConfig{MaxFrame: 16 << 10}})
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}, PoolSize: 1, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if err := c.Save(ctx, fmt.Sprintf("small-%d-%d", g, i), map[string]json.RawMessage{"i": json.RawMessage(fmt.Sprint(i))}); err != nil {
					failed.Add(1)
					t.Errorf("a small save beside the oversized ones: %v", err)
					return
				}
			}
		}()
	}
	for range 5 {
		big := map[string]json.RawMessage{"x": json.RawMessage(`"` + strings.Repeat("a", 40<<10) + `"`)}
		if err := c.Save(ctx, "big", big); !errors.Is(err, client.ErrTooLarge) {
			t.Errorf("an oversized save: %v, want ErrTooLarge", err)
		}
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d small saves failed beside the oversized ones", failed.Load())
	}
}
