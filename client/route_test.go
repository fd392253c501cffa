package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/testnet"
	"github.com/kadosession/kadosession/transport"
)

// followerHandler answers every request with err.
func followerHandler(err error) *memHandler {
	h := newMemHandler()
	h.hook = func(context.Context, transport.Op, string) error { return err }
	return h
}

func TestNotLeaderHintMovesToLeader(t *testing.T) {
	leaderH := newMemHandler()
	leader := startServer(t, "127.0.0.1:0", leaderH)
	followerH := followerHandler(&transport.Error{Code: transport.CodeNotLeader, Message: "not the leader", Leader: leader.addr})
	follower := startServer(t, "127.0.0.1:0", followerH)

	// Only the follower is known; the leader is learnt from its hint.
	s := newStore(t, client.Config{Addrs: []string{follower.addr}})
	ctx := context.Background()
	want := map[string]json.RawMessage{"k": raw(`"v"`)}
	if err := s.Save(ctx, "sid", want); err != nil {
		t.Fatalf("Save through a follower: %v", err)
	}
	if n := followerH.calls.Load(); n != 1 {
		t.Errorf("follower served %d requests; want 1", n)
	}
	for range 10 {
		got, found, err := s.Restore(ctx, "sid")
		if err != nil || !found || !reflect.DeepEqual(got, want) {
			t.Fatalf("Restore = %s, %v, %v", got, found, err)
		}
	}
	if n := followerH.calls.Load(); n != 1 {
		t.Errorf("follower served %d requests; want 1: later calls must go to the leader", n)
	}
	if n := leaderH.calls.Load(); n != 11 {
		t.Errorf("leader served %d requests; want 11", n)
	}
}

func TestUnavailableMovesToNextNode(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"unavailable", transport.Errorf(transport.CodeUnavailable, "no leader")},
		{"not leader without hint", transport.Errorf(transport.CodeNotLeader, "not the leader")},
		{"overloaded", transport.Errorf(transport.CodeOverloaded, "too many requests")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			badH := followerHandler(tt.err)
			bad := startServer(t, "127.0.0.1:0", badH)
			goodH := newMemHandler()
			good := startServer(t, "127.0.0.1:0", goodH)
			s := newStore(t, client.Config{Addrs: []string{bad.addr, good.addr}})
			ctx := context.Background()
			for range 5 {
				if err := s.Touch(ctx, "sid"); err != nil {
					t.Fatalf("Touch: %v", err)
				}
			}
			if n := badH.calls.Load(); n != 1 {
				t.Errorf("failing node served %d requests; want 1", n)
			}
			if n := goodH.calls.Load(); n != 5 {
				t.Errorf("good node served %d requests; want 5", n)
			}
		})
	}
}

func TestDeadNodeIsSkipped(t *testing.T) {
	goodH := newMemHandler()
	good := startServer(t, "127.0.0.1:0", goodH)
	s := newStore(t, client.Config{Addrs: []string{testnet.ClosedAddr(t), good.addr}})
	if err := s.Delete(context.Background(), "sid"); err != nil {
		t.Fatalf("Delete with the first node down: %v", err)
	}
	if n := goodH.calls.Load(); n != 1 {
		t.Errorf("good node served %d requests; want 1", n)
	}
}

// TestNoRetriesStillMovesOn: with retries off a call fails on the node it
// went to, but the next call goes to the next node (or the leader named):
// before, every call went to the dead node, healthy ones listed after it.
func TestNoRetriesStillMovesOn(t *testing.T) {
	tests := []struct {
		name string
		bad  func(t *testing.T) string
	}{
		{"dead node", func(t *testing.T) string { return testnet.ClosedAddr(t) }},
		{"removed node", func(t *testing.T) string {
			return startServer(t, "127.0.0.1:0", followerHandler(transport.Errorf(transport.CodeUnavailable, "node is not a member of the cluster (it was removed)"))).addr
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			goodH := newMemHandler()
			good := startServer(t, "127.0.0.1:0", goodH)
			s := newStore(t, client.Config{Addrs: []string{tt.bad(t), good.addr}, MaxRetries: -1})
			ctx := context.Background()
			if err := s.Touch(ctx, "sid"); err == nil {
				t.Fatal("the first call, on the bad node, succeeded")
			}
			for i := range 3 {
				if err := s.Touch(ctx, "sid"); err != nil {
					t.Fatalf("call %d after the failure: %v", i+2, err)
				}
			}
			if n := goodH.calls.Load(); n != 3 {
				t.Errorf("good node served %d requests; want 3", n)
			}
		})
	}
}

