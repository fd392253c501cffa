package transport

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRequestContextBounds(t *testing.T) {
	srv := NewServer(newMemHandler(), ServerConfig{RequestTimeout: 2 * time.Second})
	start := time.Now()
	a := srv.requestContext(time.Now())
	b := srv.requestContext(time.Now())
	dl, ok := a.Deadline()
	if !ok {
		t.Fatal("a request context has no deadline")
	}
	// Every request gets at least RequestTimeout, and at most ctxSlot more.
	if dl.Before(start.Add(2*time.Second)) || dl.After(time.Now().Add(2*time.Second+ctxSlot)) {
		t.Fatalf("deadline %s after the request arrived, want 2s..2s+%s", dl.Sub(start), ctxSlot)
	}
	if a != b {
		t.Fatal("two requests in the same slot got different contexts")
	}
	time.Sleep(2 * ctxSlot)
	c := srv.requestContext(time.Now())
	if c == a {
		t.Fatal("a request two slots later got the old context (its deadline would be short)")
	}
	if dl, _ := c.Deadline(); dl.Sub(time.Now()) < 2*time.Second-time.Millisecond {
		t.Fatalf("a later request's deadline is only %s away", time.Until(dl))
	}
	srv.Close()
	for _, ctx := range []interface{ Done() <-chan struct{} }{a, c} {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			t.Fatal("a request context outlived the server's Close")
		}
	}
}

func TestWorkersRunEverythingAndExitWhenIdle(t *testing.T) {
	srv := NewServer(newMemHandler(), ServerConfig{})
	defer srv.Close()
	var ran atomic.Int64
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		srv.workers.run(func() { ran.Add(1); wg.Done() })
	}
	wg.Wait()
	if ran.Load() != 1000 {
		t.Fatalf("%d of 1000 tasks ran", ran.Load())
	}
	// After Close the idle workers are gone: nothing left to take a task.
	srv.Close()
	time.Sleep(50 * time.Millisecond)
	select {
	case srv.workers.tasks <- func() {}:
		t.Fatal("a worker was still waiting for tasks after Close")
	default:
	}
}
