package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/middleware"
)

// findChromium returns the system Chromium (Debian's package), or fails the
// test: CI installs it, so a missing browser is a broken machine, not a
// reason to skip. CHROMIUM=/path overrides the search.
func findChromium(t *testing.T) string {
	t.Helper()
	const install = "install it with `apt-get update && apt-get install -y chromium` (Debian's package; .ci/run installs it when missing)"
	if p := os.Getenv("CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("CHROMIUM=%s: %v; unset it to use the system Chromium, or %s", p, err, install)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed: the browser test drives the system Chromium; " + install + ", or set CHROMIUM=/path/to/chromium")
	return ""
}

// faultNet routes every connection of the test cluster (node to node and
// client to node) through dialers it can cut: crash(addr) drops every
// connection to or from a node and refuses new ones, which is how a
// kill -9'd process looks to its peers and clients (no leadership
// transfer, no goodbye).
type faultNet struct {
	mu    sync.Mutex
	dead  map[string]bool
	conns map[*faultConn]struct{}
}

type faultConn struct {
	net.Conn
	from *string // the dialing node's address ("" for the client), read under faultNet.mu
	to   string
	fn   *faultNet
}

func (c *faultConn) Close() error {
	c.fn.mu.Lock()
	delete(c.fn.conns, c)
	c.fn.mu.Unlock()
	return c.Conn.Close()
}

func newFaultNet() *faultNet {
	return &faultNet{dead: map[string]bool{}, conns: map[*faultConn]struct{}{}}
}

// dialer returns a Dialer for a node whose address will be *from once known
// (or for the client, with from pointing at "").
func (f *faultNet) dialer(from *string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.mu.Lock()
		down := f.dead[addr] || f.dead[*from]
		f.mu.Unlock()
		if down {
			return nil, fmt.Errorf("dial %s: connection refused (node crashed)", addr)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		fc := &faultConn{Conn: c, from: from, to: addr, fn: f}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.dead[addr] || f.dead[*from] {
			c.Close()
			return nil, fmt.Errorf("dial %s: connection refused (node crashed)", addr)
		}
		f.conns[fc] = struct{}{}
		return fc, nil
	}
}

// crash cuts node addr off: every connection to or from it is closed and
// new ones are refused.
func (f *faultNet) crash(addr string) {
	f.mu.Lock()
	f.dead[addr] = true
	var cut []*faultConn
	for c := range f.conns {
		if c.to == addr || *c.from == addr {
			cut = append(cut, c)
			delete(f.conns, c)
		}
	}
	f.mu.Unlock()
	for _, c := range cut {
		c.Conn.Close()
	}
}

