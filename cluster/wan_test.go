package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/netdelay"
	"github.com/kadosession/kadosession/internal/testnet"
	"github.com/kadosession/kadosession/transport"
)

// newWANCluster starts n nodes that reach each other only through
// internal/netdelay proxies on link: each node advertises a proxy in front
// of its --listen port, so raft, forwarding and peer calls cross the link.
// Timeouts are the README's WAN advice. It returns the cluster and the
// proxies' addresses (node i's at i). tweak, when given, changes each
// node's Config after that.
func newWANCluster(t *testing.T, n int, link netdelay.Link, tweak ...func(*Config)) (*testCluster, []string) {
	t.Helper()
	var addrs []string
	tc := newTestCluster(t, n, func(c *Config) {
		c.Listen = testnet.ClosedAddr(t)
		p, err := netdelay.Listen("127.0.0.1:0", c.Listen, link, int64(len(addrs)+1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() }) // after the nodes: cleanups run last first
		c.Advertise = p.Addr()
		addrs = append(addrs, p.Addr())
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
		for _, f := range tweak {
			f(c)
		}
	})
	return tc, addrs
}

// TestRaftConnectsOverALinkSlowToConnect: a link of 80 ms round trips on
// which each new connection's handshake takes a second longer (its SYN was
// lost and sent again) still carries raft. Raft gives a dial 5 s; the check
// made before raft dials (which cluster the peer belongs to) allowed 1 s,
// so no raft connection was ever made and the nodes never joined.
func TestRaftConnectsOverALinkSlowToConnect(t *testing.T) {
	tc, addrs := newWANCluster(t, 3, netdelay.Link{Delay: 40 * time.Millisecond, Jitter: 5 * time.Millisecond, ConnectDelay: 1100 * time.Millisecond})
	l := tc.leader()
	f := (l + 1) % 3
	c, err := client.New(client.Config{Addrs: []string{addrs[f]}, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.SaveRaw(ctx, "wan", []byte(`{"x":1}`)); err != nil {
		t.Fatalf("save through a follower: %v", err)
	}
	got, ok, err := c.RestoreRaw(ctx, "wan")
	if err != nil || !ok || string(got) != `{"x":1}` {
		t.Fatalf("restore through a follower: %q %v %v", got, ok, err)
	}
}

// TestStatusAndHandOverOverALinkSlowToConnect: on a link of 80 ms round
// trips where each new connection takes a second longer, with the README's
// WAN timeouts, every node becomes ready, a follower's ClusterStatus finds
// every member, and a stopping leader hands leadership over. A follower's
// question for the leader's commit index had a fixed second, each peer's
// status too and the hand-over's whole round 500 ms, none enough to connect
// there: followers stayed "catching up" (not ready) for good, every member
// but the asking one was "unreachable", and the leader stopped without
// handing over, leaving the others an election.
func TestStatusAndHandOverOverALinkSlowToConnect(t *testing.T) {
	logs := map[string]*logCapture{}
	tc, _ := newWANCluster(t, 3, netdelay.Link{Delay: 40 * time.Millisecond, Jitter: 5 * time.Millisecond, ConnectDelay: 1100 * time.Millisecond},
		func(c *Config) {
			logs[c.ID] = &logCapture{}
			c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.ID, Level: hclog.Info, Output: logs[c.ID]})
		})
	l := tc.leader()
	f := (l + 1) % 3
	// Every node is ready: a follower learns, on a connection of its own,
	// the leader's commit index it must apply before it counts as caught
	// up since its start (isCaughtUp), which it asked within a fixed second.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var notReady []string
		for _, n := range tc.nodes {
			if r := n.Readiness(); !r.Ready {
				notReady = append(notReady, n.ID()+": "+r.Reason)
			}
		}
		if len(notReady) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("not ready after 15 s: %s", strings.Join(notReady, "; "))
			break
		}
	}
	// Raft reaches every follower (the hand-over's target must catch up
	// within raft's transfer timeout, an election timeout).
	mustSave(t, tc.nodes[l], "wan", `{"x":1}`)
	tc.waitQuiet()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// The follower's connections to its peers are gone, as when a link
	// resets them (a NAT's idle timeout, a peer restarted): each member's
	// status takes a new connection.
	dropPeerConns(tc.nodes[f])
	cs := tc.nodes[f].ClusterStatus(ctx)
	if len(cs.Nodes) != 3 {
		t.Errorf("status through a follower lists %d members, want 3: %+v", len(cs.Nodes), cs.Nodes)
	}
	for _, m := range cs.Nodes {
		if m.State == "unreachable" {
			t.Errorf("status through a follower: member %s is unreachable: %s", m.ID, m.Error)
		}
	}
	// Likewise the leader's, for its hand-over's status round.
	dropPeerConns(tc.nodes[l])
	id := tc.cfgs[l].ID
	tc.stop(l)
	out := logs[id].String()
	i := strings.Index(out, "handed leadership over before stopping")
	if i < 0 {
		t.Fatalf("the stopping leader did not hand over:\n%s", out)
	}
	line, _, _ := strings.Cut(out[i:], "\n")
	if !strings.Contains(line, "to=n") || strings.Contains(line, "to="+id) {
		t.Fatalf("the hand-over line does not name the successor: %s", line)
	}
}

// dropPeerConns closes n's pooled connections to other nodes, as a link
// that resets them does: its next call to each peer dials again. Raft's own
// connections stay.
func dropPeerConns(n *Node) {
	f := n.fwd
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pools {
		p.Close()
	}
	f.pools = map[string]*transport.Pool{}
}

// TestPeerWaitFollowsTheRaftTimeouts: the bounds of calls between nodes
// keep their values with the default timeouts (and shorter ones, as in
// tests), and grow with the slower of the heartbeat and election timeouts.
func TestPeerWaitFollowsTheRaftTimeouts(t *testing.T) {
	for _, tt := range []struct {
		name                string
		heartbeat, election time.Duration
		d, want             time.Duration
	}{
		{"defaults", DefaultHeartbeatTimeout, DefaultElectionTimeout, time.Second, time.Second},
		{"shorter", 50 * time.Millisecond, 50 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond},
		{"README's WAN", time.Second, time.Second, time.Second, 5 * time.Second},
		{"election only", DefaultHeartbeatTimeout, 400 * time.Millisecond, 500 * time.Millisecond, time.Second},
		{"both 300 ms", 300 * time.Millisecond, 300 * time.Millisecond, 2 * time.Second, 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{cfg: Config{HeartbeatTimeout: tt.heartbeat, ElectionTimeout: tt.election}}
			if got := n.peerWait(tt.d); got != tt.want {
				t.Fatalf("peerWait(%s) with heartbeat %s, election %s = %s, want %s", tt.d, tt.heartbeat, tt.election, got, tt.want)
			}
		})
	}
}
