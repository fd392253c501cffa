package middleware

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCookieAttributes(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		check func(t *testing.T, c *http.Cookie)
	}{
		{"defaults", Options{}, func(t *testing.T, c *http.Cookie) {
			if c.Name != "session" || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" ||
				c.Secure || c.Domain != "" || c.MaxAge != 0 || !hex40.MatchString(c.Value) {
				t.Fatalf("default cookie %s", c)
			}
		}},
		{"custom", Options{Name: "sid", Secure: true, Domain: "example.com", Path: "/app",
			SameSite: http.SameSiteStrictMode, DisableHTTPOnly: true, MaxAge: 2 * time.Hour},
			func(t *testing.T, c *http.Cookie) {
				if c.Name != "sid" || c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/app" ||
					!c.Secure || c.Domain != "example.com" || c.MaxAge != 7200 {
					t.Fatalf("custom cookie %s", c)
				}
			}},
		{"__Host- prefix", Options{HostPrefix: true, Secure: true}, func(t *testing.T, c *http.Cookie) {
			if c.Name != "__Host-session" || !c.Secure || c.Path != "/" || c.Domain != "" {
				t.Fatalf("__Host- cookie %s", c)
			}
		}},
		{"SameSite=None with Secure", Options{SameSite: http.SameSiteNoneMode, Secure: true}, func(t *testing.T, c *http.Cookie) {
			if c.SameSite != http.SameSiteNoneMode || !c.Secure {
				t.Fatalf("cookie %s", c)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newStore(t)
			tt.opts.Store = store
			resp := serve(tt.opts, setHandler("k", "v"), httptest.NewRequest("GET", "/app/x", nil))
			cookies := resp.Cookies()
			if len(cookies) != 1 {
				t.Fatalf("Set-Cookie headers: %q, want one", resp.Header.Values("Set-Cookie"))
			}
			tt.check(t, cookies[0])
			if got := restoreString(t, store, cookies[0].Value, "k"); got != "v" {
				t.Fatalf("the cookie names a session holding k=%q", got)
			}
			if resp.Header.Get("Vary") != "Cookie" {
				t.Fatalf("Vary = %q, want Cookie", resp.Header.Get("Vary"))
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Fatalf("Cache-Control = %q on a response that sets the session cookie, want no-store", cc)
			}
		})
	}
}

func TestMaxAgeSlidesWithSaves(t *testing.T) {
	store := newStore(t)
	opts := Options{Store: store, MaxAge: time.Hour}
	first := serve(opts, setHandler("a", "1"), httptest.NewRequest("GET", "/", nil)).Cookies()[0]

	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    int // Set-Cookie headers
	}{
		{"modified: cookie sent again", setHandler("b", "2"), 1},
		{"only read: no cookie", getHandler("a"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			req.AddCookie(first)
			resp := serve(opts, tt.handler, req)
			if got := len(resp.Cookies()); got != tt.want {
				t.Fatalf("%d cookies, want %d", got, tt.want)
			}
			if tt.want == 1 && (resp.Cookies()[0].Value != first.Value || resp.Cookies()[0].MaxAge != 3600) {
				t.Fatalf("cookie %s, want the same id with Max-Age=3600", resp.Cookies()[0])
			}
		})
	}
}

func TestHostPrefixNeedsSecureRootPath(t *testing.T) {
	for _, o := range []Options{{HostPrefix: true}, {HostPrefix: true, Secure: true, Domain: "example.com"}, {HostPrefix: true, Secure: true, Path: "/app"}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%+v) did not refuse an invalid __Host- cookie", o)
				}
			}()
			o.Store = newStore(t)
			New(o)
		}()
	}
}

// TestSessionCookieReadsAsNetHTTP holds the middleware's own Cookie header
// scanner to http.Request.CookiesNamed: the same cookie found, or none.
func TestSessionCookieReadsAsNetHTTP(t *testing.T) {
	id := strings.Repeat("ab", 20)
	other := strings.Repeat("c", 40)
	tests := [][]string{
		nil,
		{""},
		{"session=" + id},
		{"a=1; session=" + id + "; b=2"},
		{"  session = " + id + "  "},
		{`session="` + id + `"`},
		{`session="` + id},
		{"session=" + id + "x"},
		{"session=" + strings.ToUpper(id)},
		{"session=bad\\value; session=" + id},
		{"session=short; session=" + id},
		{"session=" + other + "; session=" + id},
		{"sessionx=" + id, "xsession=" + id},
		{"Session=" + id},
		{"a=1", "session=" + id},
		{"session="},
		{"session"},
		{";;; ;session=" + id + ";;"},
		{"session=a b"},
		{"session=caf\xc3\xa9"},
		{"session=\t" + id},
	}
	for _, lines := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		for _, l := range lines {
			r.Header.Add("Cookie", l)
		}
		wantID, wantHad := "", false
		for _, ck := range r.CookiesNamed("session") {
			wantHad = true
			if validID(ck.Value) {
				wantID = ck.Value
				break
			}
		}
		if gotID, gotHad := sessionCookie(r.Header, "session"); gotID != wantID || gotHad != wantHad {
			t.Errorf("Cookie %q: sessionCookie = %q, %v; CookiesNamed gives %q, %v", lines, gotID, gotHad, wantID, wantHad)
		}
	}
}