// TestRetriesEndWithinTheWindow: however many retries are allowed, a call
// stops retrying once its retry window (45 s; a node recognises a retried
// write for a minute) has passed since its first attempt.
func TestRetriesEndWithinTheWindow(t *testing.T) {
	client.SetRetryWindow(t, 300*time.Millisecond)
	bad := startServer(t, "127.0.0.1:0", followerHandler(transport.Errorf(transport.CodeUnavailable, "no leader")))
	s := newStore(t, client.Config{Addrs: []string{bad.addr}, MaxRetries: 1000})
	start := time.Now()
	err := s.Touch(context.Background(), "sid")
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "applied twice") {
		t.Fatalf("Touch = %v; want ErrUnavailable, giving up for the window", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Touch retried for %s with a window of 300ms", d)
	}
}

func TestHintLoopGivesUp(t *testing.T) {
	// Two nodes that each name the other: the client follows the hints
	// until its retries run out, then reports the node's error.
	var aAddr, bAddr string
	aH := newMemHandler()
	bH := newMemHandler()
	aH.hook = func(context.Context, transport.Op, string) error {
		return &transport.Error{Code: transport.CodeNotLeader, Message: "not the leader", Leader: bAddr}
	}
	bH.hook = func(context.Context, transport.Op, string) error {
		return &transport.Error{Code: transport.CodeNotLeader, Message: "not the leader", Leader: aAddr}
	}
	a := startServer(t, "127.0.0.1:0", aH)
	b := startServer(t, "127.0.0.1:0", bH)
	aAddr, bAddr = a.addr, b.addr
	s := newStore(t, client.Config{Addrs: []string{a.addr}, MaxRetries: 3})
	err := s.Touch(context.Background(), "sid")
	if !errors.Is(err, client.ErrNotLeader) {
		t.Fatalf("Touch: %v; want ErrNotLeader", err)
	}
	var te *transport.Error
	if !errors.As(err, &te) || te.Leader == "" {
		t.Errorf("errors.As: %v, leader %q", te, te.Leader)
	}
	if n := aH.calls.Load() + bH.calls.Load(); n != 4 {
		t.Errorf("%d attempts; want 4", n)
	}
}

func TestLeaderHintOnSuccessMovesToLeader(t *testing.T) {
	tests := []struct {
		name  string
		hint  func(a, b string) string // the Leader A's successful answers carry
		wantA int64                    // calls A serves out of 1+5
		wantB int64
	}{
		{"follows the leader", func(a, b string) string { return b }, 1, 5},
		{"no hint", func(a, b string) string { return "" }, 6, 0},
		{"hint naming the node itself", func(a, b string) string { return a }, 6, 0},
		{"invalid hint", func(a, b string) string { return "not-an-address" }, 6, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bH := newMemHandler()
			b := startServer(t, "127.0.0.1:0", bH)
			aH := newMemHandler()
			var aAddr string
			aH.hook = func(ctx context.Context, _ transport.Op, _ string) error {
				// A serves the request (as a follower forwarding it would)
				// and names the leader in its successful answer.
				if h := tt.hint(aAddr, b.addr); h != "" {
					transport.SetLeaderHint(ctx, h)
				}
				return nil
			}
			a := startServer(t, "127.0.0.1:0", aH)
			aAddr = a.addr
			s := newStore(t, client.Config{Addrs: []string{a.addr}})
			ctx := context.Background()
			if err := s.Save(ctx, "sid", map[string]json.RawMessage{"k": raw(`"v"`)}); err != nil {
				t.Fatalf("Save through A: %v", err)
			}
			if n := aH.calls.Load(); n != 1 {
				t.Fatalf("A served %d requests; want 1", n)
			}
			for range 5 {
				if err := s.Touch(ctx, "sid"); err != nil {
					t.Fatalf("Touch: %v", err)
				}
			}
			if n := aH.calls.Load(); n != tt.wantA {
				t.Errorf("A served %d requests; want %d", n, tt.wantA)
			}
			if n := bH.calls.Load(); n != tt.wantB {
				t.Errorf("B served %d requests; want %d", n, tt.wantB)
			}
		})
	}
}

