package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/middleware"
	"github.com/kadosession/kadosession/transport"
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

// answerDropper is a client connection that, once armed, drops the answer
// to the first request carrying the armed marker: it waits until ready()
// (the write took effect), then breaks the connection instead of reading.
type answerDropper struct {
	net.Conn
	marker []byte
	ready  func() bool
	armed  *atomic.Bool
	drop   atomic.Bool
}

func (c *answerDropper) Write(p []byte) (int, error) {
	if bytes.Contains(p, c.marker) && c.armed.CompareAndSwap(true, false) {
		c.drop.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *answerDropper) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p) // the connection's reader waits here before the request is written
	if c.drop.Load() {
		for deadline := time.Now().Add(5 * time.Second); !c.ready() && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return n, err
}

// TestRevokeUserRetryGetsTheFirstCount: a revoke whose answer was lost
// with its connection is retried by the client; the retry gets the first
// run's count. Before, it ran again and counted the sessions left: 0.
func TestRevokeUserRetryGetsTheFirstCount(t *testing.T) {
	n := startNode(t, Config{})
	for _, sid := range []string{"s1", "s2", "s3"} {
		mustSave(t, n, sid, `{"_user":"alice"}`)
	}
	var armed atomic.Bool
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &answerDropper{Conn: conn, marker: []byte("revoke_user"), ready: func() bool { return n.State().Len() == 0 }, armed: &armed}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	armed.Store(true)
	got, err := c.RevokeUser(context.Background(), "alice")
	if armed.Load() {
		t.Fatal("the answer was not dropped: the test tests nothing")
	}
	if err != nil || got != 3 {
		t.Fatalf("RevokeUser after a lost answer = %d, %v; want 3, nil", got, err)
	}
}

// TestRevokeID: a revoke's log id follows its nonce, the same on every
// node; a call without one gets a new id each time; an overlong nonce is
// refused.
func TestRevokeID(t *testing.T) {
	a, errA := revokeID("n1", "alice")
	b, errB := revokeID("n1", "alice")
	c, errC := revokeID("n2", "alice")
	if errA != nil || errB != nil || errC != nil || a != b || a == c || a == (fsm.RequestID{}) {
		t.Fatalf("ids by nonce: %x %x %x (%v %v %v)", a, b, c, errA, errB, errC)
	}
	if bob, _ := revokeID("n1", "bob"); bob == a {
		t.Fatal("a nonce reused for another user gives the same id: bob's revoke would be answered with alice's count, and not run")
	}
	d, _ := revokeID("", "alice")
	e, _ := revokeID("", "alice")
	if d == e || d == (fsm.RequestID{}) {
		t.Fatalf("calls without a nonce share id %x", d)
	}
	if _, err := revokeID(strings.Repeat("x", adminNonceMax+1), "alice"); err == nil {
		t.Fatal("an overlong nonce was taken")
	}
}

// TestPatchNamingTooManyKeysNeverReachesTheLog: a patch that sets or
// deletes more keys than a session may hold is refused before it is
// proposed (one of 150k keys, once in the log, held the state machine for
// minutes, and again at every restart that replayed it).
func TestPatchNamingTooManyKeysNeverReachesTheLog(t *testing.T) {
	n := startNode(t, Config{MaxKeys: 4})
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	set := map[string]json.RawMessage{}
	var del []string
	for i := range 5 {
		set[fmt.Sprint("k", i)] = json.RawMessage("1")
		del = append(del, fmt.Sprint("d", i))
	}
	before := n.raft.LastIndex()
	// The node's decoder refuses them, by their counts, before it decodes
	// their keys (a frame of a million empty keys took 40 MB to decode).
	if err := c.Patch(ctx, "s", set, nil); !errors.Is(err, client.ErrTooLarge) || !strings.Contains(err.Error(), "the patch sets 5 keys; a session holds at most 4") {
		t.Fatalf("patch setting 5 keys, limit 4: %v; want ErrTooLarge from the decoder", err)
	}
	if err := c.Patch(ctx, "s", nil, del); !errors.Is(err, client.ErrTooLarge) || !strings.Contains(err.Error(), "the patch deletes 5 keys; a session holds at most 4") {
		t.Fatalf("patch deleting 5 keys, limit 4: %v; want ErrTooLarge from the decoder", err)
	}
	// Only commands count: a node just started may still be appending its
	// term's no-op and catch-up barrier (startNode waits for Ready, which a
	// single node reaches on election, before either is in the log).
	for i := before + 1; i <= n.raft.LastIndex(); i++ {
		var e raft.Log
		if err := n.bolt.GetLog(i, &e); err != nil {
			t.Fatal(err)
		}
		if e.Type == raft.LogCommand {
			t.Fatalf("refused patches reached the log: a command at index %d, after %d", i, before)
		}
	}
	delete(set, "k4")
	if err := c.Patch(ctx, "s", set, del[:4]); err != nil {
		t.Fatalf("patch of 4 sets and 4 deletes, limit 4: %v", err)
	}
}

