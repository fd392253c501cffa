package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/middleware"
)

// browser is a cookie-keeping HTTP client for one "user agent".
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, base: base, c: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
}

func (b *browser) do(method, path string, form url.Values) (int, string) {
	b.t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodGet {
		resp, err = b.c.Get(b.base + path)
	} else {
		resp, err = b.c.PostForm(b.base+path, form)
	}
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, string(body)
}

func (b *browser) sessionCookie() *http.Cookie {
	u, _ := url.Parse(b.base)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == middleware.DefaultCookieName {
			return c
		}
	}
	return nil
}

func mustContain(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Fatalf("%s: page lacks %q:\n%s", what, w, body)
		}
	}
}

func newMemoryApp(t *testing.T) (*httptest.Server, *middleware.MemoryStore) {
	t.Helper()
	store := middleware.NewMemoryStore(middleware.MemoryOptions{})
	srv := httptest.NewServer(newHandler(store, log.New(io.Discard, "", 0)))
	t.Cleanup(func() { srv.Close(); store.Close() })
	return srv, store
}

func TestAppFlowInMemory(t *testing.T) {
	srv, store := newMemoryApp(t)
	alice := newBrowser(t, srv.URL)

	code, body := alice.do("GET", "/", nil)
	if code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	mustContain(t, "sign-in page", body, `id="login-form"`)
	if alice.sessionCookie() != nil {
		t.Fatal("an anonymous visit set a session cookie")
	}

	code, body = alice.do("POST", "/login", url.Values{"username": {"  alice  "}})
	if code != 200 {
		t.Fatalf("POST /login = %d: %s", code, body)
	}
	mustContain(t, "home", body, `Signed in as <strong id="user">alice</strong>`, `data-value="0"`)
	first := alice.sessionCookie()
	if first == nil {
		t.Fatal("no session cookie after sign-in")
	}

	for want := 1; want <= 3; want++ {
		_, body = alice.do("POST", "/increment", nil)
		mustContain(t, "home after increment", body, `data-value="`+string(rune('0'+want))+`"`)
	}

	// A second sign-in of alice elsewhere: the sessions page lists both.
	other := newBrowser(t, srv.URL)
	other.do("POST", "/login", url.Values{"username": {"alice"}})
	bob := newBrowser(t, srv.URL)
	bob.do("POST", "/login", url.Values{"username": {"bob"}})

	_, body = alice.do("GET", "/sessions", nil)
	mustContain(t, "sessions", body, `<span id="session-count">2</span>`, "(this session)", first.Value[:8]+"…")
	if strings.Contains(body, first.Value) {
		t.Fatal("the sessions page shows a whole session id")
	}

	_, body = alice.do("POST", "/sessions/revoke", nil)
	mustContain(t, "after revoke", body, `id="login-form"`, "revoked")
	if alice.sessionCookie() != nil {
		t.Fatal("revoke left the cookie in the browser")
	}
	_, body = other.do("GET", "/", nil)
	mustContain(t, "the other alice session after revoke", body, `id="login-form"`)
	_, body = other.do("POST", "/increment", nil)
	mustContain(t, "increment without a session", body, `id="login-form"`, "Your session ended")
	_, body = bob.do("GET", "/", nil)
	mustContain(t, "bob after alice's revoke", body, "Signed in as")

	_, body = bob.do("POST", "/logout", nil)
	mustContain(t, "after sign-out", body, `id="login-form"`, "You are signed out.")
	if bob.sessionCookie() != nil {
		t.Fatal("sign-out left the cookie in the browser")
	}
	if n := store.Len(); n != 0 {
		t.Fatalf("store holds %d sessions after everyone left, want 0", n)
	}
}