// hostView is a Dialer that sees the nodes as a host sees containers
// publishing their ports: it reaches 127.0.0.1 addresses, while the names
// the nodes advertise (*.internal) do not resolve. It counts its dials to
// those names.
type hostView struct{ unresolved atomic.Int64 }

func (h *hostView) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if host, _, _ := net.SplitHostPort(addr); strings.HasSuffix(host, ".internal") {
		h.unresolved.Add(1)
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// TestUnreachableLeaderHintIsNotFollowed: the nodes name the leader by an
// address the client cannot connect to (a container's name, seen from the
// host). A node that forwards answers with that hint, and one that cannot
// forward answers not-leader with it. After one failed connection the
// client stops following the hint for a while: its calls go to the nodes
// it reaches, and succeed, instead of each paying a failed connection.
func TestUnreachableLeaderHintIsNotFollowed(t *testing.T) {
	const hint = "n1.internal:3001"
	client.SetHintPause(t, time.Second)
	tests := []struct {
		name   string
		hook   func(ctx context.Context, _ transport.Op, _ string) error
		addrs  func(a, b string) []string
		served int64 // requests the nodes serve for 20 calls
		again  int64 // connections tried to the hint after hintPause
	}{
		// A serves every call, and names the leader each time: once
		// hintPause has passed, the hint is tried again.
		{"hint on a forwarded answer", func(ctx context.Context, _ transport.Op, _ string) error {
			transport.SetLeaderHint(ctx, hint)
			return nil
		}, func(a, b string) []string { return []string{a} }, 20, 2},
		// A refuses the first call twice (before and after the failed
		// connection); B serves all 20 and names no leader.
		{"hint on not-leader", func(context.Context, transport.Op, string) error {
			return &transport.Error{Code: transport.CodeNotLeader, Message: "not the leader", Leader: hint}
		}, func(a, b string) []string { return []string{a, b} }, 22, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			aH := newMemHandler()
			aH.hook = tt.hook
			a := startServer(t, "127.0.0.1:0", aH)
			bH := newMemHandler()
			b := startServer(t, "127.0.0.1:0", bH)
			view := &hostView{}
			s := newStore(t, client.Config{Addrs: tt.addrs(a.addr, b.addr), Dialer: view.dial})
			ctx := context.Background()
			touch := func(n int) {
				t.Helper()
				for range n {
					if err := s.Touch(ctx, "sid"); err != nil {
						t.Fatalf("Touch: %v", err)
					}
				}
			}
			touch(20)
			if n := view.unresolved.Load(); n != 1 {
				t.Errorf("%d connections to %s in 20 calls; want 1 (then the hint is not followed)", n, hint)
			}
			if n := aH.calls.Load() + bH.calls.Load(); n != tt.served {
				t.Errorf("the nodes served %d requests for 20 calls; want %d", n, tt.served)
			}
			time.Sleep(1100 * time.Millisecond) // hintPause
			touch(3)
			if n := view.unresolved.Load(); n != tt.again {
				t.Errorf("%d connections to %s in all, after hintPause; want %d", n, hint, tt.again)
			}
		})
	}
}

// threeNodes starts a leader and two followers, each holding session sid,
// and returns their handlers and addresses (the leader first).
func threeNodes(t *testing.T, sid string) ([]*memHandler, []string) {
	var hs []*memHandler
	var addrs []string
	for range 3 {
		h := newMemHandler()
		h.data[sid] = []byte(`{"k":"v"}`)
		hs = append(hs, h)
		addrs = append(addrs, startServer(t, "127.0.0.1:0", h).addr)
	}
	return hs, addrs
}

