package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// setHandler sets key=value in the session and answers "ok".
func setHandler(key, value string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		FromContext(r.Context()).Set(key, value)
		fmt.Fprint(w, "ok")
	}
}

// getHandler answers the session's value of key.
func getHandler(key string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, FromContext(r.Context()).Get(key))
	}
}

// serve runs one request through the middleware with a recorder.
func serve(opts Options, h http.Handler, req *http.Request) *http.Response {
	rec := httptest.NewRecorder()
	New(opts)(h).ServeHTTP(rec, req)
	return rec.Result()
}

func TestNoCookieForUntouchedSession(t *testing.T) {
	mem := newStore(t)
	store := &countingStore{Store: mem}
	known := serve(Options{Store: store}, setHandler("a", "1"), httptest.NewRequest("GET", "/", nil)).Cookies()[0]
	store.saves.Store(0)

	tests := []struct {
		name         string
		cookie       *http.Cookie
		handler      http.HandlerFunc
		wantRestores int32
	}{
		{"never touched, no cookie", nil, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hi") }, 0},
		{"never touched, with cookie", known, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hi") }, 0},
		{"read only, no cookie", nil, getHandler("a"), 0},
		{"read only, with cookie", known, getHandler("a"), 1},
		{"ID only, no cookie", nil, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, FromContext(r.Context()).ID()) }, 0},
		{"delete of an absent key", nil, func(w http.ResponseWriter, r *http.Request) { FromContext(r.Context()).Delete("x") }, 0},
		{"clear of a new session", nil, func(w http.ResponseWriter, r *http.Request) { FromContext(r.Context()).Clear() }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store.restores.Store(0)
			req := httptest.NewRequest("GET", "/", nil)
			if tt.cookie != nil {
				req.AddCookie(tt.cookie)
			}
			resp := serve(Options{Store: store}, tt.handler, req)
			if v := resp.Header.Values("Set-Cookie"); len(v) != 0 {
				t.Fatalf("Set-Cookie %q for a session nobody changed", v)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if n := store.writes(); n != 0 {
				t.Fatalf("%d store writes", n)
			}
			if n := store.restores.Load(); n != tt.wantRestores {
				t.Fatalf("%d store restores, want %d", n, tt.wantRestores)
			}
		})
	}
}

func TestStrictMode(t *testing.T) {
	mem := newStore(t)
	store := &countingStore{Store: mem}
	known := serve(Options{Store: store}, setHandler("a", "1"), httptest.NewRequest("GET", "/", nil)).Cookies()[0].Value
	unknown := GenerateID("", "")

	tests := []struct {
		name         string
		cookie       string
		wantSame     bool // the session keeps the cookie's id
		wantRestores int32
	}{
		{"known id is kept", known, true, 1},
		{"unknown id is replaced", unknown, false, 2}, // the session, then a login's marker (movedLocked)
		{"malformed id is replaced without asking the store", "../../etc/passwd", false, 0},
		{"uppercase id is replaced without asking the store", strings.ToUpper(unknown), false, 0},
		{"__proto__", "__proto__", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store.restores.Store(0)
			req := httptest.NewRequest("GET", "/", nil)
			req.AddCookie(&http.Cookie{Name: "session", Value: tt.cookie})
			var seen string
			resp := serve(Options{Store: store}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s := FromContext(r.Context())
				s.Set("b", "2")
				seen = s.ID()
			}), req)
			if n := store.restores.Load(); n != tt.wantRestores {
				t.Fatalf("%d restores, want %d", n, tt.wantRestores)
			}
			if (seen == tt.cookie) != tt.wantSame {
				t.Fatalf("session id %q for cookie %q; want same=%v", seen, tt.cookie, tt.wantSame)
			}
			if tt.wantSame {
				if len(resp.Cookies()) != 0 {
					t.Fatalf("a known session got a new cookie %s", resp.Cookies()[0])
				}
				return
			}
			if len(resp.Cookies()) != 1 || resp.Cookies()[0].Value != seen || !hex40.MatchString(seen) {
				t.Fatalf("cookies %v, want one naming the fresh id %q", resp.Cookies(), seen)
			}
			if _, found, _ := mem.Restore(context.Background(), tt.cookie); found {
				t.Fatal("the cookie's unknown id was adopted into the store")
			}
		})
	}
}