// TestPatchOverTheSizeLimitNeverReachesTheLog: a patch whose sets alone
// make a session over MaxSessionSize is refused before it is proposed, as
// fast as any bad request (a 2 MiB one was written to the log and fsynced
// to be refused, and timed out in CI's TestREADMEApp under load); a key it
// sets and deletes does not count, and sets that just fit are applied.
func TestPatchOverTheSizeLimitNeverReachesTheLog(t *testing.T) {
	const limit = 1024
	n := startNode(t, Config{MaxSessionSize: limit})
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	str := func(size int) json.RawMessage { // a JSON string of size bytes
		return json.RawMessage(`"` + strings.Repeat("x", size-2) + `"`)
	}
	before := n.raft.LastIndex()
	for _, tc := range []struct {
		name string
		set  map[string]json.RawMessage
		del  []string
	}{
		{"one value over the limit", map[string]json.RawMessage{"big": str(2 * limit)}, nil},
		{"two values over it together", map[string]json.RawMessage{"a": str(limit / 2), "b": str(limit / 2)}, []string{"c"}},
		// {"k":<1019 bytes>} is 1025 bytes.
		{"one byte over", map[string]json.RawMessage{"k": str(limit - 5)}, nil},
	} {
		if err := c.Patch(ctx, "s", tc.set, tc.del); !errors.Is(err, client.ErrTooLarge) {
			t.Fatalf("%s: %v; want ErrTooLarge", tc.name, err)
		}
	}
	// Only commands count (see TestPatchNamingTooManyKeysNeverReachesTheLog).
	for i := before + 1; i <= n.raft.LastIndex(); i++ {
		var e raft.Log
		if err := n.bolt.GetLog(i, &e); err != nil {
			t.Fatal(err)
		}
		if e.Type == raft.LogCommand {
			t.Fatalf("refused patches reached the log: a command at index %d, after %d", i, before)
		}
	}
	if err := c.Patch(ctx, "s", map[string]json.RawMessage{"k": str(limit - 6)}, nil); err != nil {
		t.Fatalf("patch leaving a session of exactly the limit: %v", err)
	}
	if err := c.Patch(ctx, "s", map[string]json.RawMessage{"big": str(2 * limit), "small": str(4)}, []string{"big", "k"}); err != nil {
		t.Fatalf("patch setting and deleting a big key: %v", err)
	}
	data, _, err := n.Restore(ctx, "s", transport.Linearizable)
	if err != nil || string(data) != `{"small":"xx"}` {
		t.Fatalf("session %s (%v), want {\"small\":\"xx\"}", data, err)
	}
}