// testNodes is a three-node cluster in this process: real raft over real
// loopback TCP, through a faultNet.
type testNodes struct {
	nodes []*cluster.Node
	addrs []*string
	net   *faultNet
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startNodes(t *testing.T, n int) *testNodes {
	t.Helper()
	tn := &testNodes{net: newFaultNet(), logs: &syncBuffer{}}
	logger := hclog.New(&hclog.LoggerOptions{Name: "cluster", Level: hclog.Info, Output: tn.logs})
	t.Cleanup(func() {
		for _, nd := range tn.nodes {
			if nd != nil {
				nd.Close()
			}
		}
		if t.Failed() {
			t.Logf("cluster log:\n%s", tn.logs.String())
		}
	})
	for i := 0; i < n; i++ {
		self := new(string)
		cfg := cluster.Config{
			ID:      fmt.Sprintf("n%d", i+1),
			Listen:  "127.0.0.1:0",
			DataDir: t.TempDir(),
			Logger:  logger.Named(fmt.Sprintf("n%d", i+1)),
			Dialer:  tn.net.dialer(self),
		}
		if i > 0 {
			cfg.Join = []string{tn.nodes[0].Addr()}
		}
		nd, err := cluster.Open(cfg)
		if err != nil {
			t.Fatalf("open node n%d: %v", i+1, err)
		}
		tn.net.mu.Lock()
		*self = nd.Addr()
		tn.net.mu.Unlock()
		tn.nodes = append(tn.nodes, nd)
		tn.addrs = append(tn.addrs, self)
	}
	tn.waitStable(t, n, 20*time.Second)
	return tn
}

// leader returns the index of the running node that leads, or -1.
func (tn *testNodes) leader() int {
	for i, nd := range tn.nodes {
		if nd != nil && nd.Ready() && nd.Raft().State() == raft.Leader {
			return i
		}
	}
	return -1
}

// waitStable waits until every running node is ready, one leads, and its
// configuration holds voters voters.
func (tn *testNodes) waitStable(t *testing.T, voters int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if l := tn.leader(); l >= 0 {
			ready := true
			for _, nd := range tn.nodes {
				if nd != nil && !nd.Ready() {
					ready = false
				}
			}
			f := tn.nodes[l].Raft().GetConfiguration()
			if ready && f.Error() == nil && len(f.Configuration().Servers) == voters {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not stable (all ready, a leader, %d voters) within %s", voters, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// crash makes node i vanish as if killed, then releases its resources.
func (tn *testNodes) crash(i int) {
	tn.net.crash(tn.nodes[i].Addr())
	nd := tn.nodes[i]
	tn.nodes[i] = nil
	nd.Close() // isolated: its leadership transfer cannot reach anyone
}

func (tn *testNodes) clientAddrs() []string {
	var out []string
	for _, nd := range tn.nodes {
		if nd != nil {
			out = append(out, nd.Addr())
		}
	}
	return out
}

// step runs browser actions bounded by d (ctx must have run once: a
// timeout on the first run would bound the browser's life), and on failure
// reports what the page showed.
func step(t *testing.T, ctx context.Context, name string, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		loc, _ := chromedp.Run(dctx, chromedp.Location())
		text, _ := chromedp.Run(dctx, chromedp.Text(chromedp.CSS("body")))
		dcancel()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("not done within %s: %w", d, err)
		}
		t.Fatalf("%s: %v\npage %s shows:\n%s", name, err, loc, text)
	}
}

// value runs one action that returns a value, bounded by d.
func value[T any](t *testing.T, ctx context.Context, name string, d time.Duration, a chromedp.Action[T]) T {
	t.Helper()
	var v T
	step(t, ctx, name, d, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		var err error
		v, err = a(ctx, tg)
		return chromedp.Void{}, err
	})
	return v
}

func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return strings.TrimSpace(value(t, ctx, "read "+sel, 10*time.Second, chromedp.Text(chromedp.CSS(sel))))
}

// browserCookies returns the browser's cookies for url.
func browserCookies(t *testing.T, ctx context.Context, url string) []*network.Cookie {
	t.Helper()
	return value(t, ctx, "read cookies", 10*time.Second, func(ctx context.Context, tg *chromedp.Target) ([]*network.Cookie, error) {
		res, err := cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
		return res.Cookies, err
	})
}

// shot saves a screenshot of the page when DEMO_SCREENSHOT names a file
// (/tmp/demo.png); suffix goes before the extension.
func shot(t *testing.T, ctx context.Context, suffix string) {
	t.Helper()
	path := os.Getenv("DEMO_SCREENSHOT")
	if path == "" {
		return
	}
	ext := filepath.Ext(path)
	path = strings.TrimSuffix(path, ext) + suffix + ext
	png := value(t, ctx, "screenshot", 20*time.Second, chromedp.FullScreenshot(100))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot in %s", path)
}

