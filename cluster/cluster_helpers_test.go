package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
)

// testCluster is N real nodes on loopback ports with temp data dirs: real
// raft, real TCP. Node i keeps its address and data across restarts.
type testCluster struct {
	t     testing.TB
	mu    sync.Mutex // guards nodes against stopConcurrent
	nodes []*Node
	cfgs  []Config
}

// node returns node i, or nil when it is stopped; safe while other
// goroutines stop nodes with stopConcurrent.
func (tc *testCluster) node(i int) *Node {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.nodes[i]
}

// stopConcurrent stops node i while other goroutines may be using it.
func (tc *testCluster) stopConcurrent(i int) {
	tc.mu.Lock()
	n := tc.nodes[i]
	tc.nodes[i] = nil
	tc.mu.Unlock()
	if n != nil {
		n.Close()
	}
}

// newTestCluster starts n nodes: the first bootstraps, the others join it.
func newTestCluster(t testing.TB, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	for i := 0; i < n; i++ {
		cfg := Config{ID: fmt.Sprintf("n%d", i+1), Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: testLogger()}
		if i > 0 {
			cfg.Join = []string{tc.nodes[0].Addr()}
		}
		if tweak != nil {
			tweak(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
		tc.nodes = append(tc.nodes, nil)
		tc.start(i)
	}
	t.Cleanup(tc.closeAll)
	tc.waitMembers(n)
	return tc
}

// newBenchCluster is a three-node cluster for benchmarks.
func newBenchCluster(b *testing.B) *testCluster { return newTestCluster(b, 3, nil) }

// start (re)opens node i on its address and data directory.
func (tc *testCluster) start(i int) *Node {
	tc.t.Helper()
	cfg := tc.cfgs[i]
	var n *Node
	var err error
	for try := 0; try < 50; try++ { // the old listener's port may linger briefly
		if n, err = Open(cfg); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tc.t.Fatalf("open node %s: %v", cfg.ID, err)
	}
	tc.nodes[i] = n
	tc.cfgs[i].Listen = n.Addr() // restarts reuse the port
	return n
}

// stop closes node i (gracefully) and forgets it.
func (tc *testCluster) stop(i int) {
	if tc.nodes[i] != nil {
		tc.nodes[i].Close()
		tc.nodes[i] = nil
	}
}

// crash stops node i the way kill -9 looks to its peers: connections drop,
// no leadership transfer, no final save file; its data directory stays.
func (tc *testCluster) crash(i int) {
	n := tc.nodes[i]
	tc.nodes[i] = nil
	close(n.stop)
	n.server.Close()
	n.stream.Close()
	n.trans.Close()
	n.raft.Shutdown().Error()
	n.commit.close()
	n.fwd.close()
	n.bg.Wait()
	n.bolt.Close()
}

func (tc *testCluster) closeAll() {
	for i := range tc.nodes {
		tc.stop(i)
	}
}

// leader waits for a leader among the running nodes and returns its index.
func (tc *testCluster) leader() int {
	tc.t.Helper()
	idx := -1
	poll(tc.t, func() bool {
		for i, n := range tc.nodes {
			if n != nil && n.Ready() && n.raft.State() == raft.Leader {
				idx = i
				return true
			}
		}
		return false
	}, 15*time.Second, "a leader")
	return idx
}

// transferTo makes node i the leader, by leadership transfers from
// whichever node leads. A transfer can succeed and still not make i lead
// (another node's election timer fires first, or the vote splits on a
// loaded machine): it is tried again until i leads, for up to 40 s.
func (tc *testCluster) transferTo(i int) {
	tc.t.Helper()
	n := tc.nodes[i]
	deadline := time.Now().Add(40 * time.Second)
	for try := 1; ; try++ {
		l := tc.leader()
		if l == i {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("n%d still does not lead after %d leadership transfers (n%d leads)", i+1, try-1, l+1)
		}
		err := tc.nodes[l].raft.LeadershipTransferToServer(raft.ServerID(n.cfg.ID), raft.ServerAddress(n.Addr())).Error()
		if err != nil {
			tc.t.Logf("leadership transfer %d from n%d to n%d: %v", try, l+1, i+1, err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && n.raft.State() != raft.Leader; {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// follower returns the index of a running follower.
func (tc *testCluster) follower() int {
	tc.t.Helper()
	l := tc.leader()
	for i, n := range tc.nodes {
		if i != l && n != nil {
			poll(tc.t, n.Ready, 15*time.Second, "follower ready")
			return i
		}
	}
	tc.t.Fatal("no follower running")
	return -1
}

// waitMembers waits until the leader's configuration has n voters and every
// running node is ready.
func (tc *testCluster) waitMembers(n int) {
	tc.t.Helper()
	poll(tc.t, func() bool {
		l := tc.leader()
		return tc.nodes[l].voters() == n
	}, 20*time.Second, fmt.Sprintf("%d voters", n))
	for _, node := range tc.nodes {
		if node != nil {
			poll(tc.t, node.Ready, 20*time.Second, "node ready")
		}
	}
}

// waitQuiet waits until the cluster has nothing left to do: a leader
// leads, no node has a request in flight (a write whose client gave up may
// still be applied until the node's RequestTimeout), every node has applied
// the same whole log, and their states are the same; all of it unchanged
// for quietHold, as bytes sent just before may still be on their way in.
// It returns the state's hash.
func (tc *testCluster) waitQuiet() string {
	tc.t.Helper()
	const quietHold = 200 * time.Millisecond
	var seen, hash string
	var since time.Time
	poll(tc.t, func() bool {
		now, ok := tc.quiet()
		if !ok || now != seen {
			seen, since = now, time.Now()
			return false
		}
		hash = now[strings.IndexByte(now, ' ')+1:]
		return time.Since(since) >= quietHold
	}, 30*time.Second, "the cluster to go quiet")
	return hash
}

// quiet reports whether the cluster is quiet now (see waitQuiet), and if so
// its log's last index and its state's hash, as "index hash".
func (tc *testCluster) quiet() (string, bool) {
	var out string
	leader := false
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		last := n.raft.LastIndex()
		if n.server.InFlight() != 0 || n.appliedIndex() != last {
			return "", false
		}
		leader = leader || n.raft.State() == raft.Leader
		now := fmt.Sprintf("%d %s", last, n.State().Capture().Hash())
		if out != "" && now != out {
			return "", false
		}
		out = now
	}
	return out, leader
}

// waitSame waits until every running node's state machine holds the same
// document (EnsureSame) and returns its hash.
func (tc *testCluster) waitSame() string {
	tc.t.Helper()
	var hash string
	poll(tc.t, func() bool {
		hash = ""
		for _, n := range tc.nodes {
			if n == nil {
				continue
			}
			h := n.State().Capture().Hash()
			if hash != "" && h != hash {
				return false
			}
			hash = h
		}
		return true
	}, 20*time.Second, "replicas to converge")
	return hash
}

func mustSave(t *testing.T, n *Node, sid, data string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Save(ctx, sid, []byte(data)); err != nil {
		t.Fatalf("save %s via %s: %v", sid, n.ID(), err)
	}
}

var _ = fsm.NewState