func TestReadRouting(t *testing.T) {
	tests := []struct {
		name   string
		cfg    client.Config
		leader int64   // reads the leader serves, of 40
		fols   []int64 // reads the followers serve, fewest first
	}{
		{"default", client.Config{}, 40, []int64{0, 0}},
		{"follower reads", client.Config{Reads: client.ReadFollower}, 0, []int64{0, 40}},
		{"follower reads, stale", client.Config{Reads: client.ReadFollower, Consistency: client.Stale}, 0, []int64{0, 40}},
		{"follower reads, leader consistency", client.Config{Reads: client.ReadFollower, Consistency: client.Leader}, 40, []int64{0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs, addrs := threeNodes(t, "sid")
			cfg := tt.cfg
			cfg.Addrs = addrs
			s := newStore(t, cfg)
			ctx := context.Background()
			for range 40 {
				if _, found, err := s.Restore(ctx, "sid"); err != nil || !found {
					t.Fatalf("Restore: %v, %v", found, err)
				}
				if err := s.Touch(ctx, "sid"); err != nil {
					t.Fatalf("Touch: %v", err)
				}
			}
			fols := []int64{hs[1].reads.Load(), hs[2].reads.Load()}
			slices.Sort(fols)
			if l := hs[0].reads.Load(); l != tt.leader || !slices.Equal(fols, tt.fols) {
				t.Errorf("reads served by the leader: %d, by the followers: %v; want %d and %v", l, fols, tt.leader, tt.fols)
			}
			if n := hs[0].calls.Load() - hs[0].reads.Load(); n != 40 {
				t.Errorf("the leader served %d writes, want 40: writes go to the leader", n)
			}
		})
	}
}

// TestFailingReaderIsLeftOut: a follower that fails a read is left out
// (the read is retried on the leader at once, later reads go to the other
// follower); after the pause one read tries it again, and reads go back to
// it once it serves them.
func TestFailingReaderIsLeftOut(t *testing.T) {
	// A pause far longer than 20 reads take, even under -race on a busy
	// machine: the counts below are exact.
	client.SetReaderPause(t, 500*time.Millisecond)
	hs, addrs := threeNodes(t, "sid")
	var broken atomic.Pointer[memHandler]
	for _, h := range hs[1:] {
		h.hook = func(_ context.Context, op transport.Op, _ string) error {
			if broken.Load() == h {
				return transport.Errorf(transport.CodeUnavailable, "catching up")
			}
			return nil
		}
	}
	s := newStore(t, client.Config{Addrs: addrs, Reads: client.ReadFollower})
	ctx := context.Background()
	// reads makes n reads and returns how many the leader, the Store's own
	// follower and the other one served.
	var own, other *memHandler
	reads := func(n int) []int64 {
		t.Helper()
		before := []int64{hs[0].reads.Load(), own.reads.Load(), other.reads.Load()}
		for range n {
			if _, found, err := s.Restore(ctx, "sid"); err != nil || !found {
				t.Fatalf("Restore with a follower failing: %v, %v", found, err)
			}
		}
		return []int64{hs[0].reads.Load() - before[0], own.reads.Load() - before[1], other.reads.Load() - before[2]}
	}
	own, other = hs[1], hs[2]
	if got := reads(1); got[2] == 1 {
		own, other = other, own
	}
	broken.Store(own)
	if got := reads(20); !slices.Equal(got, []int64{1, 1, 19}) {
		t.Errorf("reads served (leader, failing follower, other) = %v, want [1 1 19]: one failure, retried on the leader, then the other follower", got)
	}
	time.Sleep(600 * time.Millisecond)
	if got := reads(20); !slices.Equal(got, []int64{1, 1, 19}) {
		t.Errorf("after the pause, still failing: %v, want [1 1 19]: one read tries it again", got)
	}
	broken.Store(nil)
	time.Sleep(600 * time.Millisecond)
	if got := reads(20); !slices.Equal(got, []int64{0, 20, 0}) {
		t.Errorf("after the pause, healthy again: %v, want [0 20 0]: back on it", got)
	}
}