func TestSaveBeforeFirstByte(t *testing.T) {
	t.Run("http.Redirect", func(t *testing.T) {
		store := newStore(t)
		mux := http.NewServeMux()
		mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
			s := FromContext(r.Context())
			s.Set("user", "alice")
			http.Redirect(w, r, "/whoami", http.StatusFound)
			// The redirect's headers are written: the session is stored already.
			if data, found, err := store.Restore(r.Context(), s.ID()); !found || err != nil || string(data["user"]) != `"alice"` {
				t.Errorf("after http.Redirect the store holds %s, %v, %v", data, found, err)
			}
		})
		mux.HandleFunc("/whoami", getHandler("user"))
		srv := newServer(t, Options{Store: store}, mux)
		if resp, body := srv.get(t, "/login"); body != "alice" || resp.Request.URL.Path != "/whoami" {
			t.Fatalf("after following the redirect: %s %q, want /whoami alice", resp.Request.URL.Path, body)
		}
	})

	t.Run("redirect followed while the handler still runs", func(t *testing.T) {
		store := newStore(t)
		followed := make(chan struct{})
		mux := http.NewServeMux()
		mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
			FromContext(r.Context()).Set("user", "bob")
			w.Header().Set("Location", "/whoami")
			w.Header().Set("Content-Length", "0")
			w.Header().Set("Connection", "close") // the client must not queue /whoami behind this handler
			w.WriteHeader(http.StatusSeeOther)
			_ = http.NewResponseController(w).Flush()
			// Hold the handler open: a middleware that saved on return
			// would make /whoami read nothing.
			select {
			case <-followed:
			case <-time.After(5 * time.Second):
				t.Error("the client did not follow the redirect while /login was running")
			}
		})
		mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
			getHandler("user")(w, r)
			close(followed)
		})
		srv := newServer(t, Options{Store: store}, mux)
		if resp, body := srv.get(t, "/login"); body != "bob" || resp.Request.URL.Path != "/whoami" {
			t.Fatalf("after following the redirect: %s %q, want /whoami bob", resp.Request.URL.Path, body)
		}
	})
}

func TestConcurrentRequestsKeepBothKeys(t *testing.T) {
	store := newStore(t)
	loaded := make(chan struct{}, 2)
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/init", setHandler("init", "yes"))
	mux.HandleFunc("/set/{key}", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		if s.Get("init") != "yes" { // loads the session
			t.Errorf("%s: the session was not restored", r.URL.Path)
		}
		loaded <- struct{}{}
		<-release // both requests hold the same loaded data before either saves
		s.Set(r.PathValue("key"), "set")
	})
	mux.HandleFunc("/show", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		fmt.Fprint(w, s.Get("init"), s.Get("a"), s.Get("b"))
	})
	srv := newServer(t, Options{Store: store}, mux)
	srv.get(t, "/init")

	var wg sync.WaitGroup
	for _, key := range []string{"a", "b"} {
		wg.Go(func() {
			resp, err := srv.client.Get(srv.URL + "/set/" + key)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	for range 2 {
		select {
		case <-loaded:
		case <-time.After(5 * time.Second):
			t.Fatal("the two requests did not both load the session")
		}
	}
	close(release)
	wg.Wait()
	if _, body := srv.get(t, "/show"); body != "yessetset" {
		t.Fatalf("after two concurrent writers: %q, want both keys", body)
	}
}

func TestRegenerate(t *testing.T) {
	store := newStore(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/visit", setHandler("cart", "3 apples"))
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		s.Set("user", "alice")
		if err := s.Regenerate(r.Context()); err != nil {
			t.Error(err)
		}
		fmt.Fprint(w, "ok")
		if err := s.Regenerate(r.Context()); err != ErrHeadersSent {
			t.Errorf("Regenerate after the first byte = %v, want ErrHeadersSent", err)
		}
	})
	mux.HandleFunc("/show", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		fmt.Fprint(w, s.Get("user"), ",", s.Get("cart"))
	})
	srv := newServer(t, Options{Store: store}, mux)
	srv.get(t, "/visit")
	old := srv.sid(t, "session")

	srv.get(t, "/login")
	fresh := srv.sid(t, "session")
	if fresh == old || !hex40.MatchString(fresh) {
		t.Fatalf("cookie after login = %q, was %q; want a new id", fresh, old)
	}
	if _, found, _ := store.Restore(context.Background(), old); found {
		t.Fatal("the pre-login id is still in the store")
	}
	if _, body := srv.get(t, "/show"); body != "alice,3 apples" {
		t.Fatalf("after login: %q, want the data kept", body)
	}
	if _, found, _ := store.Restore(context.Background(), old+movedSuffix); !found {
		t.Fatal("the login left no marker under the pre-login id")
	}
	if store.Len() != 2 {
		t.Fatalf("the store holds %d records, want 2 (the session and the login's marker)", store.Len())
	}
}

