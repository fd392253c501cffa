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
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/fsm"
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

// TestAdminOnce: a write's answer is remembered by op and nonce; a failed
// run is not; a retry arriving during the run waits for it.
func TestAdminOnce(t *testing.T) {
	var o adminOnce
	ctx := context.Background()
	runs := 0
	f := func() ([]byte, error) { runs++; return []byte(fmt.Sprint(runs)), nil }
	a, _ := o.do(ctx, "remove", "n1", f)
	b, _ := o.do(ctx, "remove", "n1", f)
	if string(a) != "1" || string(b) != "1" {
		t.Fatalf("same nonce: answers %s, %s; want 1, 1", a, b)
	}
	if c, _ := o.do(ctx, "revoke_user", "n1", f); string(c) != "2" {
		t.Fatalf("another op with the same nonce: %s, want a run of its own", c)
	}
	if d, _ := o.do(ctx, "remove", "", f); string(d) != "3" {
		t.Fatalf("no nonce: %s, want a run", d)
	}
	fails := errors.New("no leader")
	if _, err := o.do(ctx, "remove", "n2", func() ([]byte, error) { return nil, fails }); err != fails {
		t.Fatal(err)
	}
	if e, err := o.do(ctx, "remove", "n2", f); err != nil || string(e) != "4" {
		t.Fatalf("after a failed run: %s, %v; want a run", e, err)
	}
	if _, err := o.do(ctx, "remove", strings.Repeat("x", adminNonceMax+1), f); err == nil {
		t.Fatal("an overlong nonce was taken")
	}
	release := make(chan struct{})
	first := make(chan []byte)
	go func() {
		r, _ := o.do(ctx, "remove", "n3", func() ([]byte, error) { <-release; return []byte("slow"), nil })
		first <- r
	}()
	time.Sleep(20 * time.Millisecond)
	second := make(chan []byte)
	go func() { r, _ := o.do(ctx, "remove", "n3", f); second <- r }()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if r1, r2 := <-first, <-second; string(r1) != "slow" || string(r2) != "slow" {
		t.Fatalf("a retry during the run: %s, %s; want both slow", r1, r2)
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
	if err := c.Patch(ctx, "s", set, nil); !errors.Is(err, client.ErrTooLarge) {
		t.Fatalf("patch setting 5 keys, limit 4: %v; want ErrTooLarge", err)
	}
	if err := c.Patch(ctx, "s", nil, del); !errors.Is(err, client.ErrTooLarge) {
		t.Fatalf("patch deleting 5 keys, limit 4: %v; want ErrTooLarge", err)
	}
	if after := n.raft.LastIndex(); after != before {
		t.Fatalf("refused patches reached the log: last index %d, was %d", after, before)
	}
	delete(set, "k4")
	if err := c.Patch(ctx, "s", set, del[:4]); err != nil {
		t.Fatalf("patch of 4 sets and 4 deletes, limit 4: %v", err)
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
