package cluster

import (
	"context"
	"slices"
	"testing"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/middleware"
)

// TestUserIndexAcrossSnapshotAndRestart: sessions tagged with a user are
// listed and revoked cluster-wide through any node, and the index survives
// a snapshot plus a restart of every node.
func TestUserIndexAcrossSnapshotAndRestart(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	c, err := client.New(client.Config{Addrs: []string{tc.nodes[tc.follower()].Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var _ middleware.UserStore = c
	ctx := context.Background()
	for _, s := range []struct{ sid, user string }{{"s1", "alice"}, {"s2", "alice"}, {"s3", "bob"}, {"s4", ""}} {
		data := `{"n":1}`
		if s.user != "" {
			data = `{"_user":"` + s.user + `","n":1}`
		}
		mustSave(t, tc.nodes[tc.leader()], s.sid, data)
	}
	if err := tc.nodes[tc.leader()].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tc.closeAll()
	for i := range tc.nodes {
		tc.start(i)
	}
	tc.waitMembers(3)
	got, err := c.UserSessions(ctx, "alice")
	if err != nil || !slices.Equal(got, []string{"s1", "s2"}) {
		t.Fatalf("alice after snapshot and restart: %v %v", got, err)
	}
	n, err := c.RevokeUser(ctx, "alice")
	if err != nil || n != 2 {
		t.Fatalf("revoke alice: %d %v", n, err)
	}
	tc.waitSame()
	for _, node := range tc.nodes {
		if node.State().Len() != 2 {
			t.Fatalf("node %s holds %d sessions after revoking alice", node.ID(), node.State().Len())
		}
	}
	if got, _ := c.UserSessions(ctx, "bob"); !slices.Equal(got, []string{"s3"}) {
		t.Fatalf("bob: %v", got)
	}
}
