package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/testnet"
	"github.com/kadosession/kadosession/transport"
)

func TestPipeliningOnOneConnection(t *testing.T) {
	const (
		goroutines = 64
		rounds     = 30
		barrier    = 8 // requests that must be in flight at once
	)
	h := newMemHandler()
	var arrived atomic.Int64
	all := make(chan struct{})
	h.hook = func(ctx context.Context, op transport.Op, sid string) error {
		if !strings.HasPrefix(sid, "barrier") {
			return nil
		}
		if arrived.Add(1) == barrier {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("only %d requests arrived together", arrived.Load())
		}
	}
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}, PoolSize: 1})
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g < barrier {
				// These only return once all barrier requests are
				// in flight on the one connection together.
				if _, _, err := s.Restore(ctx, fmt.Sprintf("barrier%d", g)); err != nil {
					errs <- fmt.Errorf("barrier restore: %w", err)
					return
				}
			}
			sid := fmt.Sprintf("sid%d", g)
			for i := range rounds {
				want := map[string]json.RawMessage{"g": raw(fmt.Sprint(g)), "i": raw(fmt.Sprint(i))}
				if err := s.Save(ctx, sid, want); err != nil {
					errs <- err
					return
				}
				if err := s.Patch(ctx, sid, map[string]json.RawMessage{"p": raw(`"x"`)}, []string{"i"}); err != nil {
					errs <- err
					return
				}
				delete(want, "i")
				want["p"] = raw(`"x"`)
				got, found, err := s.Restore(ctx, sid)
				if err != nil || !found || !reflect.DeepEqual(got, want) {
					errs <- fmt.Errorf("goroutine %d round %d: Restore = %s, %v, %v; want %s", g, i, got, found, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := ts.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d connections; want 1 (PoolSize 1)", n)
	}
}

func TestConnectionRefused(t *testing.T) {
	addr := testnet.ClosedAddr(t)
	s := newStore(t, client.Config{Addrs: []string{addr}, MaxRetries: -1})
	err := s.Ping(context.Background())
	if want := "kadosession: connect to " + addr + ": connection refused"; err == nil || err.Error() != want {
		t.Fatalf("Ping: %v; want %q", err, want)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("errors.Is(%v, ECONNREFUSED) = false", err)
	}

	s = newStore(t, client.Config{Addrs: []string{addr}, MaxRetries: 2})
	_, _, err = s.Restore(context.Background(), "sid")
	if want := "kadosession: connect to " + addr + ": connection refused (gave up after 3 attempts)"; err == nil || err.Error() != want {
		t.Fatalf("Restore: %v; want %q", err, want)
	}

	// A context that ends while retrying says so and keeps the last failure.
	s = newStore(t, client.Config{Addrs: []string{addr}, MaxRetries: 1000})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = s.Save(ctx, "sid", nil)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "while retrying") {
		t.Fatalf("Save with a short deadline: %v", err)
	}
}

// blockingHandler blocks requests for sid "slow" until release is closed or
// their context ends, counting those that entered.
func blockingHandler() (h *memHandler, entered *atomic.Int64, release func()) {
	h = newMemHandler()
	entered = new(atomic.Int64)
	ch := make(chan struct{})
	h.hook = func(ctx context.Context, op transport.Op, sid string) error {
		if sid != "slow" {
			return nil
		}
		entered.Add(1)
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var once sync.Once
	return h, entered, func() { once.Do(func() { close(ch) }) }
}

func TestTimeoutKeepsConnection(t *testing.T) {
	h, entered, release := blockingHandler()
	defer release()
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}, PoolSize: 1, RequestTimeout: 200 * time.Millisecond})
	ctx := context.Background()

	if err := s.Save(ctx, "fast", map[string]json.RawMessage{"a": raw("1")}); err != nil {
		t.Fatalf("Save: %v", err)
	}
	start := time.Now()
	_, _, err := s.Restore(ctx, "slow")
	if want := "kadosession: restore on " + ts.addr + ": timed out after 200ms"; err == nil || err.Error() != want {
		t.Fatalf("Restore(slow): %v; want %q", err, want)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, DeadlineExceeded) = false", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Restore(slow) took %s", d)
	}
	if n := entered.Load(); n != 1 {
		t.Errorf("slow request attempted %d times; a timed-out attempt must not be retried", n)
	}

	// The caller's own deadline.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, _, err = s.Restore(cctx, "slow")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("Restore(slow) with a context deadline: %v", err)
	}

	// The connection is still usable, and the late answers are discarded.
	if _, found, err := s.Restore(ctx, "fast"); err != nil || !found {
		t.Fatalf("Restore(fast) after a timeout: %v, %v", found, err)
	}
	release()
	for i := range 20 {
		if err := s.Save(ctx, fmt.Sprint("after", i), nil); err != nil {
			t.Fatalf("Save after the late answers: %v", err)
		}
	}
	if n := ts.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d connections; want 1: a timeout must not drop the connection", n)
	}
}

