package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// TestRecoveryFromPeersJSON: two of three nodes are lost for good; the
// survivor cannot elect itself. A peers.json naming only the survivor,
// put in its data directory while it is stopped, makes it a one-node
// cluster with every session it held, and then it takes new members.
func TestRecoveryFromPeersJSON(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	for i := 0; i < 20; i++ {
		mustSave(t, tc.nodes[l], fmt.Sprintf("s%d", i), `{"v":1}`)
	}
	want := tc.waitSame()

	const survivor = 0
	for i := range tc.nodes {
		if i != survivor {
			tc.crash(i)
		}
	}
	// Without a quorum it stays leaderless.
	poll(t, func() bool { addr, _ := tc.nodes[survivor].raft.LeaderWithID(); return addr == "" }, 10*time.Second, "the survivor to lose its leader")
	oldID := tc.nodes[survivor].ClusterID()
	tc.stop(survivor)

	dir := tc.cfgs[survivor].DataDir
	// A file that does not list the node is refused, and left in place.
	if err := os.WriteFile(filepath.Join(dir, PeersJSON), []byte(`[{"id":"elsewhere","address":"127.0.0.1:1","non_voter":false}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(tc.cfgs[survivor]); err == nil || !strings.Contains(err.Error(), "is not listed") {
		t.Fatalf("open with a peers.json that omits the node: %v", err)
	}
	// Applied, a file cannot be undone: mistakes in it are refused, and it
	// is left in place.
	id, addr := tc.cfgs[survivor].ID, tc.cfgs[survivor].Listen
	for _, bad := range []struct{ file, want string }{
		{fmt.Sprintf(`[{"id":%q,"address":%q},{"id":"d","address":"bogus"}]`, id, addr), `address "bogus" is not HOST:PORT`},
		{fmt.Sprintf(`[{"id":%q,"address":%q,"nonvoter":true}]`, id, addr), `unknown field "nonvoter"`},
		{fmt.Sprintf(`[{"id":%q,"address":%q}] junk`, id, addr), "data after the array"},
		{fmt.Sprintf(`[{"id":%q,"address":%q,"non_voter":true}]`, id, addr), "listed as a non-voter"},
		{fmt.Sprintf(`[{"id":%q,"address":"127.0.0.1:1"}]`, id), "(--advertise)"},
		{fmt.Sprintf(`[{"id":%q,"address":%q},{"id":%q,"address":"127.0.0.1:2"}]`, id, addr, id), "listed twice"},
		{fmt.Sprintf(`[{"id":%q}]`, id), "both required"},
	} {
		if err := os.WriteFile(filepath.Join(dir, PeersJSON), []byte(bad.file), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(tc.cfgs[survivor]); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("open with the peers.json %s: %v; want an error saying %q", bad.file, err, bad.want)
		}
	}
	peers := fmt.Sprintf(`[{"id":%q,"address":%q,"non_voter":false}]`, id, addr)
	if err := os.WriteFile(filepath.Join(dir, PeersJSON), []byte(peers), 0o600); err != nil {
		t.Fatal(err)
	}
	n := tc.start(survivor)
	poll(t, func() bool { return n.Ready() && n.raft.State() == raft.Leader }, 15*time.Second, "the recovered node to lead")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := n.Restore(ctx, "s0", transport.Linearizable); err != nil { // applied everything committed
		t.Fatalf("read after recovery: %v", err)
	}
	if got := n.State().Capture().Hash(); got != want {
		t.Fatalf("recovered state hash %s, want %s", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, PeersJSON+".applied")); err != nil {
		t.Fatalf("peers.json not marked applied: %v", err)
	}
	if n.voters() != 1 {
		t.Fatalf("voters after recovery = %d, want 1", n.voters())
	}
	// Another cluster now: the crashed members' data (the old id) cannot
	// join it.
	recovered := n.ClusterID()
	if recovered == oldID || recovered != recoveredClusterID(oldID, raft.Configuration{Servers: []raft.Server{
		{ID: raft.ServerID(tc.cfgs[survivor].ID), Address: raft.ServerAddress(tc.cfgs[survivor].Listen), Suffrage: raft.Voter}}}) {
		t.Fatalf("cluster id after recovery %s (before %s): want the id derived from the old one and the members", recovered, oldID)
	}
	if err := n.Save(ctx, "after", []byte(`{"ok":true}`)); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	// A restart does not apply the file again and keeps the new state.
	tc.stop(survivor)
	n = tc.start(survivor)
	poll(t, func() bool { return n.Ready() && n.raft.State() == raft.Leader }, 15*time.Second, "leader after restart")
	if _, found, err := n.Restore(ctx, "after", transport.Linearizable); err != nil || !found {
		t.Fatalf("the write made after recovery is gone after a restart: found %v, %v", found, err)
	}
	if n.ClusterID() != recovered {
		t.Fatalf("cluster id after a restart %s, want the recovered %s", n.ClusterID(), recovered)
	}
	if _, err := os.Stat(filepath.Join(dir, recoveredFromFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left after a complete recovery: %v", recoveredFromFile, err)
	}
	// A start interrupted after keeping the new id but before marking the
	// file applied applies it again: the id must come out the same as
	// the other survivors' (derived from the old id, not the new one).
	tc.stop(survivor)
	conf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(tc.cfgs[survivor].ID), Address: raft.ServerAddress(tc.cfgs[survivor].Listen), Suffrage: raft.Voter}}}
	os.WriteFile(filepath.Join(dir, recoveredFromFile), []byte(oldID+" "+recoveredClusterID("", conf)+"\n"), 0o600)
	os.Rename(filepath.Join(dir, PeersJSON+".applied"), filepath.Join(dir, PeersJSON))
	n = tc.start(survivor)
	if n.ClusterID() != recovered {
		t.Fatalf("cluster id after an interrupted recovery applied again: %s, want %s", n.ClusterID(), recovered)
	}
}

// Survivors given the same members, in any order, derive the same new
// cluster id; another old id or other members give another.
func TestRecoveredClusterID(t *testing.T) {
	a := raft.Server{ID: "n1", Address: "10.0.0.1:3001", Suffrage: raft.Voter}
	b := raft.Server{ID: "n2", Address: "10.0.0.2:3001", Suffrage: raft.Voter}
	id := recoveredClusterID("0123456789abcdef", raft.Configuration{Servers: []raft.Server{a, b}})
	if got := recoveredClusterID("0123456789abcdef", raft.Configuration{Servers: []raft.Server{b, a}}); got != id {
		t.Fatalf("the members' order changed the id: %s, %s", id, got)
	}
	for _, other := range []string{
		recoveredClusterID("fedcba9876543210", raft.Configuration{Servers: []raft.Server{a, b}}),
		recoveredClusterID("0123456789abcdef", raft.Configuration{Servers: []raft.Server{a}}),
	} {
		if other == id {
			t.Fatal("another recovery derived the same cluster id")
		}
	}
	if len(id) != 16 {
		t.Fatalf("id %q: want 16 hex digits, as newClusterID's", id)
	}
}