func TestDestroy(t *testing.T) {
	store := newStore(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/login", setHandler("user", "alice"))
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
		if err := FromContext(r.Context()).Destroy(r.Context()); err != nil {
			t.Error(err)
		}
	})
	mux.HandleFunc("/logout-flash", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		if err := s.Destroy(r.Context()); err != nil {
			t.Error(err)
		}
		s.Set("flash", "bye")
	})
	mux.HandleFunc("/show", getHandler("user"))
	srv := newServer(t, Options{Store: store}, mux)

	srv.get(t, "/login")
	resp, _ := srv.get(t, "/logout")
	if c := resp.Cookies(); len(c) != 1 || c[0].MaxAge >= 0 || c[0].Value != "" {
		t.Fatalf("logout cookies %v, want one expired cookie", c)
	}
	if sid := srv.sid(t, "session"); sid != "" {
		t.Fatalf("the client still holds cookie %q", sid)
	}
	if store.Len() != 0 {
		t.Fatalf("the store still holds %d sessions", store.Len())
	}

	srv.get(t, "/login")
	old := srv.sid(t, "session")
	srv.get(t, "/logout-flash")
	fresh := srv.sid(t, "session")
	if fresh == "" || fresh == old {
		t.Fatalf("after logout with a flash: cookie %q (was %q), want a new id", fresh, old)
	}
	if _, found, _ := store.Restore(context.Background(), old); found {
		t.Fatal("the logged-out session is still stored")
	}
	if got := restoreString(t, store, fresh, "flash"); got != "bye" {
		t.Fatalf("flash = %q", got)
	}
	if _, body := srv.get(t, "/show"); body != "<nil>" {
		t.Fatalf("user after logout = %q", body)
	}
}

func TestFromContextWithoutMiddleware(t *testing.T) {
	if s := FromContext(context.Background()); s != nil {
		t.Fatalf("FromContext = %v, want nil", s)
	}
}

func TestNewPanicsOnBadOptions(t *testing.T) {
	store := newStore(t)
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"nil store", Options{}, "Options.Store is nil"},
		{"bad cookie name", Options{Store: store, Name: "a b"}, "not a valid cookie name"},
		{"SameSite=None without Secure", Options{Store: store, SameSite: http.SameSiteNoneMode}, "requires Secure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), tt.want) {
					t.Fatalf("panic %v, want one mentioning %q", r, tt.want)
				}
			}()
			New(tt.opts)
		})
	}
}

// A new session's id is made from the client's address and agent as the
// request came, read before the handler ran: a handler may change its
// request's headers while another of its goroutines starts the session
// (under -race, reading them when the id is made was a data race).
func TestNewIDReadsNoHeaderTheHandlerChanges(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			FromContext(r.Context()).Set("k", 1)
		}()
		r.Header.Set("User-Agent", "changed by the handler")
		r.Header.Set("X-Debug", "1")
		<-done
	})
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("User-Agent", "client")
	if cs := serve(Options{Store: newStore(t)}, h, req).Cookies(); len(cs) != 1 || !validID(cs[0].Value) {
		t.Fatalf("cookies %v, want one new session", cs)
	}
}

