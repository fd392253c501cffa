package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/kadosession/kadosession/client"
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
	s := newStore(t, client.Config{Addrs: []string{freeAddr(t), good.addr}})
	if err := s.Delete(context.Background(), "sid"); err != nil {
		t.Fatalf("Delete with the first node down: %v", err)
	}
	if n := goodH.calls.Load(); n != 1 {
		t.Errorf("good node served %d requests; want 1", n)
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