func BenchmarkSessionCookie(b *testing.B) {
	h := http.Header{"Cookie": {"_ga=GA1.2.3; theme=dark; session=" + strings.Repeat("ab", 20) + "; lang=en"}}
	b.ReportAllocs()
	for b.Loop() {
		if id, _ := sessionCookie(h, "session"); id == "" {
			b.Fatal("no session cookie")
		}
	}
}

// A cookie naming a session the store does not hold (expired, revoked from
// another request, or never there) is dropped when the request reads the
// session without saving a new one: the browser kept sending it, each
// request a store lookup for nothing. A new session saved instead gets its
// own cookie.
func TestDeadCookieIsDropped(t *testing.T) {
	store := newStore(t)
	read := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = FromContext(r.Context()).Get("a") })
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(&http.Cookie{Name: "session", Value: GenerateID("", "")})
	cs := serve(Options{Store: store}, read, req).Cookies()
	if len(cs) != 1 || cs[0].Name != "session" || cs[0].MaxAge >= 0 {
		t.Fatalf("a read through a dead cookie set %v; want the cookie expired", cs)
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.AddCookie(&http.Cookie{Name: "session", Value: GenerateID("", "")})
	cs = serve(Options{Store: store}, setHandler("a", "1"), req).Cookies()
	if len(cs) != 1 || cs[0].MaxAge < 0 || cs[0].Value == "" {
		t.Fatalf("a write through a dead cookie set %v; want a new session's cookie", cs)
	}
	// A request that never touches the session leaves the cookie alone.
	req = httptest.NewRequest("GET", "/", nil)
	req.AddCookie(&http.Cookie{Name: "session", Value: GenerateID("", "")})
	if cs = serve(Options{Store: store}, http.NotFoundHandler(), req).Cookies(); len(cs) != 0 {
		t.Fatalf("an untouched session set %v", cs)
	}
}

// A cookie of our name that is not an id is ignored and left alone: it
// may be another application's (a parent domain's "session"), which a
// host-only expiry would not remove anyway, and every response would
// carry the expiry and no-store.
func TestForeignCookieIsLeftAlone(t *testing.T) {
	read := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = FromContext(r.Context()).Get("a") })
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(&http.Cookie{Name: "session", Value: "eyJfZmxhc2hlcyI6W119.Z0"})
	if cs := serve(Options{Store: newStore(t)}, read, req).Cookies(); len(cs) != 0 {
		t.Fatalf("a read with another application's cookie set %v; want nothing", cs)
	}
}

// A response whose handler used the session varies with the cookie, set or
// not; one whose handler never touched it does not.
func TestVaryCookieWhenTheSessionIsUsed(t *testing.T) {
	store := newStore(t)
	sid := GenerateID("", "")
	if err := store.Save(context.Background(), sid, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		handler http.Handler
		want    string
	}{
		{"read", getHandler("a"), "Cookie"},
		{"untouched", http.NotFoundHandler(), ""},
	} {
		req := httptest.NewRequest("GET", "/", nil)
		req.AddCookie(&http.Cookie{Name: "session", Value: sid})
		resp := serve(Options{Store: store}, tc.handler, req)
		if got := resp.Header.Get("Vary"); got != tc.want || len(resp.Cookies()) != 0 {
			t.Fatalf("%s: Vary %q, cookies %v; want Vary %q and no cookie", tc.name, got, resp.Cookies(), tc.want)
		}
	}
}

// A request may carry several cookies of our name: a browser sends every
// one whose domain and path match, the most specific path first, so a
// stale cookie, or one a sibling subdomain set for the parent domain with
// a longer path, can come before ours. When the first names no session,
// the others are tried: the user keeps their session, and no cookie is
// expired. When none names one, the request is a dead cookie's, as before.
func TestOtherCookiesOfOurNameTried(t *testing.T) {
	store := newStore(t)
	opts := Options{Store: store}
	ours := serve(opts, setHandler("user", "alice"), httptest.NewRequest("GET", "/", nil)).Cookies()[0].Value
	planted := GenerateID("203.0.113.9", "evil") // the shape of an id; no session

	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Add("Cookie", "session="+planted+"; other=1")
	req.Header.Add("Cookie", "session=not-an-id; session="+ours)
	resp := serve(opts, getHandler("user"), req)
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "alice" {
		t.Fatalf("with a planted cookie first, the session read %q; want alice's", body)
	}
	if cs := resp.Cookies(); len(cs) != 0 {
		t.Fatalf("with a planted cookie first, the response set %v; want no cookie (ours must not be expired)", cs)
	}
	// A write goes to the session found, under its id.
	req = httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Cookie", "session="+planted+"; session="+ours)
	if cs := serve(opts, setHandler("seen", "yes"), req).Cookies(); len(cs) != 0 {
		t.Fatalf("a write with a planted cookie first set %v; want none", cs)
	}
	if got := restoreString(t, store, ours, "seen"); got != "yes" {
		t.Fatalf("the write reached a session holding seen=%q; want it in alice's", got)
	}

	// None of them names a session: a dead cookie, expired.
	req = httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Cookie", "session="+planted+"; session="+GenerateID("198.51.100.1", "x"))
	cs := serve(opts, getHandler("user"), req).Cookies()
	if len(cs) != 1 || cs[0].MaxAge >= 0 {
		t.Fatalf("two dead cookies: the response set %v; want our cookie expired", cs)
	}
}