// TestNativeSaveFollowsTheKeyRules: a native client's save is held to the
// key rules its patches and MemoryStore follow (an empty key, an overlong
// one, "_written": refused; the last was dropped without a word), through
// the leader and through a follower; a Kado save keeps Kado's leniency,
// also forwarded by a follower.
func TestNativeSaveFollowsTheKeyRules(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	for _, addr := range []string{tc.nodes[tc.leader()].Addr(), tc.nodes[tc.follower()].Addr()} {
		c, err := client.New(client.Config{Addrs: []string{addr}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, key := range []string{"", strings.Repeat("k", fsm.MaxKeyLen+1), fsm.WrittenKey} {
			err := c.Save(context.Background(), "s", map[string]json.RawMessage{key: json.RawMessage("1"), "a": json.RawMessage("1")})
			if !errors.Is(err, client.ErrBadRequest) {
				t.Fatalf("save with key %.12q at %s: %v; want ErrBadRequest", key, addr, err)
			}
		}
	}
	if got := kadoRequest(t, tc.nodes[tc.follower()].Addr(), []byte(`{"save":{"sid":"k","data":{"":1,"a":2}}}`)); got != `{"status":"ok"}` {
		t.Fatalf("Kado save with an empty key through a follower: %s", got)
	}
	if got := kadoRequest(t, tc.nodes[tc.leader()].Addr(), []byte(`{"restore":{"sid":"k"}}`)); got != `{"status":"ok","result":{"":1,"a":2}}` {
		t.Fatalf("Kado restore: %s", got)
	}
}

// TestRevokeRetriedThroughANewLeaderRunsOnce: a revoke whose answer was
// lost, and whose leader then handed over, is retried by the client and
// reaches the new leader, which must recognise it rather than run it again:
// before, it did (adminOnce is per node), logged out a session the user
// made in between, and answered with its count (1) instead of 3.
func TestRevokeRetriedThroughANewLeaderRunsOnce(t *testing.T) {
	tc, l := aliceOnThreeNodes(t)
	old := tc.nodes[l]
	applied, proceed := make(chan struct{}), make(chan struct{})
	var appliedOnce sync.Once
	var armed atomic.Bool
	// The first attempt waits while leadership moves: give it the time
	// transferTo may take (a timed-out attempt is not retried).
	c, err := client.New(client.Config{Addrs: []string{old.Addr()}, RequestTimeout: 60 * time.Second, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &answerDropper{Conn: conn, marker: []byte("revoke_user"), armed: &armed, ready: func() bool {
			if old.State().Len() != 0 {
				return false
			}
			appliedOnce.Do(func() { close(applied) })
			<-proceed
			return true
		}}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	armed.Store(true)
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		n, err := c.RevokeUser(ctx, "alice")
		done <- result{n, err}
	}()
	select {
	case <-applied:
	case r := <-done:
		t.Fatalf("RevokeUser ended before its answer was dropped: %d, %v", r.n, r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("the revoke was not applied")
	}
	// alice logs in again, at the old leader: the retry is then the new
	// leader's first write, which it must not run before it has applied
	// the old leader's entries (the barrier in revokeUser).
	mustSave(t, old, "s4", `{"_user":"alice"}`)
	next := (l + 1) % 3
	tc.transferTo(next)
	close(proceed)
	r := <-done
	if armed.Load() {
		t.Fatal("the answer was not dropped: the test tests nothing")
	}
	if r.err != nil || r.n != 3 {
		t.Errorf("RevokeUser retried through a new leader = %d, %v; want 3, nil", r.n, r.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, found, err := tc.nodes[next].Restore(ctx, "s4", transport.Linearizable); err != nil || !found {
		t.Errorf("the session saved after the revoke was applied: found %v, %v; the retry ran the revoke again", found, err)
	}
}

// TestRevokeRetriedAtALeaderThatHasNotAppliedIt: the retry of a revoke
// reaches a new leader that holds the first try's entry in its log but has
// not applied it yet. The barrier in revokeUser makes it apply that first,
// so the retry is answered with the first count; without it the retry was
// proposed again, and logged out the session the user made in between.
func TestRevokeRetriedAtALeaderThatHasNotAppliedIt(t *testing.T) {
	tc, l := aliceOnThreeNodes(t)
	old := tc.nodes[l]
	next := (l + 1) % 3
	tc.waitSame()
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release)
	tc.nodes[next].fsm.held.Store(&hold)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := fsm.RequestID{9}
	if n, err := old.revokeUser(ctx, "alice", id); err != nil || n != 3 {
		t.Fatalf("revoke: %d, %v", n, err)
	}
	mustSave(t, old, "s4", `{"_user":"alice"}`) // alice logs in again
	tc.transferTo(next)
	if got := tc.nodes[next].fsm.applied.get(); got >= old.fsm.applied.get() {
		t.Fatalf("the new leader applied index %d of %d: the test tests nothing", got, old.fsm.applied.get())
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := tc.nodes[next].revokeUser(ctx, "alice", id) // the retry
		done <- result{n, err}
	}()
	time.Sleep(300 * time.Millisecond) // the retry is in revokeUser
	release()
	r := <-done
	if r.err != nil || r.n != 3 {
		t.Errorf("the retry at a leader that had not applied the first try: %d, %v; want 3, nil", r.n, r.err)
	}
	if _, found, err := tc.nodes[next].Restore(ctx, "s4", transport.Linearizable); err != nil || !found {
		t.Errorf("the session saved after the revoke: found %v, %v; the retry ran the revoke again", found, err)
	}
}

// aliceOnThreeNodes starts three nodes and saves alice's sessions s1, s2
// and s3 at the leader, whose index it returns.
func aliceOnThreeNodes(t *testing.T) (*testCluster, int) {
	t.Helper()
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	for _, sid := range []string{"s1", "s2", "s3"} {
		mustSave(t, tc.nodes[l], sid, `{"_user":"alice"}`)
	}
	return tc, l
}