// TestBrowserFlowAcrossLeaderCrash drives the demo in headless Chromium
// against a real three-node cluster: sign in, increment, crash the raft
// leader, increment again (the client fails over), check the session
// cookie's attributes, list the user's sessions, sign out; then sign in
// again and revoke every session of the user.
//
// DEMO_SCREENSHOT=/tmp/demo.png saves screenshots of the home page there
// (and of the sessions page and the page after revoking, as
// /tmp/demo-sessions.png and /tmp/demo-revoked.png).
func TestBrowserFlowAcrossLeaderCrash(t *testing.T) {
	chromium := findChromium(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	tn := startNodes(t, 3)
	t.Logf("cluster of 3 ready in %s", time.Since(start).Round(time.Millisecond))
	cfgAddrs := tn.clientAddrs()
	cl, err := client.New(client.Config{Addrs: cfgAddrs, MaxRetries: clientRetries, Dialer: tn.net.dialer(new(string))})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var _ middleware.UserStore = cl
	var appLog syncBuffer
	srv := httptest.NewServer(newHandler(cl, log.New(&appLog, "demo: ", log.Lmicroseconds)))
	defer srv.Close()
	defer func() {
		if t.Failed() {
			t.Logf("app log:\n%s", appLog.String())
		}
	}()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox, // tests run as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(900, 700),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	var browserLog syncBuffer
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithErrorf(log.New(&browserLog, "", 0).Printf))
	defer bcancel()
	browserStart := time.Now()
	// The first run starts the browser; it must not carry a timeout of its
	// own (that would bound the browser's life), but ctx bounds it.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start Chromium (%s): %v", chromium, err)
	}
	t.Logf("Chromium started in %s", time.Since(browserStart).Round(time.Millisecond))

	// Sign in.
	step(t, bctx, "open the sign-in page", 20*time.Second,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
	)
	step(t, bctx, "sign in as alice", 20*time.Second,
		chromedp.SendKeys(chromedp.CSS("#username"), "alice"),
		chromedp.Click(chromedp.CSS("#sign-in")),
		chromedp.WaitVisible(chromedp.CSS("#signed-in")),
	)
	if got := textOf(t, bctx, "#signed-in p"); got != "Signed in as alice" {
		t.Fatalf("home says %q, want %q", got, "Signed in as alice")
	}
	if got := textOf(t, bctx, "#counter"); got != "0" {
		t.Fatalf("counter after sign-in = %q, want 0", got)
	}

	// Increment.
	step(t, bctx, "increment to 1", 20*time.Second,
		chromedp.Click(chromedp.CSS("#increment")),
		chromedp.WaitVisible(chromedp.CSS(`#counter[data-value="1"]`)),
	)
	if got := textOf(t, bctx, "#counter"); got != "1" {
		t.Fatalf("counter = %q, want 1", got)
	}

	// Crash the leader, then increment at once: the request rides out the
	// election through the client's retries.
	l := tn.leader()
	if l < 0 {
		t.Fatal("no leader before the crash")
	}
	crashed := tn.nodes[l].ID()
	crashAt := time.Now()
	tn.crash(l)
	t.Logf("crashed leader %s", crashed)
	step(t, bctx, "increment to 2 after the leader crashed", 30*time.Second,
		chromedp.Click(chromedp.CSS("#increment")),
		chromedp.WaitVisible(chromedp.CSS(`#counter[data-value="2"]`)),
	)
	t.Logf("increment after the crash answered %s after it", time.Since(crashAt).Round(time.Millisecond))
	if got := textOf(t, bctx, "#counter"); got != "2" {
		t.Fatalf("counter after failover = %q, want 2", got)
	}
	if got := textOf(t, bctx, "#user"); got != "alice" {
		t.Fatalf("user after failover = %q, want alice", got)
	}
	if nl := tn.waitStable(t, 3, 15*time.Second); tn.nodes[nl].ID() == crashed {
		t.Fatalf("the crashed node %s still leads", crashed)
	} else {
		t.Logf("new leader %s", tn.nodes[nl].ID())
	}

	shot(t, bctx, "")

	// The session cookie: HttpOnly (invisible to scripts) and SameSite=Lax.
	cookies := browserCookies(t, bctx, srv.URL)
	docCookie := value(t, bctx, "read document.cookie", 10*time.Second, chromedp.Evaluate[string](`document.cookie`))
	var sc *network.Cookie
	for _, c := range cookies {
		if c.Name == middleware.DefaultCookieName {
			sc = c
		}
	}
	switch {
	case sc == nil:
		t.Fatalf("no %q cookie in the browser (have %d cookies)", middleware.DefaultCookieName, len(cookies))
	case !sc.HTTPOnly:
		t.Fatal("the session cookie is not HttpOnly")
	case sc.SameSite != network.CookieSameSiteLax:
		t.Fatalf("the session cookie's SameSite = %q, want Lax", sc.SameSite)
	case sc.Path != "/":
		t.Fatalf("the session cookie's Path = %q, want /", sc.Path)
	case !sc.Session:
		t.Fatal("the session cookie is persistent, want a browser-session cookie")
	case strings.Contains(docCookie, middleware.DefaultCookieName+"="):
		t.Fatalf("document.cookie shows the session cookie: %q", docCookie)
	}

	// The user's sessions, listed through the surviving nodes: this one
	// and alice's sign-in from another user agent.
	other := newBrowser(t, srv.URL)
	if code, body := other.do("POST", "/login", url.Values{"username": {"alice"}}); code != 200 || !strings.Contains(body, "Signed in as") {
		t.Fatalf("second sign-in of alice = %d:\n%s", code, body)
	}
	step(t, bctx, "open the sessions page", 20*time.Second,
		chromedp.Click(chromedp.CSS("#sessions-link")),
		chromedp.WaitVisible(chromedp.CSS("#sessions")),
	)
	shot(t, bctx, "-sessions")
	if got := textOf(t, bctx, "#session-count"); got != "2" {
		t.Fatalf("sessions of alice = %s, want 2", got)
	}
	if got := textOf(t, bctx, "#sessions li"); !strings.HasPrefix(got, sc.Value[:8]) || !strings.Contains(got, "(this session)") {
		t.Fatalf("sessions list starts with %q, want this session %s… marked", got, sc.Value[:8])
	}
	step(t, bctx, "back home", 20*time.Second,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#counter[data-value="2"]`)),
	)

	// Sign out: back to the sign-in page, cookie gone, session gone.
	step(t, bctx, "sign out", 20*time.Second,
		chromedp.Click(chromedp.CSS("#sign-out")),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
	)
	if got := textOf(t, bctx, "#flash"); got != flashes["signed-out"] {
		t.Fatalf("after sign-out the page says %q", got)
	}
	for _, c := range browserCookies(t, bctx, srv.URL) {
		if c.Name == middleware.DefaultCookieName {
			t.Fatalf("the session cookie survived sign-out")
		}
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if _, ok, err := cl.Restore(rctx, sc.Value); err != nil || ok {
		t.Fatalf("the signed-out session: found=%v err=%v, want gone", ok, err)
	}

	// Revoke all: sign in again, revoke, and both of alice's sessions end.
	step(t, bctx, "sign in again", 20*time.Second,
		chromedp.SendKeys(chromedp.CSS("#username"), "alice"),
		chromedp.Click(chromedp.CSS("#sign-in")),
		chromedp.WaitVisible(chromedp.CSS(`#counter[data-value="0"]`)),
		chromedp.Navigate(srv.URL+"/sessions"),
		chromedp.WaitVisible(chromedp.CSS("#sessions")),
	)
	if got := textOf(t, bctx, "#session-count"); got != "2" {
		t.Fatalf("sessions of alice after signing in again = %s, want 2", got)
	}
	step(t, bctx, "revoke all", 20*time.Second,
		chromedp.Click(chromedp.CSS("#revoke-all")),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
	)
	shot(t, bctx, "-revoked")
	if got := textOf(t, bctx, "#flash"); got != flashes["revoked"] {
		t.Fatalf("after revoke the page says %q", got)
	}
	if _, body := other.do("GET", "/", nil); !strings.Contains(body, `id="login-form"`) {
		t.Fatalf("alice's other session survived the revoke:\n%s", body)
	}
	uctx, ucancel := context.WithTimeout(ctx, 10*time.Second)
	defer ucancel()
	ids, err := cl.UserSessions(uctx, "alice")
	if err != nil || len(ids) != 0 {
		t.Fatalf("alice's sessions after revoke: %v (err %v), want none", ids, err)
	}

	if s := browserLog.String(); s != "" {
		t.Logf("chromedp errors (informational):\n%s", s)
	}
	t.Logf("browser test done in %s", time.Since(start).Round(time.Millisecond))
}
