package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/middleware"
)

// TestREADMEApp wires a real node, the Go client and the middleware exactly
// as README.md's example does, and drives it with a browser-like client.
func TestREADMEApp(t *testing.T) {
	node, err := cluster.Open(cluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	store, err := client.New(client.Config{Addrs: []string{node.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s := middleware.FromContext(r.Context())
		n, _ := s.Get("visits").(float64)
		s.Set("visits", n+1)
		fmt.Fprintf(w, "visit %d\n", int(n)+1)
	})
	var lastErr atomic.Value
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		s := middleware.FromContext(r.Context())
		s.Set("blob", strings.Repeat("x", 2<<20))
		lastErr.Store(errBox{s.Save(r.Context())})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		s := middleware.FromContext(r.Context())
		for i := range 1100 {
			s.Set(fmt.Sprintf("k%d", i), i)
		}
		lastErr.Store(errBox{s.Save(r.Context())})
	})
	srv := httptest.NewServer(middleware.New(middleware.Options{Store: store})(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	for i := 1; i <= 3; i++ {
		resp, err := browser.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("visit %d\n", i); string(body) != want {
			t.Fatalf("request %d: body %q, want %q (status %d)", i, body, want, resp.StatusCode)
		}
	}
	// The session lives on the node: readable through the Kado JSON protocol.
	cookies := jar.Cookies(mustURL(t, srv.URL))
	if len(cookies) != 1 || cookies[0].Name != "session" || len(cookies[0].Value) != 40 {
		t.Fatalf("cookies = %v", cookies)
	}
	if got := kado(node.Addr(), `{"restore":{"sid":"`+cookies[0].Value+`"}}`); got != `{"status":"ok","result":{"visits":3}}` {
		t.Fatalf("the node holds %s", got)
	}
	// A session over the node's limits is the request's fault, not an
	// outage: 500 "session data could not be saved", whichever limit.
	for _, path := range []string{"/big", "/keys"} {
		resp, err := browser.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusInternalServerError || string(body) != "session data could not be saved\n" {
			t.Fatalf("%s: status %d %q, want 500 \"session data could not be saved\"", path, resp.StatusCode, body)
		}
		if err := lastErr.Load().(errBox).err; !errors.Is(err, middleware.ErrSessionTooLarge) {
			t.Fatalf("%s: Save's error %v does not wrap ErrSessionTooLarge", path, err)
		}
	}
	// With the node gone the app answers 503, never a silently lost session.
	node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	resp, err := browser.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("store down: status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// errBox holds an error, nil included, in an atomic.Value.
type errBox struct{ err error }

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
