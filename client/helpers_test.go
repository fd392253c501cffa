package client_test

import (
	"context"
	"encoding/json"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/transport"
)

// memHandler is an in-memory transport.Handler. hook, when set, runs first
// for every request and its non-nil error is returned instead.
type memHandler struct {
	calls atomic.Int64
	reads atomic.Int64 // restores among the calls
	hook  func(ctx context.Context, op transport.Op, sid string) error

	mu   sync.Mutex
	data map[string][]byte
}

func newMemHandler() *memHandler { return &memHandler{data: map[string][]byte{}} }

func (h *memHandler) enter(ctx context.Context, op transport.Op, sid string) error {
	h.calls.Add(1)
	if op == transport.OpRestore {
		h.reads.Add(1)
	}
	if h.hook != nil {
		return h.hook(ctx, op, sid)
	}
	return nil
}

func (h *memHandler) Restore(ctx context.Context, sid string, _ transport.Consistency) ([]byte, bool, error) {
	if err := h.enter(ctx, transport.OpRestore, sid); err != nil {
		return nil, false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.data[sid]
	return append([]byte(nil), d...), ok, nil
}

func (h *memHandler) Save(ctx context.Context, sid string, data []byte) error {
	if err := h.enter(ctx, transport.OpSave, sid); err != nil {
		return err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return transport.Errorf(transport.CodeBadRequest, "session data is not a JSON object")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.data[sid] = append([]byte(nil), data...)
	return nil
}

func (h *memHandler) Patch(ctx context.Context, sid string, set []transport.KV, del []string, ifExists bool) error {
	if err := h.enter(ctx, transport.OpPatch, sid); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string]json.RawMessage{}
	d, ok := h.data[sid]
	if ifExists && !ok {
		return transport.Errorf(transport.CodeNotFound, "no session %s", sid)
	}
	if ok {
		if err := json.Unmarshal(d, &m); err != nil {
			return err
		}
	}
	for _, kv := range set {
		m[kv.Key] = kv.Value
	}
	for _, k := range del {
		delete(m, k)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	h.data[sid] = b
	return nil
}

func (h *memHandler) Delete(ctx context.Context, sid string) error {
	if err := h.enter(ctx, transport.OpDelete, sid); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.data, sid)
	return nil
}

func (h *memHandler) Touch(ctx context.Context, sid string) error {
	return h.enter(ctx, transport.OpTouch, sid)
}

func (h *memHandler) Admin(ctx context.Context, body []byte) ([]byte, error) {
	if err := h.enter(ctx, transport.OpAdmin, ""); err != nil {
		return nil, err
	}
	return append([]byte(`{"echo":`), append(body, '}')...), nil
}

func (h *memHandler) Authorize(string) error { return nil }

// testServer is a transport.Server on a real loopback listener that counts
// the connections it accepts.
type testServer struct {
	addr     string
	srv      *transport.Server
	accepted atomic.Int64
	done     chan struct{}
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startServer serves h on addr ("127.0.0.1:0" for any port) until the test
// ends or stop is called.
func startServer(t testing.TB, addr string, h transport.Handler) *testServer {
	t.Helper()
	return startServerWith(t, addr, h, transport.ServerConfig{})
}

// startServerWith is startServer with the server's config.
func startServerWith(t testing.TB, addr string, h transport.Handler, cfg transport.ServerConfig) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	ts := &testServer{addr: ln.Addr().String(), srv: transport.NewServer(h, cfg), done: make(chan struct{})}
	go func() {
		defer close(ts.done)
		_ = ts.srv.Serve(countingListener{ln, &ts.accepted})
	}()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	ts.srv.Close()
	<-ts.done
}

// newStore returns a Store on cfg, closed when the test ends.
func newStore(t testing.TB, cfg client.Config) *client.Store {
	t.Helper()
	s, err := client.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// poll waits until cond holds, failing the test after timeout.
func poll(t testing.TB, cond func() bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }
