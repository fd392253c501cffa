package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// logVersionsIn returns, for node n's raft log, how many commands it holds
// of each log version.
func logVersionsIn(t *testing.T, n *Node) map[int]int {
	t.Helper()
	out := map[int]int{}
	logCommands(t, n, func(_ raft.Log, c fsm.Command) { out[c.LogVersion()]++ })
	return out
}

// TestRollingUpgradeKeepsTheOldLogFormat: a cluster of builds that report
// no log version (version 0, stood in for by Config.logVersion) is
// upgraded one member at a time. While one member runs the old build, a
// leader of the new one writes nothing that member could not apply (it
// would stop there): a patch of a loaded session, a revoke and a prune
// take their older forms, and an older build is refused as a new member.
// Once every member runs the new build, the new forms are used.
func TestRollingUpgradeKeepsTheOldLogFormat(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.logVersion = -1
		c.Duration = 3 * time.Second
		c.PruneFrequency = time.Hour
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	upgrade := func(i int) {
		t.Helper()
		tc.stop(i)
		tc.cfgs[i].logVersion = 0
		tc.start(i)
		tc.waitMembers(3)
		tc.waitSame()
	}
	upgrade(0)
	upgrade(1)
	tc.transferTo(0)
	l := tc.nodes[tc.leader()]
	if l.ID() == "n3" {
		t.Fatal("the old build leads")
	}
	patches := 0
	writes := func() (patchErr error) {
		t.Helper()
		for _, sid := range []string{"a1", "a2"} {
			mustSave(t, l, sid, `{"_user":"alice"}`)
		}
		mustSave(t, l, "old", `{"x":1}`)
		time.Sleep(3100 * time.Millisecond) // "old", a1, a2 expire
		mustSave(t, l, "a3", `{"_user":"alice"}`)
		if _, err := l.revokeUser(ctx, "alice", fsm.RequestID{7}); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		if _, err := l.Prune(ctx); err != nil {
			t.Fatalf("prune: %v", err)
		}
		// A patch of a session the request had loaded, which is gone, at
		// the leader and through an upgraded follower.
		kv := []transport.KV{{Key: "k", Value: []byte(`1`)}}
		err := l.Patch(ctx, "gone", kv, nil, true)
		patches = 1
		for _, n := range tc.nodes {
			if n != l && n.ownLogVersion() == fsm.LogVersion {
				err = errors.Join(err, n.Patch(ctx, "gone-"+n.ID(), kv, nil, true))
				patches++
			}
		}
		return err
	}
	if err := writes(); err != nil {
		t.Fatalf("mid-upgrade, a patch of a loaded session that is gone creates it, as the old build did: %v", err)
	}
	tc.waitSame()
	if got := logVersionsIn(t, tc.nodes[2]); got[1] != 0 {
		t.Fatalf("mid-upgrade the old build's log holds commands of version 1, at which it would stop: %v", got)
	}

	// An older build does not join.
	old := startNode(t, Config{ID: "n4", logVersion: -1})
	_, err := l.Join(ctx, "n4", old.Addr(), "")
	if err == nil || !strings.Contains(err.Error(), "older build") {
		t.Fatalf("join of an older build: %v", err)
	}
	old.Close()
	// Nor does a new build taking over n3's id at another address (it
	// holds a cluster of its own): its answer is not n3's.
	other := startNode(t, Config{ID: "n3"})
	if _, err := l.Join(ctx, "n3", other.Addr(), ""); err == nil {
		t.Fatal("a node of another cluster joined")
	}
	other.Close()
	time.Sleep(2 * peerProbeInterval)
	for _, n := range tc.nodes {
		if f := n.versionFloor.Load(); f != 0 {
			t.Fatalf("%s raised its floor to %d with n3 on the old build", n.ID(), f)
		}
	}
	// The leader as it is now: seconds have passed, and on a loaded
	// machine leadership moved once in that time ("not the leader").
	if _, err := tc.nodes[tc.leader()].revokeUser(ctx, "alice", fsm.RequestID{8}); err != nil {
		t.Fatal(err)
	}
	tc.waitSame()
	if got := logVersionsIn(t, tc.nodes[2]); got[1] != 0 {
		t.Fatalf("after a refused join under its id, the old build's log holds commands of version 1: %v", got)
	}

	upgrade(2)
	l = tc.nodes[tc.leader()]
	if v, behind := l.clusterLogVersion(ctx); v != fsm.LogVersion {
		t.Fatalf("every member upgraded: cluster log version %d (%s behind)", v, behind)
	}
	before := logVersionsIn(t, l)[1]
	err = writes()
	if err == nil || strings.Count(err.Error(), "does not exist") != patches {
		t.Fatalf("upgraded, patches of a loaded session that is gone, at the leader and through followers: %v, want %d not found", err, patches)
	}
	// The revoke, the expire and the patch.
	if got := logVersionsIn(t, l)[1] - before; got < 1 {
		t.Fatalf("upgraded: %d new commands of version 1", got)
	}
}

// TestUpgradedClusterKeepsTheNewFormatWithAMemberDown: once every member
// reported the new version, a member that is down does not take the
// cluster back to the old format: not at a new leader after the leader
// crashed, nor at a node restarted meanwhile (its floor is on disk), and a
// member that does not answer does not slow a revoke. A review's drill saw
// a new leader drop to version 0 for as long as the crashed one was down.
func TestUpgradedClusterKeepsTheNewFormatWithAMemberDown(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	for i := range tc.nodes {
		n := tc.nodes[i]
		poll(t, func() bool { return n.versionFloor.Load() == fsm.LogVersion }, 10*time.Second, n.ID()+" learning that every member applies version 1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := tc.leader()
	tc.crash(l)
	// Restart another member, so that it has heard from no one since.
	r := (l + 1) % 3
	tc.stop(r)
	if v := tc.start(r).commit.logVersion(); v != fsm.LogVersion {
		t.Fatalf("just restarted, the committer allows log version %d; its floor on disk is %d", v, fsm.LogVersion)
	}
	tc.transferTo(r)
	n := tc.nodes[r]
	if v, behind := n.cachedLogVersion(ctx); v != fsm.LogVersion {
		t.Fatalf("a restarted leader with a member down: cluster log version %d (%s behind)", v, behind)
	}
	err := n.Patch(ctx, "gone", []transport.KV{{Key: "k", Value: []byte(`1`)}}, nil, true)
	var te *transport.Error
	if !errors.As(err, &te) || te.Code != transport.CodeNotFound {
		t.Fatalf("a patch of a loaded session that is gone, with a member down: %v, want not found", err)
	}
	mustSave(t, n, "a1", `{"_user":"alice"}`)
	start := time.Now()
	if c, err := n.revokeUser(ctx, "alice", fsm.RequestID{5}); err != nil || c != 1 {
		t.Fatalf("revoke with a member down: %d, %v", c, err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("a revoke with a member down took %s: it waited for that member", took)
	}
	if got := logVersionsIn(t, n)[1]; got < 2 {
		t.Fatalf("with a member down, %d commands of version 1 in the leader's log; want the patch and the revoke", got)
	}
	// A member that answers with an older version is believed over the
	// floor: it would stop at a newer entry.
	o := 3 - l - r
	tc.stop(o)
	tc.cfgs[o].logVersion = -1
	tc.start(o)
	poll(t, func() bool { return n.foundLogVersion() == 0 }, 10*time.Second, "the leader believing a member that answers with version 0")
}

// TestFloorWaitsForACommittedConfiguration: a leader that appended the
// removal of the last old member, and cannot commit it (the other
// upgraded member is down), raises no floor from that configuration: a
// change of leader may yet discard it, and the old member would then
// stop at the first newer entry.
func TestFloorWaitsForACommittedConfiguration(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.logVersion = -1 })
	for _, i := range []int{0, 1} {
		tc.stop(i)
		tc.cfgs[i].logVersion = 0
		tc.start(i)
		tc.waitMembers(3)
	}
	tc.transferTo(0)
	l := tc.nodes[0]
	// n2's report is fresh (it is asked every second) when it goes down.
	poll(t, func() bool {
		v, fresh := l.versions.known("n2", raft.ServerAddress(tc.nodes[1].Addr()))
		return fresh && v == fsm.LogVersion
	}, 10*time.Second, "n1 hearing n2's version")
	tc.stop(1)
	removal := l.raft.RemoveServer("n3", 0, 0)
	poll(t, func() bool {
		cf := l.raft.GetConfiguration()
		return cf.Error() == nil && len(cf.Configuration().Servers) == 2
	}, 5*time.Second, "n1 appending n3's removal")
	time.Sleep(3 * peerProbeInterval)
	if f := l.versionFloor.Load(); f != 0 {
		t.Fatalf("n1 raised its floor to %d on a configuration without n3 that it has not committed (%v)", f, removal.Error())
	}
}
