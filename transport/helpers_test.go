package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// poll waits until cond is true, failing the test if timeout passes first.
func poll(t testing.TB, cond func() bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := 100 * time.Microsecond; !cond(); wait = min(2*wait, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(wait)
	}
}

// memHandler is an in-memory Handler. Restoring sid "block" waits until
// unblock is closed (or the request's context ends); saving sid "fail"
// returns a plain error; saving sid "follower" a CodeNotLeader *Error.
type memHandler struct {
	token   string // required Kado token, "" for none
	unblock chan struct{}
	blocked chan struct{} // receives when a request starts waiting on unblock

	mu       sync.Mutex
	sessions map[string][]byte
}

var _ Handler = (*memHandler)(nil)

func newMemHandler() *memHandler {
	return &memHandler{sessions: map[string][]byte{}, unblock: make(chan struct{}), blocked: make(chan struct{}, 16)}
}

func (h *memHandler) Restore(ctx context.Context, sid string, c Consistency) ([]byte, bool, error) {
	if sid == "block" {
		h.blocked <- struct{}{}
		select {
		case <-h.unblock:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	data, ok := h.sessions[sid]
	return data, ok, nil
}

func (h *memHandler) Save(ctx context.Context, sid string, data []byte) error {
	switch sid {
	case "fail":
		return errors.New("disk on fire")
	case "follower":
		return &Error{Code: CodeNotLeader, Message: "this node is a follower", Leader: "10.0.0.9:3001"}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sessions[sid] = append([]byte(nil), data...)
	return nil
}

func (h *memHandler) Patch(ctx context.Context, sid string, set []KV, del []string, ifExists bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string]json.RawMessage{}
	old, ok := h.sessions[sid]
	if ifExists && !ok {
		return Errorf(CodeNotFound, "session %s does not exist", sid)
	}
	if ok {
		if err := json.Unmarshal(old, &m); err != nil {
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
		return Errorf(CodeBadRequest, "patch: %v", err)
	}
	h.sessions[sid] = b
	return nil
}

func (h *memHandler) Delete(ctx context.Context, sid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.sessions, sid)
	return nil
}

func (h *memHandler) Touch(ctx context.Context, sid string) error { return nil }

func (h *memHandler) Admin(ctx context.Context, body []byte) ([]byte, error) {
	return append([]byte(`{"echo":`), append(body, '}')...), nil
}

// testServer runs a Server on 127.0.0.1:0 until the test ends, then closes
// it and checks that Serve returned ErrServerClosed.
type testServer struct {
	*Server
	addr   string
	served chan error
}

func startServer(t *testing.T, h Handler, cfg ServerConfig) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: NewServer(h, cfg), addr: ln.Addr().String(), served: make(chan error, 1)}
	go func() { ts.served <- ts.Serve(ln) }()
	t.Cleanup(func() {
		ts.Close()
		select {
		case err := <-ts.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return ts
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// kado sends one Kado JSON request the way the Kado client does (write,
// half-close) and returns the whole reply.
func kado(t *testing.T, addr, doc string) string {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Write([]byte(doc)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the reply to %q: %v (got %q)", doc, err, reply)
	}
	return string(reply)
}

// kadoError decodes an error reply and returns its message, failing the
// test if reply is anything else.
func kadoError(t *testing.T, reply string) string {
	t.Helper()
	var r struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(reply), &r); err != nil || r.Status != "error" || r.Message == "" {
		t.Fatalf("reply %q is not a Kado error reply", reply)
	}
	return r.Message
}

// nativeConn is a test client of the native protocol.
type nativeConn struct {
	t   *testing.T
	c   *net.TCPConn
	r   *bufio.Reader
	ops map[uint64]Op // request id -> op, to decode responses
}

func dialNative(t *testing.T, addr string) *nativeConn {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Write([]byte{MagicNative, VersionNative}); err != nil {
		t.Fatal(err)
	}
	return &nativeConn{t: t, c: c, r: bufio.NewReader(c), ops: map[uint64]Op{}}
}

func (n *nativeConn) send(reqs ...Request) {
	n.t.Helper()
	var buf []byte
	for i := range reqs {
		n.ops[reqs[i].ID] = reqs[i].Op
		buf = AppendRequest(buf, &reqs[i])
	}
	if _, err := n.c.Write(buf); err != nil {
		n.t.Fatal(err)
	}
}

// sendAsync sends reqs from another goroutine, so that the server may
// answer while they are being sent (a pipelining client), and returns at
// once.
func (n *nativeConn) sendAsync(reqs ...Request) {
	var buf []byte
	for i := range reqs {
		n.ops[reqs[i].ID] = reqs[i].Op
		buf = AppendRequest(buf, &reqs[i])
	}
	go func() { _, _ = n.c.Write(buf) }()
}

// bigSessionServer serves a session "big" of about size bytes, counting
// its restores.
func bigSessionServer(t *testing.T, size int, cfg ServerConfig) (*countingHandler, *testServer) {
	h := &countingHandler{memHandler: newMemHandler()}
	h.sessions["big"] = []byte(`{"pad":"` + strings.Repeat("x", size) + `"}`)
	return h, startServer(t, h, cfg)
}

func (n *nativeConn) recv() Response {
	n.t.Helper()
	resp, err := n.tryRecv()
	if err != nil {
		n.t.Fatal(err)
	}
	return resp
}

func (n *nativeConn) tryRecv() (Response, error) {
	frame, err := ReadFrame(n.r, nil, DefaultMaxFrame)
	if err != nil {
		return Response{}, err
	}
	var id uint64
	if len(frame) >= 8 {
		id = uint64(frame[0])<<56 | uint64(frame[1])<<48 | uint64(frame[2])<<40 | uint64(frame[3])<<32 |
			uint64(frame[4])<<24 | uint64(frame[5])<<16 | uint64(frame[6])<<8 | uint64(frame[7])
	}
	op, ok := n.ops[id]
	if !ok {
		op = OpPing
	}
	return DecodeResponse(frame, op)
}

// call sends one request and waits for its response.
func (n *nativeConn) call(req Request) Response {
	n.t.Helper()
	n.send(req)
	resp := n.recv()
	if resp.ID != req.ID {
		n.t.Fatalf("response id %d, want %d", resp.ID, req.ID)
	}
	return resp
}

// expectClosed asserts that the server closes the connection (after any
// bytes still in flight).
func expectClosed(t *testing.T, r io.Reader) {
	t.Helper()
	if _, err := io.Copy(io.Discard, r); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("waiting for the server to close: %v", err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func newReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