// TestLogoutWinsOverARunningRequest: a request that loaded the session
// before another request logged out (Destroy, or RevokeUser) saves its
// changes after the logout; the session must stay deleted, and that
// request's response must not set the cookie again.
// (Patch creates the session: before PatchExisting it came back, keys and
// all, and with MaxAge its cookie was sent again.) A Store without
// PatchExisting still brings it back, as its docs say.
func TestLogoutWinsOverARunningRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		store   func(m *MemoryStore) Store
		sticks  bool
		destroy func(s *Session, r *http.Request) error
	}{
		{"MemoryStore, Destroy", func(m *MemoryStore) Store { return m }, true,
			func(s *Session, r *http.Request) error { return s.Destroy(r.Context()) }},
		{"MemoryStore, RevokeUser", func(m *MemoryStore) Store { return m }, true,
			func(s *Session, r *http.Request) error { _, err := s.RevokeUser(r.Context(), "alice"); return err }},
		{"a Store with PatchExisting", func(m *MemoryStore) Store { return &withPatchExisting{m} }, true,
			func(s *Session, r *http.Request) error { return s.Destroy(r.Context()) }},
		{"a Store with Patch only", func(m *MemoryStore) Store { return &countingStore{Store: m} }, false,
			func(s *Session, r *http.Request) error { return s.Destroy(r.Context()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newStore(t)
			store := tc.store(mem)
			loaded, release := make(chan struct{}), make(chan struct{})
			mux := http.NewServeMux()
			mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
				FromContext(r.Context()).SetUser("alice")
			})
			mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
				s := FromContext(r.Context())
				_ = s.Get("cart") // loads the session
				close(loaded)
				<-release
				s.Set("cart", "x")
			})
			mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
				if err := tc.destroy(FromContext(r.Context()), r); err != nil {
					t.Error(err)
				}
			})
			srv := newServer(t, Options{Store: store, MaxAge: time.Hour}, mux)
			srv.get(t, "/login")
			sid := srv.sid(t, "session")
			if sid == "" {
				t.Fatal("no session after login")
			}
			slow := make(chan *http.Response, 1)
			go func() {
				resp, err := srv.client.Get(srv.URL + "/slow")
				if err != nil {
					t.Error(err)
					close(slow)
					return
				}
				resp.Body.Close()
				slow <- resp
			}()
			<-loaded
			srv.get(t, "/logout")
			close(release)
			resp := <-slow
			_, found, err := mem.Restore(context.Background(), sid)
			if err != nil {
				t.Fatal(err)
			}
			if found == tc.sticks {
				t.Fatalf("after the logout and the running request's save: session found %v, want %v", found, !tc.sticks)
			}
			if !tc.sticks || resp == nil {
				return
			}
			for _, c := range resp.Cookies() {
				if c.Name == "session" && c.MaxAge >= 0 {
					t.Fatalf("the running request's response set the session cookie again: %v", c)
				}
			}
		})
	}
}

// withPatchExisting is a Store of another type (not a bare *MemoryStore)
// that has PatchExisting.
type withPatchExisting struct{ *MemoryStore }

// TestLoginWinsOverARunningRequest: a request that loaded the pre-login
// session saves after another request logged in (Regenerate): the old id
// stays deleted, and that request's response leaves the new cookie alone
// (expiring the cookie there would log the user out again).
func TestLoginWinsOverARunningRequest(t *testing.T) {
	store := newStore(t)
	loaded, release := make(chan struct{}), make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/visit", setHandler("cart", "1"))
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		_ = s.Get("cart")
		close(loaded)
		<-release
		s.Set("cart", "2")
	})
	mux.HandleFunc("/login", loginHandler(t, "alice"))
	srv := newServer(t, Options{Store: store, MaxAge: time.Hour}, mux)
	srv.get(t, "/visit")
	old := srv.sid(t, "session")
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := srv.client.Get(srv.URL + "/slow")
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
	}()
	<-loaded
	srv.get(t, "/login")
	fresh := srv.sid(t, "session")
	close(release)
	<-done
	if _, found, _ := store.Restore(context.Background(), old); found {
		t.Fatal("the running request brought the pre-login session back")
	}
	if got := srv.sid(t, "session"); got != fresh || fresh == old {
		t.Fatalf("cookie after both requests = %.8s…, want the login's %.8s… (pre-login %.8s…)", got, fresh, old)
	}
	if got := restoreString(t, store, fresh, "_user"); got != "alice" {
		t.Fatalf("the logged-in session holds user %q", got)
	}
}