func TestDeadFollowerReadsGoElsewhere(t *testing.T) {
	h := newMemHandler()
	h.data["sid"] = []byte(`{}`)
	leader := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{leader.addr, testnet.ClosedAddr(t)}, Reads: client.ReadFollower})
	for range 5 {
		if _, found, err := s.Restore(context.Background(), "sid"); err != nil || !found {
			t.Fatalf("Restore with the only follower down: %v, %v", found, err)
		}
	}
	if n := h.reads.Load(); n != 5 {
		t.Errorf("the leader served %d reads, want 5", n)
	}
}

// TestFailedFollowerReadFallsBack: a read that fails on the Store's
// follower goes to the leader at once (no backoff: within a deadline
// shorter than the shortest one), also when the follower does not answer
// in time, and also with retries disabled.
func TestFailedFollowerReadFallsBack(t *testing.T) {
	tests := []struct {
		name string
		cfg  client.Config
		hook func(context.Context) error
		ctx  time.Duration // the read's deadline (0: none)
	}{
		{"unavailable", client.Config{}, func(context.Context) error {
			return transport.Errorf(transport.CodeUnavailable, "catching up")
		}, 9 * time.Millisecond},
		{"retries disabled", client.Config{MaxRetries: -1}, func(context.Context) error {
			return transport.Errorf(transport.CodeUnavailable, "catching up")
		}, 0},
		{"no answer in time", client.Config{RequestTimeout: 100 * time.Millisecond}, func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs, addrs := threeNodes(t, "sid")
			for _, h := range hs[1:] {
				h.hook = func(ctx context.Context, op transport.Op, _ string) error {
					if op == transport.OpRestore {
						return tt.hook(ctx)
					}
					return nil
				}
			}
			// A deadline shorter than the shortest backoff (10 ms) holds only
			// if the leader is asked at once; a loaded machine gets 5 tries.
			var err error
			for range 5 {
				cfg := tt.cfg
				cfg.Addrs, cfg.Reads = addrs, client.ReadFollower
				s := newStore(t, cfg)
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if tt.ctx > 0 {
					ctx, cancel = context.WithTimeout(ctx, tt.ctx)
				}
				_, _, err = s.Restore(ctx, "sid")
				cancel()
				if err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("Restore with the follower failing: %v", err)
			}
			if n := hs[0].reads.Load(); n == 0 {
				t.Error("the leader served no read")
			}
		})
	}
}

// TestOneReadProbesAPausedFollower: when a failing follower's pause ends,
// one read tries it; the reads made meanwhile skip it.
func TestOneReadProbesAPausedFollower(t *testing.T) {
	client.SetReaderPause(t, 400*time.Millisecond) // longer than the 14 reads around the probes take
	hs, addrs := threeNodes(t, "sid")
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the servers stop, should the test fail early
	var probing atomic.Bool
	for _, h := range hs[1:] {
		h.hook = func(_ context.Context, op transport.Op, _ string) error {
			if op != transport.OpRestore {
				return nil
			}
			if probing.Load() {
				<-release // the probe holds on while the others read
			}
			return transport.Errorf(transport.CodeUnavailable, "catching up")
		}
	}
	s := newStore(t, client.Config{Addrs: addrs, Reads: client.ReadFollower})
	ctx := context.Background()
	for range 2 { // each follower fails once and is paused
		if _, _, err := s.Restore(ctx, "sid"); err != nil {
			t.Fatal(err)
		}
	}
	before := hs[1].reads.Load() + hs[2].reads.Load()
	time.Sleep(500 * time.Millisecond)
	probing.Store(true)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, _, err := s.Restore(ctx, "sid"); err != nil {
				t.Error(err)
			}
		})
	}
	poll(t, func() bool { return hs[1].reads.Load()+hs[2].reads.Load()-before >= 2 && hs[0].reads.Load() >= 14 }, 5*time.Second)
	free()
	wg.Wait()
	if n := hs[1].reads.Load() + hs[2].reads.Load() - before; n != 2 {
		t.Errorf("16 reads after the pause sent %d to the paused followers, want 2: one probe each", n)
	}
}
