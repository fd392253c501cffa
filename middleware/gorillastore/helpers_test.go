package gorillastore_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/middleware"
)

var hashKey = []byte("0123456789abcdef0123456789abcdef")

// forEachBackend runs f as a subtest on a MemoryStore and on a real node
// through the client.
func forEachBackend(t *testing.T, f func(t *testing.T, store middleware.Store)) {
	t.Run("memory", func(t *testing.T) { f(t, openMemory(t)) })
	t.Run("node", func(t *testing.T) { f(t, openNode(t)) })
}

func openMemory(t *testing.T) *middleware.MemoryStore {
	m := middleware.NewMemoryStore(middleware.MemoryOptions{PruneFrequency: -1})
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func openNode(t *testing.T) middleware.Store {
	t.Helper()
	node, err := cluster.Open(cluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatalf("open node: %v", err)
	}
	t.Cleanup(func() { _ = node.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !node.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("node not ready after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := client.New(client.Config{Addrs: []string{node.Addr()}})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newJarClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

// get fetches u and returns the body, failing on a non-200 answer.
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

// cookie returns the named cookie c's jar holds for srv, or nil.
func cookie(c *http.Client, srv *httptest.Server, name string) *http.Cookie {
	u, _ := url.Parse(srv.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == name {
			return ck
		}
	}
	return nil
}

// failingStore wraps a Store and fails its calls while down is set.
type failingStore struct {
	middleware.Store
	down atomic.Bool
}

var errDown = errors.New("store is down")

func (f *failingStore) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	if f.down.Load() {
		return nil, false, errDown
	}
	return f.Store.Restore(ctx, sid)
}

func (f *failingStore) Save(ctx context.Context, sid string, data map[string]json.RawMessage) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Save(ctx, sid, data)
}

func (f *failingStore) Delete(ctx context.Context, sid string) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Delete(ctx, sid)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
