package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/transport"
)

// peerTokens is one round of a rolling change: what a node presents as
// its peer token (nil: the client token) and the second token it accepts.
type peerTokens struct{ peer, accept string }

// rollPeerTokens restarts the nodes of tc one at a time into each round,
// under a steady write load through the client token, and fails unless
// after every restart a leader leads, the restarted node catches up, leads
// in turn (so that it dials the others' raft), and a write through each node
// (forwarded on peer connections) is acknowledged. It returns when every
// write the load had acknowledged is read back.
func rollPeerTokens(t *testing.T, tc *testCluster, clientTLS *tls.Config, clientTok string, rounds []peerTokens) {
	t.Helper()
	addrs := make([]string, len(tc.nodes))
	for i, n := range tc.nodes {
		addrs[i] = n.Addr()
	}
	c, err := client.New(client.Config{Addrs: addrs, Token: clientTok, TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu     sync.Mutex
		acked  []string
		fails  atomic.Int64
		wg     sync.WaitGroup
		paused atomic.Bool // the load holds off, so that the replicas can be compared
		idle   atomic.Bool // the load holds off, no write of it in flight
	)
	wg.Add(1)
	go func() { // the steady load: one write after another
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			if paused.Load() {
				idle.Store(true)
				time.Sleep(5 * time.Millisecond)
				continue
			}
			idle.Store(false)
			sid := fmt.Sprintf("load-%d", i)
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.SaveRaw(wctx, sid, []byte(fmt.Sprintf(`{"i":%d}`, i)))
			wcancel()
			if err != nil {
				fails.Add(1)
				continue
			}
			mu.Lock()
			acked = append(acked, sid)
			mu.Unlock()
		}
	}()
	stopLoad := func() { cancel(); wg.Wait() }
	defer stopLoad()
	ackedNow := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	for r, round := range rounds {
		for i := range tc.nodes {
			tc.stop(i)
			tc.cfgs[i].Server.PeerToken = []byte(round.peer)
			tc.cfgs[i].Server.AcceptPeerToken = []byte(round.accept)
			tc.start(i)
			tc.waitMembers(len(tc.nodes))
			tc.transferTo(i) // the restarted node dials the others' raft
			before := ackedNow()
			poll(t, func() bool { return ackedNow() > before }, 20*time.Second,
				fmt.Sprintf("an acknowledged write of the load after n%d's restart in round %d", i+1, r+1))
			for _, n := range tc.nodes {
				one, err := client.New(client.Config{Addrs: []string{n.Addr()}, Token: clientTok, TLSConfig: clientTLS})
				if err != nil {
					t.Fatal(err)
				}
				wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
				err = one.SaveRaw(wctx, fmt.Sprintf("via-%s-%d", n.ID(), r), []byte(`{"v":1}`))
				wcancel()
				one.Close()
				if err != nil {
					t.Fatalf("round %d, after n%d's restart: a write through %s: %v", r+1, i+1, n.ID(), err)
				}
			}
		}
		// Compared while writes keep coming, followers are always an
		// entry or so behind the leader and the replicas never agree at
		// one moment.
		paused.Store(true)
		poll(t, idle.Load, 15*time.Second, "the load to hold off")
		tc.waitSame()
		paused.Store(false)
	}
	stopLoad()
	mu.Lock()
	defer mu.Unlock()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	for _, sid := range acked {
		if _, ok, err := c.RestoreRaw(rctx, sid); err != nil || !ok {
			t.Fatalf("acknowledged write %s: found %v, %v", sid, ok, err)
		}
	}
	t.Logf("%d acknowledged writes all read back, %d failed or timed out during the restarts", len(acked), fails.Load())
}

// The rolling path from the client token to a peer token: every node
// restarted three times, one at a time, keeps a leader and every
// acknowledged write, and ends where a cluster started with the peer
// token is (TestPeerTokenSetsNodesAndAdminApart).
func TestPeerTokenRollingChange(t *testing.T) {
	clientTok, peerTok := "client-token-0123456789", "peer-token-0123456789ab"
	tc := newTestCluster(t, 3, func(c *Config) { c.Server.Token = []byte(clientTok) })
	rollPeerTokens(t, tc, nil, clientTok, []peerTokens{
		{accept: peerTok},                  // 1: accept the peer token; present the client token
		{peer: peerTok, accept: clientTok}, // 2: present the peer token; accept the client token
		{peer: peerTok},                    // 3: the peer token only
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	assertPeerTokenApart(t, ctx, tc.nodes[tc.leader()], tc.nodes[tc.follower()], clientTok, peerTok)
}

// A peer token is replaced the same way: accept the new one, present it
// (accepting the old one), drop the old one.
func TestPeerTokenRollingRotation(t *testing.T) {
	clientTok, peerTok, newPeerTok := "client-token-0123456789", "peer-token-0123456789ab", "new-peer-token-0123456789"
	tc := newTestCluster(t, 3, func(c *Config) { c.Server.Token, c.Server.PeerToken = []byte(clientTok), []byte(peerTok) })
	rollPeerTokens(t, tc, nil, clientTok, []peerTokens{
		{peer: peerTok, accept: newPeerTok},
		{peer: newPeerTok, accept: peerTok},
		{peer: newPeerTok},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := tc.nodes[tc.follower()]
	assertPeerTokenApart(t, ctx, tc.nodes[tc.leader()], f, clientTok, newPeerTok)
	// The old peer token is refused on peer connections and for admin
	// requests.
	for _, magic := range []byte{transport.MagicPeer, transport.MagicNative} {
		if c, err := transport.Dial(ctx, f.Addr(), transport.ConnConfig{Magic: magic, Token: peerTok}); err == nil {
			c.Close()
			t.Fatalf("a connection (%c) with the replaced peer token was taken", magic)
		}
	}
}

// With TLS, nodes without a peer token send no token on raft (the
// certificate makes them members); nodes that present one send it. During
// the change a node tells the two apart.
func TestPeerTokenRollingChangeWithTLS(t *testing.T) {
	ca := newTestCA(t)
	clientTok, peerTok := "client-token-0123456789", "peer-token-0123456789ab"
	tc := newTestCluster(t, 3, func(c *Config) {
		tlsNode(c, ca, ca.issue(t, c.ID))
		c.Server.Token = []byte(clientTok)
	})
	rollPeerTokens(t, tc, &tls.Config{RootCAs: ca.pool}, clientTok, []peerTokens{
		{accept: peerTok},
		{peer: peerTok, accept: clientTok},
		{peer: peerTok},
	})
	// The end state: a CA-signed certificate alone makes no peer.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := tc.nodes[tc.follower()]
	pc, err := transport.Dial(ctx, f.Addr(), transport.ConnConfig{Magic: transport.MagicPeer,
		TLSConfig: &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{ca.issue(t, "app")}}})
	if err == nil {
		resp, rerr := pc.RoundTrip(ctx, &transport.Request{Op: transport.OpAdmin, Data: []byte(`{"op":"remove","id":"n3"}`)})
		pc.Close()
		if rerr == nil && (resp.Err == nil || !strings.Contains(resp.Err.Message, "unauthorized")) {
			t.Fatalf("a peer connection with a CA-signed certificate and no token, after the change: %+v", resp)
		}
	}
}