func TestCloseFailsInFlightAndLaterCalls(t *testing.T) {
	h, entered, release := blockingHandler()
	defer release()
	ts := startServer(t, "127.0.0.1:0", h)
	s, err := client.New(client.Config{Addrs: []string{ts.addr}})
	if err != nil {
		t.Fatal(err)
	}
	const inflight = 5
	errs := make(chan error, inflight)
	for range inflight {
		go func() {
			_, _, err := s.Restore(context.Background(), "slow")
			errs <- err
		}()
	}
	poll(t, func() bool { return entered.Load() == inflight }, 5*time.Second)
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range inflight {
		err := <-errs
		if !errors.Is(err, client.ErrClosed) || !strings.Contains(err.Error(), "store closed while the request was in flight") {
			t.Errorf("in-flight Restore: %v; want ErrClosed", err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("in-flight calls took %s to fail after Close", d)
	}
	if err := s.Save(context.Background(), "x", nil); err != client.ErrClosed {
		t.Errorf("Save after Close: %v; want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}, PoolSize: 2, MaxRetries: -1})
	ctx := context.Background()
	want := map[string]json.RawMessage{"user": raw(`"bob"`)}
	if err := s.Save(ctx, "sid", want); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if _, _, err := s.Restore(ctx, "sid"); err != nil {
		t.Fatalf("Restore: %v", err)
	}

	ts.stop()
	// Down: the error names the address and the cause.
	err := s.Ping(ctx)
	if err == nil || !strings.Contains(err.Error(), ts.addr) {
		t.Fatalf("Ping while down: %v; want an error naming %s", err, ts.addr)
	}

	ts2 := startServer(t, ts.addr, h)
	poll(t, func() bool { return s.Ping(ctx) == nil }, 5*time.Second)
	got, found, err := s.Restore(ctx, "sid")
	if err != nil || !found || !reflect.DeepEqual(got, want) {
		t.Fatalf("Restore after restart = %s, %v, %v", got, found, err)
	}
	if ts2.accepted.Load() == 0 {
		t.Error("the restarted server saw no connection")
	}
}

func TestRetriesAcrossRestart(t *testing.T) {
	// With retries on, a call that meets the dropped connection redials
	// transparently.
	h := newMemHandler()
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}, PoolSize: 1})
	ctx := context.Background()
	if err := s.Save(ctx, "sid", nil); err != nil {
		t.Fatalf("Save: %v", err)
	}
	ts.stop()
	startServer(t, ts.addr, h)
	if _, found, err := s.Restore(ctx, "sid"); err != nil || !found {
		t.Fatalf("Restore after restart: %v, %v", found, err)
	}
}

// A token the node refuses is final, as ErrUnauthorized's doc says: it was
// retried on every node and each was taken for unreachable for a while
// (leader hints to it ignored), though any node would refuse it the same.
func TestRefusedTokenIsNotRetried(t *testing.T) {
	h := newMemHandler()
	ts := startServerWith(t, "127.0.0.1:0", h, transport.ServerConfig{Token: []byte("the-right-token")})
	s := newStore(t, client.Config{Addrs: []string{ts.addr}, Token: "a-wrong-token"})
	err := s.SaveRaw(context.Background(), "sid1", []byte(`{"a":1}`))
	if !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("save with a wrong token: %v; want ErrUnauthorized", err)
	}
	if n := ts.accepted.Load(); n != 1 {
		t.Errorf("the node saw %d connections; want 1: a refused token is not retried", n)
	}
	if strings.Contains(err.Error(), "gave up after") {
		t.Errorf("the error says it was retried: %v", err)
	}
}
