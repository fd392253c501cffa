package scsstore_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/kadosession/kadosession/middleware"
	"github.com/kadosession/kadosession/middleware/scsstore"
)

// newApp serves an scs SessionManager backed by the adapter: /put?msg=…
// stores a value, /get prints it, /renew renews the token, /destroy ends
// the session.
func newApp(t *testing.T, store *scsstore.Store) (*scs.SessionManager, *httptest.Server) {
	t.Helper()
	sm := scs.New()
	sm.Store = store
	sm.Lifetime = time.Hour
	mux := http.NewServeMux()
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		sm.Put(r.Context(), "msg", r.URL.Query().Get("msg"))
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, sm.GetString(r.Context(), "msg"))
	})
	mux.HandleFunc("/renew", func(w http.ResponseWriter, r *http.Request) {
		if err := sm.RenewToken(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/destroy", func(w http.ResponseWriter, r *http.Request) {
		if err := sm.Destroy(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	srv := httptest.NewServer(sm.LoadAndSave(mux))
	t.Cleanup(srv.Close)
	return sm, srv
}

func newJarClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

func get(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", u, resp.Status, body)
	}
	return string(body)
}

// sessionToken returns the scs cookie's value held by c's jar for srv.
func sessionToken(t *testing.T, c *http.Client, srv *httptest.Server) string {
	t.Helper()
	u, _ := url.Parse(srv.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == "session" {
			return ck.Value
		}
	}
	return ""
}

// TestSessionManagerRoundTrip: put, get across requests, renew, destroy,
// through scs's LoadAndSave with a cookie jar.
func TestSessionManagerRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		_, srv := newApp(t, scsstore.New(store))
		c := newJarClient(t)
		ctx := context.Background()

		if got := get(t, c, srv.URL+"/get"); got != "" {
			t.Fatalf("fresh session holds %q", got)
		}
		get(t, c, srv.URL+"/put?msg=hello")
		tok := sessionToken(t, c, srv)
		if tok == "" {
			t.Fatal("no session cookie after a put")
		}
		if _, found, err := store.Restore(ctx, scsstore.DefaultPrefix+tok); err != nil || !found {
			t.Fatalf("no kadosession record for the token: %v %v", found, err)
		}
		if got := get(t, c, srv.URL+"/get"); got != "hello" {
			t.Fatalf("get = %q, want hello", got)
		}
		// Another client (no cookie) does not see it.
		if got := get(t, newJarClient(t), srv.URL+"/get"); got != "" {
			t.Fatalf("a cookie-less client sees %q", got)
		}

		// RenewToken moves the data to a new token and deletes the old one.
		get(t, c, srv.URL+"/renew")
		tok2 := sessionToken(t, c, srv)
		if tok2 == "" || tok2 == tok {
			t.Fatalf("token after renew = %q (was %q)", tok2, tok)
		}
		if _, found, _ := store.Restore(ctx, scsstore.DefaultPrefix+tok); found {
			t.Fatal("old token's record survives RenewToken")
		}
		if got := get(t, c, srv.URL+"/get"); got != "hello" {
			t.Fatalf("get after renew = %q, want hello", got)
		}

		// Destroy removes the record and the cookie.
		get(t, c, srv.URL+"/destroy")
		if _, found, _ := store.Restore(ctx, scsstore.DefaultPrefix+tok2); found {
			t.Fatal("record survives Destroy")
		}
		if got := sessionToken(t, c, srv); got != "" {
			t.Fatalf("cookie after Destroy = %q", got)
		}
		if got := get(t, c, srv.URL+"/get"); got != "" {
			t.Fatalf("get after destroy = %q", got)
		}
	})
}

// TestSessionManagerStaleCookie: a cookie whose session the store no longer
// holds starts a fresh session under a new token (scs never reuses it).
func TestSessionManagerStaleCookie(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		_, srv := newApp(t, s)
		c := newJarClient(t)
		get(t, c, srv.URL+"/put?msg=hello")
		tok := sessionToken(t, c, srv)
		if err := s.Delete(tok); err != nil {
			t.Fatal(err)
		}
		if got := get(t, c, srv.URL+"/get"); got != "" {
			t.Fatalf("get after the record was deleted = %q", got)
		}
		get(t, c, srv.URL+"/put?msg=again")
		if tok2 := sessionToken(t, c, srv); tok2 == tok || tok2 == "" {
			t.Fatalf("token after a stale cookie = %q, was %q", tok2, tok)
		}
	})
}

// TestSessionManagerIterate: scs's Iterate walks the adapter's sessions
// when a Lister is available.
func TestSessionManagerIterate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, l lister) {
		sm, srv := newApp(t, scsstore.New(store, scsstore.WithLister(l)))
		for _, msg := range []string{"one", "two", "three"} {
			get(t, newJarClient(t), srv.URL+"/put?msg="+msg)
		}
		var got []string
		err := sm.Iterate(context.Background(), func(ctx context.Context) error {
			got = append(got, sm.GetString(ctx, "msg"))
			return nil
		})
		if err != nil {
			t.Fatalf("Iterate: %v", err)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != "one,three,two" {
			t.Fatalf("Iterate saw %v", got)
		}
	})
}
