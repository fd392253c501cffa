package cluster

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/transport"
)

// TestHeldAnswersDoNotConfirmDeposedLeader: a leader whose followers'
// answers to its last heartbeats are still in flight (as across a process
// pause) is deposed; a logout commits through its successor; then the
// read through the old leader is made and the held answers arrive. Those
// answers predate the read, so they must not confirm the old leader's
// leadership for it: the read must not return the session from before the
// logout. (raft.VerifyLeader counts such answers; see readIndex.)
func TestHeldAnswersDoNotConfirmDeposedLeader(t *testing.T) {
	// The scenario needs the successor elected within the old leader's
	// lease; on a loaded machine (CI runs packages side by side) the
	// election sometimes took longer. Such a run tests nothing, and is
	// made again, on a fresh cluster.
	for try := 1; ; try++ {
		if heldAnswersScenario(t) {
			return
		}
		if try == 3 {
			t.Fatal("the old leader stepped down before its successor was elected, 3 times: the test's timing did not hold")
		}
		t.Logf("try %d: the old leader stepped down before its successor was elected; again", try)
	}
}

// heldAnswersScenario runs TestHeldAnswersDoNotConfirmDeposedLeader once and
// reports whether its timing held (false: the old leader stepped down
// before its successor was elected, and nothing was tested).
func heldAnswersScenario(t *testing.T) bool {
	const (
		oldLeader = 2
		// The old leader heartbeats every 0.6–1.2 s and keeps its lease
		// for 6 s without answers; the others give up on a silent leader
		// after 1–2 s. So the followers elect a successor, and the read is
		// made, while the old leader still believes it leads and before its
		// raft connections' 5 s deadline expires the held answers. (With
		// 1.5–3 s, split votes on a loaded machine sometimes took the
		// election past that window.)
		slowTimeout = 6 * time.Second
		fastTimeout = time.Second
	)
	tc, fn := newFaultCluster(t, 3, func(i int, c *Config) {
		c.HeartbeatTimeout, c.ElectionTimeout = fastTimeout, fastTimeout
		if i == oldLeader {
			c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = slowTimeout, slowTimeout, slowTimeout
		}
	})
	tc.transferTo(oldLeader)
	term := tc.nodes[oldLeader].raft.CurrentTerm()
	ctx := context.Background()
	viaOld, err := client.New(client.Config{Addrs: []string{tc.nodes[oldLeader].Addr()}, Dialer: fn.dialer(clientBase), RequestTimeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer viaOld.Close()
	if err := viaOld.SaveRaw(ctx, "u", []byte(`{"user":"alice"}`)); err != nil {
		t.Fatalf("login: %v", err)
	}

	// The old leader's requests still reach its followers, which answer;
	// the answers are held. The followers' own requests to it wait.
	for _, f := range []int{0, 1} {
		fn.set(link{oldLeader, f}, faultHoldReads)
		fn.set(link{f, oldLeader}, faultHold)
	}
	newLeader := -1
	poll(t, func() bool {
		for _, f := range []int{0, 1} {
			if n := tc.nodes[f]; n.raft.State() == raft.Leader && n.raft.CurrentTerm() > term {
				newLeader = f
				return true
			}
		}
		return false
	}, 10*time.Second, "a successor")
	if st := tc.nodes[oldLeader].raft.State(); st != raft.Leader {
		return false
	}
	viaNew, err := client.New(client.Config{Addrs: []string{tc.nodes[newLeader].Addr()}, Dialer: fn.dialer(clientBase + 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer viaNew.Close()
	if err := viaNew.SaveRaw(ctx, "u", []byte(`{"user":null}`)); err != nil {
		t.Fatalf("logout through the successor: %v", err)
	}

	type result struct {
		data string
		err  error
	}
	read := make(chan result, 1)
	go func() {
		raw, _, err := viaOld.RestoreRaw(ctx, "u")
		read <- result{string(raw), err}
	}()
	time.Sleep(300 * time.Millisecond) // the read is waiting on the old leader
	for _, f := range []int{0, 1} {
		fn.set(link{oldLeader, f}, faultNone) // the held answers arrive
	}
	// A moment later the rest of the pause ends too: the successor's
	// requests reach the old leader, which learns who leads now.
	time.Sleep(300 * time.Millisecond)
	fn.healAll()
	var r result
	select {
	case r = <-read:
	case <-time.After(20 * time.Second):
		t.Fatal("the read through the old leader never finished")
	}
	if r.data == `{"user":"alice"}` {
		t.Fatalf("the read through the deposed leader returned the session from before the logout")
	}
	if r.err != nil || r.data != `{"user":null}` {
		t.Fatalf("read through the old leader: %q %v", r.data, r.err)
	}
	return true
}

// TestAskTermChecksWhoAnswers: a confirmation answer counts only from the
// member asked; another node at that address (reused, replaced) is an error.
func TestAskTermChecksWhoAnswers(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l, f := tc.leader(), tc.follower()
	ctx := context.Background()
	addr := raft.ServerAddress(tc.nodes[f].Addr())
	if _, err := tc.nodes[l].askTerm(ctx, raft.ServerID(tc.cfgs[f].ID), addr); err != nil {
		t.Fatalf("askTerm of the member there: %v", err)
	}
	if _, err := tc.nodes[l].askTerm(ctx, "someone-else", addr); err == nil {
		t.Fatal("askTerm accepted an answer from a node other than the one asked")
	}
}

// getCounter is a log store that counts GetLog calls.
type getCounter struct {
	raft.LogStore
	gets int
}

func (g *getCounter) GetLog(i uint64, l *raft.Log) error {
	g.gets++
	return g.LogStore.GetLog(i, l)
}

// TestFSMIndexIsCached: fsmIndex finds the last entry the state machine
// sees at or before a commit index, and asked again for the same index it
// answers without reading the log (every read asks it).
func TestFSMIndexIsCached(t *testing.T) {
	mem := raft.NewInmemStore()
	for _, l := range []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand},
		{Index: 2, Term: 2, Type: raft.LogNoop},
		{Index: 3, Term: 2, Type: raft.LogBarrier},
		{Index: 4, Term: 2, Type: raft.LogCommand},
	} {
		if err := mem.StoreLog(l); err != nil {
			t.Fatal(err)
		}
	}
	logs := &getCounter{LogStore: mem}
	ri := &readIndex{logs: logs, applied: newAppliedIndex()}
	for _, c := range []struct{ commit, want uint64 }{{3, 1}, {3, 1}, {4, 4}, {4, 4}, {3, 1}} {
		before := logs.gets
		if got := ri.fsmIndex(c.commit); got != c.want {
			t.Fatalf("fsmIndex(%d) = %d, want %d", c.commit, got, c.want)
		}
		t.Logf("fsmIndex(%d): %d log reads", c.commit, logs.gets-before)
	}
	before := logs.gets
	ri.fsmIndex(3)
	ri.fsmIndex(3)
	if logs.gets-before != 0 {
		t.Fatalf("asked twice for the index it last answered, fsmIndex read the log %d times", logs.gets-before)
	}
}

// countRounds counts the confirmation rounds n runs from now on.
func countRounds(n *Node) *atomic.Int64 {
	var c atomic.Int64
	do := n.reads.rounds.do
	n.reads.rounds.do = func() (uint64, error) { c.Add(1); return do() }
	return &c
}

// A node that is its cluster's only voter is a quorum on its own: its
// linearizable reads need no confirmation round (and skip the rounds'
// goroutine and channels). A leader with peers still confirms.
func TestSoleVoterReadsSkipTheRound(t *testing.T) {
	read := func(n *Node, sid, want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		data, ok, err := n.Restore(ctx, sid, transport.Linearizable)
		if err != nil || !ok || string(data) != want {
			t.Fatalf("restore %s via %s: %q %v %v, want %q", sid, n.ID(), data, ok, err, want)
		}
	}

	single := startNode(t, Config{})
	rounds := countRounds(single)
	mustSave(t, single, "sole-voter", `{"a":1}`)
	for range 10 {
		read(single, "sole-voter", `{"a":1}`)
	}
	if got := rounds.Load(); got != 0 {
		t.Fatalf("single node: %d confirmation rounds for 10 reads, want none", got)
	}

	tc := newTestCluster(t, 3, nil)
	leader := tc.node(tc.leader())
	rounds = countRounds(leader)
	mustSave(t, leader, "three-voters", `{"b":2}`)
	read(leader, "three-voters", `{"b":2}`)
	if rounds.Load() == 0 {
		t.Fatal("leader of three voters served a linearizable read without a confirmation round")
	}
}

// TestClientReadsFromFollowers: a client with ReadFollower that knows every
// node sends its writes to the leader and its reads to one follower, which serves them
// from its own state (none forwarded), and every read made after a write
// returns that write.
func TestClientReadsFromFollowers(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	addrs := []string{tc.nodes[l].Addr()}
	for i, n := range tc.nodes {
		if i != l {
			addrs = append(addrs, n.Addr())
		}
	}
	c, err := client.New(client.Config{Addrs: addrs, Reads: client.ReadFollower})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 40 {
		sid, want := fmt.Sprintf("r%d", i), fmt.Sprintf(`{"i":%d}`, i)
		if err := c.SaveRaw(ctx, sid, []byte(want)); err != nil {
			t.Fatalf("save %s: %v", sid, err)
		}
		got, found, err := c.RestoreRaw(ctx, sid)
		if err != nil || !found || string(got) != want {
			t.Fatalf("restore %s right after its save: %s, %v, %v; want %s", sid, got, found, err, want)
		}
	}
	// The cluster is idle now: once the followers have heard of the last
	// commit, the follower serves reads from its own state.
	poll(t, func() bool {
		for _, n := range tc.nodes {
			if n.fsm.applied.get() < tc.nodes[l].fsm.applied.get() {
				return false
			}
		}
		return true
	}, 10*time.Second, "the followers to apply the last save")
	restores := map[string]string{"op": "restore", "protocol": "native"}
	fwd := map[string]string{"op": "restore"}
	var before []float64
	for _, n := range tc.nodes {
		before = append(before, gathered(t, n, "kadosession_forwarded_requests_total", fwd))
	}
	for i := range 40 {
		sid, want := fmt.Sprintf("r%d", i), fmt.Sprintf(`{"i":%d}`, i)
		if got, found, err := c.RestoreRaw(ctx, sid); err != nil || !found || string(got) != want {
			t.Fatalf("restore %s: %s, %v, %v; want %s", sid, got, found, err, want)
		}
	}
	var served []float64 // by the leader, then the followers
	forwarded := 0.0
	for _, i := range append([]int{l}, slices.DeleteFunc([]int{0, 1, 2}, func(i int) bool { return i == l })...) {
		served = append(served, gathered(t, tc.nodes[i], "kadosession_requests_total", restores))
		forwarded += gathered(t, tc.nodes[i], "kadosession_forwarded_requests_total", fwd) - before[i]
	}
	slices.Sort(served[1:])
	if !slices.Equal(served, []float64{0, 0, 80}) || forwarded != 0 {
		t.Errorf("reads served by the leader, then the followers: %v, %v of the last 40 forwarded; want [0 0 80], none forwarded: all on the client's follower", served, forwarded)
	}
}

// TestBehindFollowerReadsAtIndex: a follower that has not yet learnt that
// a write committed (raft tells it with the leader's next append, here
// seconds away) does not wait for it: it sends the read to the leader to be
// served at its read index, and the leader serves it without a
// confirmation round of its own. The read returns the write.
func TestBehindFollowerReadsAtIndex(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.CommitTimeout = 5 * time.Second })
	leader, follower := tc.node(tc.leader()), tc.node(tc.follower())
	rounds := countRounds(leader)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		want := fmt.Sprintf(`{"v":%d}`, i)
		mustSave(t, leader, "at-index", want)
		start := time.Now()
		data, found, err := follower.Restore(ctx, "at-index", transport.Linearizable)
		took := time.Since(start)
		if err != nil || !found || string(data) != want {
			t.Fatalf("read through the follower right after save %d: %s, %v, %v; want %s", i, data, found, err, want)
		}
		if took >= 4*time.Second {
			t.Errorf("read %d took %s: it waited for the leader's next append", i, took)
		}
	}
	if f := gathered(t, follower, "kadosession_forwarded_requests_total", map[string]string{"op": "restore"}); f == 0 {
		t.Error("the follower forwarded no read: it was never behind, so the test tested nothing")
	}
	if n := rounds.Load(); n != 0 {
		t.Errorf("the leader ran %d confirmation rounds: at-index reads need none", n)
	}

	// Clients may not ask for it: it skips the staleness bound.
	c := nativeConn(t, follower.Addr())
	resp, err := c.RoundTrip(ctx, &transport.Request{Op: transport.OpRestore, Consistency: transport.AtIndex, Index: 1, SID: "at-index"})
	if err != nil || resp.Err == nil || resp.Err.Code != transport.CodeBadRequest {
		t.Fatalf("an at-index read from a client: %+v, %v; want a bad request", resp, err)
	}
}

