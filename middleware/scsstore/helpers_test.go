package scsstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/middleware"
)

// backend is one kadosession store the adapter is tested on, with a Lister
// over it (the store itself offers none).
type backend struct {
	name string
	open func(t *testing.T) (middleware.Store, lister)
}

// lister is a test Lister that can also be told the sids it must know.
type lister interface {
	List(ctx context.Context, prefix string) (map[string]map[string]json.RawMessage, error)
}

var backends = []backend{
	{name: "memory", open: openMemory},
	{name: "node", open: openNode},
}

// forEachBackend runs f once per backend as a subtest.
func forEachBackend(t *testing.T, f func(t *testing.T, store middleware.Store, l lister)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			store, l := b.open(t)
			f(t, store, l)
		})
	}
}

// recordingStore wraps a MemoryStore and remembers every sid saved or
// patched, which lets it list sessions by restoring each: a Lister of its
// own, for TestAllWithLister (MemoryStore implements Lister itself now).
type recordingStore struct {
	*middleware.MemoryStore
	mu   sync.Mutex
	sids map[string]bool
}

func (r *recordingStore) remember(sid string) {
	r.mu.Lock()
	r.sids[sid] = true
	r.mu.Unlock()
}

func (r *recordingStore) Save(ctx context.Context, sid string, data map[string]json.RawMessage) error {
	r.remember(sid)
	return r.MemoryStore.Save(ctx, sid, data)
}

func (r *recordingStore) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	r.remember(sid)
	return r.MemoryStore.Patch(ctx, sid, set, del)
}

func (r *recordingStore) List(ctx context.Context, prefix string) (map[string]map[string]json.RawMessage, error) {
	r.mu.Lock()
	var sids []string
	for sid := range r.sids {
		if strings.HasPrefix(sid, prefix) {
			sids = append(sids, sid)
		}
	}
	r.mu.Unlock()
	out := map[string]map[string]json.RawMessage{}
	for _, sid := range sids {
		data, found, err := r.Restore(ctx, sid)
		if err != nil {
			return nil, err
		}
		if found {
			out[sid] = data
		}
	}
	return out, nil
}

func openMemory(t *testing.T) (middleware.Store, lister) {
	m := middleware.NewMemoryStore(middleware.MemoryOptions{PruneFrequency: -1})
	t.Cleanup(func() { _ = m.Close() })
	r := &recordingStore{MemoryStore: m, sids: map[string]bool{}}
	return r, r
}

// nodeLister lists a real node's sessions from its state machine's save-file
// document: a Lister given with WithLister, for TestAllWithLister (the
// cluster client implements Lister itself now).
type nodeLister struct{ node *cluster.Node }

func (n nodeLister) List(_ context.Context, prefix string) (map[string]map[string]json.RawMessage, error) {
	var buf bytes.Buffer
	if _, err := n.node.State().Capture().WriteTo(&buf); err != nil {
		return nil, err
	}
	var doc map[string]map[string]json.RawMessage
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		return nil, err
	}
	out := map[string]map[string]json.RawMessage{}
	for sid, data := range doc {
		if strings.HasPrefix(sid, prefix) {
			delete(data, fsm.WrittenKey)
			out[sid] = data
		}
	}
	return out, nil
}

func openNode(t *testing.T) (middleware.Store, lister) {
	t.Helper()
	node, err := cluster.Open(cluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatalf("open node: %v", err)
	}
	t.Cleanup(func() { _ = node.Close() })
	poll(t, "node ready", node.Ready, 10*time.Second)
	c, err := client.New(client.Config{Addrs: []string{node.Addr()}})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, nodeLister{node}
}

// poll waits until cond holds, failing the test after timeout.
func poll(t *testing.T, what string, cond func() bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clock is a settable clock for WithClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
