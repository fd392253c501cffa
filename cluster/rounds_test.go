package cluster

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestRoundsServeWhatArrivedBeforeThem: a caller that says when its request
// arrived is served by a finished or running round that started after then,
// without a round of its own; one that arrived later, or does not say,
// joins the next round; and a round whose value no longer holds (a term
// that has ended) is not reused, so a read retried after a term change is
// not handed the old term again and again.
func TestRoundsServeWhatArrivedBeforeThem(t *testing.T) {
	var calls, term atomic.Uint64
	term.Store(5)
	release := make(chan struct{}, 10)
	rs := &rounds{
		do: func() (uint64, error) {
			calls.Add(1)
			<-release
			return term.Load(), nil
		},
		holds: func(v uint64) bool { return v == term.Load() },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	join := func(arrived time.Time) uint64 {
		t.Helper()
		v, err := rs.join(ctx, arrived)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	early := time.Now()
	time.Sleep(time.Millisecond) // the first round starts after early
	release <- struct{}{}
	if v := join(time.Time{}); v != 5 || calls.Load() != 1 {
		t.Fatalf("first round: %d after %d calls; want 5 after 1", v, calls.Load())
	}
	if v := join(early); v != 5 || calls.Load() != 1 {
		t.Fatalf("a caller that arrived before the finished round: %d after %d calls; want that round's 5, no new call", v, calls.Load())
	}
	release <- struct{}{}
	if v := join(time.Now()); v != 5 || calls.Load() != 2 {
		t.Fatalf("a caller that arrived after it: %d after %d calls; want a new round", v, calls.Load())
	}

	// A running round serves a caller that arrived before it started.
	late := make(chan uint64)
	go func() { v, _ := rs.join(ctx, time.Time{}); late <- v }()
	for calls.Load() != 3 {
		time.Sleep(100 * time.Microsecond)
	}
	joined := make(chan uint64)
	go func() { v, _ := rs.join(ctx, early); joined <- v }()
	time.Sleep(10 * time.Millisecond) // it waits for the running round
	release <- struct{}{}
	if a, b := <-late, <-joined; a != 5 || b != 5 || calls.Load() != 3 {
		t.Fatalf("running round: %d and %d after %d calls; want 5 and 5 from one round (3 calls)", a, b, calls.Load())
	}

	// A new term: the last round's term no longer holds.
	term.Store(7)
	release <- struct{}{}
	if v := join(early); v != 7 || calls.Load() != 4 {
		t.Fatalf("after a term change: %d after %d calls; want a new round's 7", v, calls.Load())
	}
}