// TestAtIndexFallsBackForOlderLeader: a leader from before at-index reads
// refuses them as a bad request; the follower then forwards the read the
// old way (the leader confirms it with a round) and the client sees the
// write, not an error.
func TestAtIndexFallsBackForOlderLeader(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.CommitTimeout = time.Second })
	leader, follower := tc.node(tc.leader()), tc.node(tc.follower())
	leader.refuseAtIndex.Store(true)
	rounds := countRounds(leader)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		want := fmt.Sprintf(`{"v":%d}`, i)
		mustSave(t, leader, "older", want)
		data, found, err := follower.Restore(ctx, "older", transport.Linearizable)
		if err != nil || !found || string(data) != want {
			t.Fatalf("read %d through the follower: %s, %v, %v; want %s", i, data, found, err, want)
		}
	}
	if rounds.Load() == 0 {
		t.Error("the leader ran no confirmation round: the reads never fell back to a plain forward")
	}
}

// TestAtIndexWaitsOnABehindNode: a node asked for a read at an index it
// holds but has not applied yet (here a follower that learns of commits
// only with the leader's next append, seconds away) waits for it, and
// answers with the write; one past its log is refused.
func TestAtIndexWaitsOnABehindNode(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.CommitTimeout = 5 * time.Second })
	l := tc.leader()
	leader := tc.node(l)
	mustSave(t, leader, "behind", `{"v":1}`)
	index := leader.fsm.applied.get()
	// Stored, not yet known to be committed (a node refuses an index past
	// its log: only a leader's read index comes, and a leader holds it).
	// The follower whose answer committed the save got it before the
	// commit; the other may have got both in one append (its replication
	// ran after the first answer, or again after a failed append), and is
	// not asked. (CI and -race beside busy loops, 1 run in 12: "the
	// follower already applied the save", of the one follower it took.)
	var followers []*Node
	for i := range tc.nodes {
		if i != l {
			followers = append(followers, tc.node(i))
		}
	}
	poll(t, func() bool {
		return followers[0].raft.LastIndex() >= index && followers[1].raft.LastIndex() >= index
	}, 5*time.Second, "the save in the followers' logs")
	follower := followers[0]
	if follower.fsm.applied.get() >= index {
		follower = followers[1]
	}
	if follower.fsm.applied.get() >= index {
		t.Fatalf("both followers already applied the save (index %d; applied %d and %d, the leader's last index %d): the commit timeout did not hold their next append back",
			index, followers[0].fsm.applied.get(), followers[1].fsm.applied.get(), leader.raft.LastIndex())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := transport.Dial(ctx, follower.Addr(), transport.ConnConfig{Magic: transport.MagicPeer})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.RoundTrip(ctx, &transport.Request{Op: transport.OpRestore, Consistency: transport.AtIndex, Index: index, SID: "behind"})
	if err != nil || resp.Err != nil || !resp.Found || string(resp.Data) != `{"v":1}` {
		t.Fatalf("at-index read on the behind follower: %+v, %v; want the save", resp, err)
	}
	if got := follower.fsm.applied.get(); got < index {
		t.Errorf("answered with applied index %d < %d", got, index)
	}

	// An index past the node's log is no leader's read index: refused at
	// once, where it waited out the request's deadline.
	start := time.Now()
	resp, err = c.RoundTrip(ctx, &transport.Request{Op: transport.OpRestore, Consistency: transport.AtIndex, Index: 1 << 62, SID: "behind"})
	if err != nil || resp.Err == nil || resp.Err.Code != transport.CodeBadRequest || !strings.Contains(resp.Err.Message, "past this node's last log entry") {
		t.Fatalf("at-index read past the log: %+v, %v; want a bad request", resp, err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the refusal took %s", took)
	}
}

// TestPipelinedReadsShareARound: linearizable restores that reach a leader
// of three together, on one connection, are served in line by one worker
// (transport's restore groups) and need one confirmation round between
// them, not one each: each may be served by any round that started after
// it arrived. (Served by workers of their own, they made two: the first
// read's, and the next, joined by the others while it ran.) Each read
// still returns the latest save.
func TestPipelinedReadsShareARound(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	leader := tc.node(tc.leader())
	const reads = 16
	for i := range reads {
		mustSave(t, leader, fmt.Sprint("p", i), fmt.Sprintf(`{"i":%d}`, i))
	}
	rounds := countRounds(leader)
	c, err := net.DialTimeout("tcp", leader.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	out := []byte{transport.MagicNative, transport.VersionNative}
	for i := range reads {
		out = transport.AppendRequest(out, &transport.Request{ID: uint64(i + 1), Op: transport.OpRestore, Consistency: transport.Linearizable, SID: fmt.Sprint("p", i)})
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for range reads {
		frame, err := transport.ReadFrame(r, nil, transport.DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := transport.DecodeResponse(frame, transport.OpRestore)
		if err != nil || resp.Err != nil || !resp.Found || string(resp.Data) != fmt.Sprintf(`{"i":%d}`, resp.ID-1) {
			t.Fatalf("restore %d: %+v (%s), %v", resp.ID, resp, resp.Data, err)
		}
	}
	if n := rounds.Load(); n != 1 {
		t.Errorf("%d confirmation rounds for %d linearizable reads that arrived together; want 1", n, reads)
	}
}

// A leader of three voters confirms a read with one peer, the one that
// answered first last time: a round asking both cost each follower as much
// as the one the quorum needs. When that peer stops answering, the round
// asks the other (at once when the request fails, after hedgeAfter when it
// is only slow), and reads go on.
func TestConfirmAsksOnlyThePeersTheQuorumLacks(t *testing.T) {
	tc, fn := newFaultCluster(t, 3, nil)
	l := tc.leader()
	leader := tc.node(l)
	counts := askCounter(leader)
	mustSave(t, leader, "sid", `{"a":1}`)
	read := func(n int) { t.Helper(); readN(t, leader, "sid", `{"a":1}`, n) }
	var peers []raft.ServerID
	index := map[raft.ServerID]int{}
	for i, cfg := range tc.cfgs {
		if i != l {
			peers = append(peers, raft.ServerID(cfg.ID))
			index[raft.ServerID(cfg.ID)] = i
		}
	}
	counts() // from here on
	read(50)
	c, changes := counts()
	// A round late on a loaded machine (the race detector) may ask both:
	// run 16 times in a row under -race, up to 10 of 50 did. And a slow
	// answer there (its average more than twice the other's) hands the
	// first place to the other peer: under -race beside a CPU hog, 2 to 10
	// changes of the peer asked in 50 rounds, which left counts as even as
	// 28/28 (the counts alone failed 1 run in 3 there). Asking both every
	// round asks 100 times, changing at every request; taking turns
	// changes about 49 times.
	if total := c[peers[0]] + c[peers[1]]; total > 60 || changes > 20 {
		t.Fatalf("50 reads asked %v, changing the peer asked %d times: want nearly every round to ask one peer, the same as the round before", c, changes)
	}
	// The peer the next round asks first (after a few changes of first
	// place, not always the one asked most).
	leader.reads.peerMu.Lock()
	first := leader.reads.lastFirst
	leader.reads.peerMu.Unlock()
	other := peers[0]
	if other == first {
		other = peers[1]
	}
	// The peer asked first pauses (its answers wait): after hedgeAfter, a
	// round asks the other, which is then asked first.
	fn.cut(l, index[first], faultHold)
	start := time.Now()
	read(20)
	t.Logf("20 reads with the preferred peer paused took %v", time.Since(start))
	// Under -race a second round may start before the first has given up
	// on the paused peer, and a round whose answer is late (hedgeAfter)
	// asks every peer, the paused one too: a few times at most, not every
	// round.
	if c, _ = counts(); c[first] > 5 || c[other] < 19 {
		t.Fatalf("with %s paused, 20 reads asked %v: want the paused peer asked once (a few times under load), the other every round", first, c)
	}
	fn.healAll()
	// Now the other peer stops: its request fails, and the round asks the
	// first at once.
	tc.stop(index[other])
	read(20)
	if c, _ = counts(); c[other] > 4 || c[first] < 20 {
		t.Fatalf("after %s stopped, 20 reads asked %v: want the stopped peer asked once (a few times when rounds are late under load), the other every round", other, c)
	}
}

// askCounter counts the term requests n's confirmation rounds make, by
// peer; the function it returns reports the counts so far, and how many
// times the peer asked changed from one request to the next, and clears
// them.
func askCounter(n *Node) func() (map[raft.ServerID]int, int) {
	var mu sync.Mutex
	asked := map[raft.ServerID]int{}
	var last raft.ServerID
	changes := 0
	askTerm := n.reads.askTerm
	n.reads.askTerm = func(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) (uint64, error) {
		mu.Lock()
		asked[id]++
		if last != "" && id != last {
			changes++
		}
		last = id
		mu.Unlock()
		return askTerm(ctx, id, addr)
	}
	return func() (map[raft.ServerID]int, int) {
		mu.Lock()
		defer mu.Unlock()
		c, k := maps.Clone(asked), changes
		clear(asked)
		last, changes = "", 0
		return c, k
	}
}

// readN reads sid through n linearizably count times, each expecting want.
func readN(t *testing.T, n *Node, sid, want string, count int) {
	t.Helper()
	for range count {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		data, ok, err := n.Restore(ctx, sid, transport.Linearizable)
		cancel()
		if err != nil || !ok || string(data) != want {
			t.Fatalf("read: %q %v %v", data, ok, err)
		}
	}
}

// With five voters a round asks two peers. One of them pausing costs one
// late round, not every round: it is then asked last (it used to stay
// first, and every read waited for the round's timer, 30 ms each).
func TestConfirmWithFiveVotersRanksAPausedPeerLast(t *testing.T) {
	tc, fn := newFaultCluster(t, 5, nil)
	tc.waitMembers(5)
	l := tc.leader()
	leader := tc.node(l)
	counts := askCounter(leader)
	mustSave(t, leader, "sid", `{"a":1}`)
	// The peer asked first, found by reading: on a loaded machine a
	// round whose answers are late asks every peer, and a few of those
	// spread the asks evenly (21 each of four, once under two CPU hogs),
	// so a try that finds none asked nearly every round is made again.
	var c map[raft.ServerID]int
	var paused raft.ServerID
	for try := 0; ; try++ {
		readN(t, leader, "sid", `{"a":1}`, 40)
		c, _ = counts()
		paused = ""
		for id, k := range c {
			if k > c[paused] {
				paused = id
			}
		}
		if c[paused] >= 36 {
			break
		}
		if try == 2 {
			t.Fatalf("40 reads asked %v, three times over: want two peers asked nearly every round", c)
		}
	}
	idx := slices.IndexFunc(tc.cfgs, func(cfg Config) bool { return cfg.ID == string(paused) })
	fn.cut(l, idx, faultHold)
	start := time.Now()
	readN(t, leader, "sid", `{"a":1}`, 40)
	took := time.Since(start)
	c, _ = counts()
	fn.healAll()
	t.Logf("40 reads with %s paused took %v, asked %v", paused, took, c)
	// A round whose answers are late on a loaded machine asks every peer,
	// the paused one too: a few times, not every round.
	if c[paused] > 6 || took > 2*time.Second {
		t.Fatalf("with %s paused, 40 reads took %v and asked %v: want it asked a few times at most, not every round", paused, took, c)
	}
}

// A barrier that failed while no one waited for it (its caller had given
// up) is not handed to the next caller of the term as its answer: raft may
// be well again, and a read failed at once with an enqueue timeout from
// seconds before (a review).
func TestBarrierFailedEarlierIsNotHandedOn(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	ri := tc.nodes[0].reads
	term := tc.nodes[0].raft.CurrentTerm()
	ri.barrierSem <- struct{}{} // as barrier holds it, while the stage is set
	failed := &pendingBarrier{term: term, done: make(chan struct{}), err: raft.ErrEnqueueTimeout}
	close(failed.done)
	ri.pending = failed
	ri.barrierTerm.Store(0)
	<-ri.barrierSem
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ri.barrier(ctx, term); err != nil {
		t.Fatalf("a barrier with raft well, after one that failed unheard: %v", err)
	}
	if got := ri.barrierTerm.Load(); got != term {
		t.Fatalf("barrier term %d after the barrier, want %d", got, term)
	}
}