// TestRequestRacingALoginLeavesItsCookie: a request the browser sent with
// the pre-login cookie, answered after the login's response, must not
// replace the login's cookie (expired as a dead one, or naming a session of
// its own): that logs the user out. Within movedGrace it gets an empty
// session, saves nothing and sends no cookie; later the old cookie is an
// ordinary dead one again.
func TestRequestRacingALoginLeavesItsCookie(t *testing.T) {
	store := newStore(t)
	clk := newFakeClock()
	mux := visitLoginMux(t)
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, FromContext(r.Context()).Get("cart"))
	})
	srv := newServer(t, Options{Store: store, MaxAge: time.Hour, now: clk.Now}, mux)
	srv.get(t, "/visit")
	old := srv.sid(t, "session")
	srv.get(t, "/login")
	fresh := srv.sid(t, "session")
	if fresh == old {
		t.Fatal("the login kept the id")
	}
	// sendOld sends path with the pre-login cookie, past the client's jar,
	// and returns the session cookie its response set (nil: none).
	sendOld := func(path string) (*http.Cookie, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.AddCookie(&http.Cookie{Name: "session", Value: old})
		resp, err := srv.client.Transport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body := mustRead(t, resp)
		for _, c := range resp.Cookies() {
			if c.Name == "session" {
				return c, body
			}
		}
		return nil, body
	}
	before := store.Len()
	for _, path := range []string{"/read", "/visit"} {
		if c, _ := sendOld(path); c != nil {
			t.Fatalf("%s with the pre-login cookie, just after the login, set %v: the login's cookie would be lost", path, c)
		}
	}
	if store.Len() != before {
		t.Fatalf("the racing write saved a session: %d records, were %d", store.Len(), before)
	}
	if got := restoreString(t, store, fresh, "_user"); got != "alice" {
		t.Fatalf("the logged-in session holds user %q", got)
	}

	clk.Advance(movedGrace)
	c, body := sendOld("/read")
	if c == nil || c.MaxAge >= 0 || body != "<nil>" {
		t.Fatalf("the pre-login cookie past the grace: cookie %v, body %q; want it expired and an empty session", c, body)
	}
	if _, found, _ := store.Restore(context.Background(), old+movedSuffix); found {
		t.Fatal("the login's marker outlived its grace")
	}
	if c, _ := sendOld("/visit"); c == nil || c.Value == old || !hex40.MatchString(c.Value) {
		t.Fatalf("a write with the dead cookie set %v, want a fresh session's cookie", c)
	}
}

// TestSecondLoginWithThePreLoginCookieWins: two logins sent with the same
// pre-login cookie (a double-clicked form): the later one is a login too.
func TestSecondLoginWithThePreLoginCookieWins(t *testing.T) {
	store := newStore(t)
	mux := visitLoginMux(t)
	srv := newServer(t, Options{Store: store}, mux)
	srv.get(t, "/visit")
	old := srv.sid(t, "session")
	srv.get(t, "/login")
	first := srv.sid(t, "session")
	srv.setSID(t, "session", old)
	srv.get(t, "/login")
	second := srv.sid(t, "session")
	if second == old || second == first {
		t.Fatalf("after the second login the cookie is %.8s… (pre-login %.8s…, first login %.8s…); want a new id", second, old, first)
	}
	if got := restoreString(t, store, second, "_user"); got != "alice" {
		t.Fatalf("the second login's session holds user %q", got)
	}
}

