package middleware

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/hashicorp/go-hclog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for MemoryOptions.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.UnixMilli(1_795_629_654_509)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newStore returns a MemoryStore with no background pruning, closed with
// the test.
func newStore(t *testing.T) *MemoryStore {
	t.Helper()
	m := NewMemoryStore(MemoryOptions{PruneFrequency: -1})
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// lockedBuffer is a log sink safe for the server's goroutines and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(buf *lockedBuffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: buf, Level: hclog.Debug})
}

// countingStore counts the calls that reach the store it wraps, and can be
// told to fail them.
type countingStore struct {
	Store
	restores, saves, patches, deletes, touches atomic.Int32
	failRestore, failWrite                     atomic.Bool
}

var errDown = errors.New("store is down")

func (c *countingStore) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	c.restores.Add(1)
	if c.failRestore.Load() {
		return nil, false, errDown
	}
	return c.Store.Restore(ctx, sid)
}

func (c *countingStore) Save(ctx context.Context, sid string, data map[string]json.RawMessage) error {
	c.saves.Add(1)
	if c.failWrite.Load() {
		return errDown
	}
	return c.Store.Save(ctx, sid, data)
}

func (c *countingStore) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	c.patches.Add(1)
	if c.failWrite.Load() {
		return errDown
	}
	return c.Store.Patch(ctx, sid, set, del)
}

func (c *countingStore) Delete(ctx context.Context, sid string) error {
	c.deletes.Add(1)
	if c.failWrite.Load() {
		return errDown
	}
	return c.Store.Delete(ctx, sid)
}

func (c *countingStore) Touch(ctx context.Context, sid string) error {
	c.touches.Add(1)
	if c.failWrite.Load() {
		return errDown
	}
	return c.Store.Touch(ctx, sid)
}

func (c *countingStore) writes() int32 {
	return c.saves.Load() + c.patches.Load() + c.deletes.Load() + c.touches.Load()
}

// server is an httptest.Server running handler behind the middleware, with
// a client that keeps cookies and follows redirects.
type server struct {
	*httptest.Server
	client *http.Client
	jar    http.CookieJar
}

func newServer(t *testing.T, opts Options, handler http.Handler) *server {
	t.Helper()
	ts := httptest.NewServer(New(opts)(handler))
	t.Cleanup(ts.Close)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := ts.Client()
	c.Jar = jar
	c.Timeout = 10 * time.Second
	return &server{Server: ts, client: c, jar: jar}
}

// get fetches path and returns the response with its body read.
func (s *server) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	resp, err := s.client.Get(s.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp, b.String()
}

// sid returns the session cookie the client's jar holds, or "".
func (s *server) sid(t *testing.T, name string) string {
	t.Helper()
	u, _ := url.Parse(s.URL)
	for _, c := range s.jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

// setSID plants a session cookie in the client's jar.
func (s *server) setSID(t *testing.T, name, value string) {
	t.Helper()
	u, _ := url.Parse(s.URL)
	s.jar.SetCookies(u, []*http.Cookie{{Name: name, Value: value, Path: "/"}})
}

// restoreString returns the string stored under key in sid, failing the
// test when it is absent.
func restoreString(t *testing.T, st Store, sid, key string) string {
	t.Helper()
	data, found, err := st.Restore(context.Background(), sid)
	if err != nil || !found {
		t.Fatalf("Restore(%.8s…) = found %v, err %v; want the session", sid, found, err)
	}
	var v string
	if err := json.Unmarshal(data[key], &v); err != nil {
		t.Fatalf("key %q = %s: %v", key, data[key], err)
	}
	return v
}

// visitLoginMux routes /visit (sets "cart" to "1": a visitor's session)
// and /login (logs "alice" in); tests add routes of their own.
func visitLoginMux(t *testing.T) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/visit", setHandler("cart", "1"))
	mux.HandleFunc("/login", loginHandler(t, "alice"))
	return mux
}

// loginHandler logs the request's session in: SetUser(user) unless user is
// "", then Regenerate, failing the test if it fails.
func loginHandler(t *testing.T, user string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		if user != "" {
			s.SetUser(user)
		}
		if err := s.Regenerate(r.Context()); err != nil {
			t.Error(err)
		}
	}
}