func TestLoginRegeneratesAndValidates(t *testing.T) {
	srv, _ := newMemoryApp(t)
	b := newBrowser(t, srv.URL)
	for _, bad := range []string{"", "   ", strings.Repeat("x", maxUsername+1), "a\x00b"} {
		code, body := b.do("POST", "/login", url.Values{"username": {bad}})
		if code != http.StatusBadRequest {
			t.Fatalf("login %q = %d, want 400", bad, code)
		}
		mustContain(t, "bad login", body, `id="error"`)
	}
	b.do("POST", "/login", url.Values{"username": {"<script>x</script>"}})
	_, body := b.do("POST", "/increment", nil)
	mustContain(t, "escaped name", body, "&lt;script&gt;x&lt;/script&gt;", `data-value="1"`)
	before := b.sessionCookie().Value
	_, body = b.do("POST", "/login", url.Values{"username": {"carol"}})
	mustContain(t, "second login", body, "carol", `data-value="0"`)
	if after := b.sessionCookie().Value; after == before {
		t.Fatal("sign-in kept the session id (want a new one: session fixation)")
	}
}

func TestPagesNeedASignedInSession(t *testing.T) {
	srv, _ := newMemoryApp(t)
	b := newBrowser(t, srv.URL)
	for _, p := range []struct{ method, path string }{{"GET", "/sessions"}, {"POST", "/increment"}, {"POST", "/sessions/revoke"}} {
		code, body := b.do(p.method, p.path, nil)
		if code != 200 || !strings.Contains(body, `id="login-form"`) {
			t.Fatalf("%s %s signed out = %d, want the sign-in page:\n%s", p.method, p.path, code, body)
		}
	}
	if code, _ := b.do("GET", "/nope", nil); code != 404 {
		t.Fatalf("GET /nope = %d, want 404", code)
	}
	if code, _ := b.do("GET", "/logout", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /logout = %d, want 405 (sign-out is a POST)", code)
	}
}

func TestRunFlags(t *testing.T) {
	var out strings.Builder
	if err := run([]string{"--help"}, &out); err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"-listen", "-cluster", "-memory", defaultCluster} {
		if !strings.Contains(out.String(), f) {
			t.Fatalf("usage lacks %q:\n%s", f, out.String())
		}
	}
	if err := run([]string{"extra"}, io.Discard); err == nil {
		t.Fatal("a stray argument was accepted")
	}
	if err := run([]string{"--cluster", "nohost"}, io.Discard); err == nil {
		t.Fatal("a bad cluster address was accepted")
	}
}

// writeFailingStore is a MemoryStore whose writes fail while fail is set.
type writeFailingStore struct {
	*middleware.MemoryStore
	fail atomic.Bool
}

func (s *writeFailingStore) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	if s.fail.Load() {
		return errors.New("store is down")
	}
	return s.MemoryStore.Patch(ctx, sid, set, del)
}

func (s *writeFailingStore) PatchExisting(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) (bool, error) {
	if s.fail.Load() {
		return false, errors.New("store is down")
	}
	return s.MemoryStore.PatchExisting(ctx, sid, set, del)
}

// A save the middleware makes for the handler (the counter's) fails: the
// user gets the demo's page saying so, with its security headers, not the
// redirect that would hide it.
func TestFailedSaveGetsTheDemosPage(t *testing.T) {
	mem := middleware.NewMemoryStore(middleware.MemoryOptions{})
	store := &writeFailingStore{MemoryStore: mem}
	srv := httptest.NewServer(newHandler(store, log.New(io.Discard, "", 0)))
	t.Cleanup(func() { srv.Close(); mem.Close() })
	alice := newBrowser(t, srv.URL)
	alice.do("POST", "/login", url.Values{"username": {"alice"}})
	store.fail.Store(true)
	resp, err := alice.c.PostForm(srv.URL+"/increment", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("Location") != "" {
		t.Fatalf("status %d, CSP %q, Location %q; want 503 with the security headers and no redirect",
			resp.StatusCode, resp.Header.Get("Content-Security-Policy"), resp.Header.Get("Location"))
	}
	mustContain(t, "failed save", string(body), "The session store did not answer (save the session)")
	store.fail.Store(false)
	_, page := alice.do("GET", "/", nil)
	mustContain(t, "after the store is back", page, `data-value="0"`)
}