// TestExplicitSaveOfAnUnchangedSessionDeletedMeanwhile: Save with nothing
// changed renews the session; when a logout deleted it since the request
// loaded it, Save says so, and the response does not set the dead id's
// cookie again (MaxAge renews the cookie of a renewed session).
func TestExplicitSaveOfAnUnchangedSessionDeletedMeanwhile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(m *MemoryStore) Store
	}{
		{"MemoryStore", func(m *MemoryStore) Store { return m }},
		{"a Store with PatchExisting", func(m *MemoryStore) Store { return &withPatchExisting{m} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newStore(t)
			mux := http.NewServeMux()
			mux.HandleFunc("/visit", setHandler("cart", "1"))
			mux.HandleFunc("/save", func(w http.ResponseWriter, r *http.Request) {
				s := FromContext(r.Context())
				_ = s.Get("cart")
				if r.URL.Query().Has("logout") {
					if err := mem.Delete(r.Context(), s.ID()); err != nil { // a logout elsewhere
						t.Error(err)
					}
				}
				fmt.Fprint(w, s.Save(r.Context()))
			})
			srv := newServer(t, Options{Store: tc.store(mem), MaxAge: time.Hour}, mux)
			srv.get(t, "/visit")
			sid := srv.sid(t, "session")
			if _, body := srv.get(t, "/save"); body != "<nil>" {
				t.Fatalf("Save of a live, unchanged session: %s", body)
			}
			resp, body := srv.get(t, "/save?logout")
			if body != ErrSessionGone.Error() {
				t.Fatalf("Save of a session deleted meanwhile: %q, want ErrSessionGone", body)
			}
			for _, c := range resp.Cookies() {
				if c.Name == "session" && c.Value == sid {
					t.Fatalf("the response set the deleted session's cookie again: %v", c)
				}
			}
			if _, found, _ := mem.Restore(context.Background(), sid); found {
				t.Fatal("the save brought the deleted session back")
			}
		})
	}
}

// TestRequestRacingALoginOnAnotherServer: the login ran on an app server
// whose clock is ahead of the one answering the racing request.
func TestRequestRacingALoginOnAnotherServer(t *testing.T) {
	store := newStore(t)
	ahead, behind := newFakeClock(), newFakeClock()
	ahead.Advance(2 * time.Second)
	login := loginHandler(t, "")
	a := newServer(t, Options{Store: store, now: ahead.Now}, login)
	b := newServer(t, Options{Store: store, now: behind.Now}, getHandler("cart"))
	sid := GenerateID("", "")
	if err := store.Save(context.Background(), sid, map[string]json.RawMessage{"cart": json.RawMessage(`"1"`)}); err != nil {
		t.Fatal(err)
	}
	a.setSID(t, "session", sid)
	a.get(t, "/")
	b.setSID(t, "session", sid)
	if resp, _ := b.get(t, "/"); len(resp.Cookies()) != 0 {
		t.Fatalf("the racing request on the server whose clock is behind set %v", resp.Cookies())
	}
}

// TestDetachedSessionStaysDetached: a request whose session is gone (moved
// by a login, or deleted while it ran) sets no cookie whatever it does
// next: Restore, Destroy, writes after a failed Save; a Regenerate (a
// login of its own) ends that.
func TestDetachedSessionStaysDetached(t *testing.T) {
	for _, tc := range []struct {
		name   string
		early  bool // load the session before the login moves it
		handle func(s *Session, r *http.Request) error
	}{
		{"Restore", false, func(s *Session, r *http.Request) error { _ = s.Get("cart"); return s.Restore(r.Context()) }},
		{"Destroy", false, func(s *Session, r *http.Request) error { _ = s.Get("cart"); return s.Destroy(r.Context()) }},
		{"write after an unchanged Save", true, func(s *Session, r *http.Request) error {
			if err := s.Save(r.Context()); !errors.Is(err, ErrSessionGone) {
				return fmt.Errorf("Save = %v, want ErrSessionGone", err)
			}
			s.Set("flash", "hello")
			return nil
		}},
		{"write after a failed Save", true, func(s *Session, r *http.Request) error {
			s.Set("cart", "2")
			if err := s.Save(r.Context()); !errors.Is(err, ErrSessionGone) {
				return fmt.Errorf("Save = %v, want ErrSessionGone", err)
			}
			s.Set("flash", "hello")
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newStore(t)
			loaded, release := make(chan struct{}), make(chan struct{})
			mux := http.NewServeMux()
			mux.HandleFunc("/visit", setHandler("cart", "1"))
			mux.HandleFunc("/login", loginHandler(t, ""))
			mux.HandleFunc("/racing", func(w http.ResponseWriter, r *http.Request) {
				s := FromContext(r.Context())
				if tc.early {
					_ = s.Get("cart")
				}
				close(loaded)
				<-release
				if err := tc.handle(s, r); err != nil {
					t.Error(err)
				}
			})
			srv := newServer(t, Options{Store: store, MaxAge: time.Hour}, mux)
			srv.get(t, "/visit")
			old := srv.sid(t, "session")
			racing := make(chan *http.Response, 1)
			go func() {
				req, _ := http.NewRequest("GET", srv.URL+"/racing", nil)
				req.AddCookie(&http.Cookie{Name: "session", Value: old})
				resp, err := srv.client.Transport.RoundTrip(req)
				if err != nil {
					t.Error(err)
					racing <- nil
					return
				}
				resp.Body.Close()
				racing <- resp
			}()
			<-loaded
			srv.get(t, "/login")
			records := store.Len()
			close(release)
			resp := <-racing
			if resp == nil {
				return
			}
			for _, c := range resp.Cookies() {
				if c.Name == "session" {
					t.Fatalf("the racing request set %v: the login's cookie would be lost", c)
				}
			}
			if store.Len() != records {
				t.Fatalf("the racing request saved a session: %d records, were %d", store.Len(), records)
			}
		})
	}
}

