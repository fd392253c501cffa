package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/netdelay"
	"github.com/kadosession/kadosession/internal/testnet"
)

// newWANCluster starts n nodes that reach each other only through
// internal/netdelay proxies on link: each node advertises a proxy in front
// of its --listen port, so raft, forwarding and peer calls cross the link.
// Timeouts are the README's WAN advice. It returns the cluster and the
// proxies' addresses (node i's at i).
func newWANCluster(t *testing.T, n int, link netdelay.Link) (*testCluster, []string) {
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