// markerDownStore fails every lookup of a login's marker.
type markerDownStore struct{ *MemoryStore }

func (m markerDownStore) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	if strings.HasSuffix(sid, movedSuffix) {
		return nil, false, errDown
	}
	return m.MemoryStore.Restore(ctx, sid)
}

// TestUnreadableMarkerLeavesTheCookie: when the store cannot say whether a
// login moved the cookie's session (down, or refusing such sids), a read
// does not expire the cookie, and a write is kept, in a new session with
// its own cookie (dropped, every write of every visitor with a dead cookie
// would be lost with such a store).
func TestUnreadableMarkerLeavesTheCookie(t *testing.T) {
	mem := newStore(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/read", getHandler("cart"))
	mux.HandleFunc("/write", setHandler("cart", "1"))
	srv := newServer(t, Options{Store: markerDownStore{mem}, Logger: testLogger(&lockedBuffer{})}, mux)
	dead := GenerateID("", "")
	srv.setSID(t, "session", dead)
	if resp, _ := srv.get(t, "/read"); len(resp.Cookies()) != 0 {
		t.Fatalf("a read with the marker unreadable set %v; want the cookie left alone", resp.Cookies())
	}
	if resp, _ := srv.get(t, "/write"); len(resp.Cookies()) != 1 || resp.Cookies()[0].Value == dead || mem.Len() != 1 {
		t.Fatalf("a write with the marker unreadable: cookies %v, %d records; want the write kept in a new session", resp.Cookies(), mem.Len())
	}
}

// TestLoginMarkerIsSweptAfterItsGrace: the server that wrote a login's
// marker deletes it once its grace is over, so a login counts once in the
// store's sessions; a later login's marker under the same old id is kept.
func TestLoginMarkerIsSweptAfterItsGrace(t *testing.T) {
	old := movedSweepAfter
	movedSweepAfter = 100 * time.Millisecond
	t.Cleanup(func() { movedSweepAfter = old })
	store := newStore(t)
	mux := visitLoginMux(t)
	srv := newServer(t, Options{Store: store}, mux)
	srv.get(t, "/visit")
	pre := srv.sid(t, "session")
	srv.get(t, "/login")
	marker := pre + movedSuffix
	if _, found, _ := store.Restore(context.Background(), marker); !found {
		t.Fatal("the login left no marker")
	}
	if n := store.Len(); n != 2 {
		t.Fatalf("store holds %d records after the login, want 2 (the session and its marker)", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for store.Len() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the marker was not swept: %d records", store.Len())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, found, _ := store.Restore(context.Background(), marker); found {
		t.Fatal("the record left is the marker")
	}

	// A marker rewritten by a later login is that login's: the earlier
	// login's sweep leaves it.
	sweepMarkerLater(store, marker, []byte("1"), time.Second)
	if err := store.Save(context.Background(), marker, map[string]json.RawMessage{movedKey: json.RawMessage("2")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(movedSweepAfter + 200*time.Millisecond)
	if _, found, _ := store.Restore(context.Background(), marker); !found {
		t.Fatal("a sweep deleted a later login's marker")
	}
	sweepMarkerLater(store, marker, []byte("2"), -1)
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, found, _ := store.Restore(context.Background(), marker); !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the later login's own sweep left its marker")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
