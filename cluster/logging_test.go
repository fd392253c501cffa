package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// logCapture is an hclog sink safe for the nodes' goroutines.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// newLoggedCluster starts an n-node test cluster whose nodes log at info
// level into captures, by node id.
func newLoggedCluster(t testing.TB, n int) (*testCluster, map[string]*logCapture) {
	logs := map[string]*logCapture{}
	tc := newTestCluster(t, n, func(c *Config) {
		logs[c.ID] = &logCapture{}
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.ID, Level: hclog.Info, Output: logs[c.ID]})
	})
	return tc, logs
}

// TestLoggingNoSessionIDsOrToken runs a three-node cluster with a client
// token, logging at trace level, through successes and failure paths —
// refused tokens, oversized and malformed requests, forwarded writes, a
// leader stopped mid-run, too many connections, pruning, the save file —
// and checks that no session id and not the token ever reach the log.
func TestLoggingNoSessionIDsOrToken(t *testing.T) {
	token := "logcheck-token-7f3a9c1e5b"
	logs := &logCapture{}
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Server.Token = []byte(token)
		c.Server.MaxConns = 64
		// Long enough for the 2 MiB request to arrive under -race: the node
		// reads the rest of a refused request (lingerAfterReply) only
		// until then, and a client still writing then got a reset, not
		// the answer. 2 s was reset about once in 10 runs under -race
		// beside CPU hogs; no step waits the timeout out, so it costs
		// nothing.
		c.Server.ReadTimeout = 10 * time.Second
		c.Duration = 200 * time.Millisecond
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.ID, Level: hclog.Trace, Output: logs})
	})
	sids := make([]string, 8)
	for i := range sids {
		sids[i] = fmt.Sprintf("logcheck%02dsid9d41c2b7e86f0a3d5c1e9b7a2f4", i)
	}
	ctx := context.Background()
	f, l := tc.nodes[tc.follower()], tc.nodes[tc.leader()]
	for i, sid := range sids {
		node := f
		if i%2 == 0 {
			node = l
		}
		addr := node.Addr()
		// With the token: a save, forwarded when it reaches a follower.
		req := fmt.Sprintf(`{"token":%q,"save":{"sid":%q,"data":{"n":%d}}}`, token, sid, i)
		if got := kadoRequest(t, addr, []byte(req)); got != `{"status":"ok"}` {
			t.Fatalf("save %d: %s", i, got)
		}
		// Failures: wrong or missing token, too large, malformed, a
		// request that never ends.
		for _, bad := range []string{
			fmt.Sprintf(`{"token":"wrong-%s","restore":{"sid":%q}}`, token, sid),
			fmt.Sprintf(`{"restore":{"sid":%q}}`, sid),
			fmt.Sprintf(`{"token":%q,"save":{"sid":%q,"data":{"big":"%s"}}}`, token, sid, strings.Repeat("x", 2<<20)),
			fmt.Sprintf(`{"token":%q,"save":{"sid":%q,"data":[1]}}`, token, sid),
			fmt.Sprintf(`{"token":%q,"save":{"sid":%q,"data":{"a":1}}`, token, sid),
		} {
			if got := kadoRequest(t, addr, []byte(bad)); !strings.Contains(got, `"status":"error"`) {
				t.Fatalf("a bad request was answered %s", got)
			}
		}
		// Native: a raft-level write error path (invalid key) and an
		// unauthenticated request.
		nc := abuseDialNative(t, addr)
		if resp := nc.call(t, transport.Request{ID: 1, Op: transport.OpPatch, SID: sid, Set: []transport.KV{{Key: "k", Value: []byte(`1`)}}}); resp.Err == nil {
			t.Fatal("a native request without the token was served")
		}
		nc.call(t, transport.Request{ID: 2, Op: transport.OpAuth, Data: []byte(token)})
		nc.call(t, transport.Request{ID: 3, Op: transport.OpPatch, SID: sid, Set: []transport.KV{{Key: "_written", Value: []byte(`1`)}}})
		nc.call(t, transport.Request{ID: 4, Op: transport.OpDelete, SID: sid})
	}
	// Expiry and a prune, a save file, a leader change.
	time.Sleep(300 * time.Millisecond)
	if _, err := l.Prune(ctx); err != nil {
		t.Logf("prune: %v", err)
	}
	_ = l.SaveNow()
	tc.stop(tc.leader())
	poll(t, func() bool { return tc.leader() >= 0 }, 10*time.Second, "a new leader")
	if err := tc.nodes[tc.leader()].Save(ctx, sids[0], []byte(`{"after":1}`)); err != nil {
		t.Logf("save after the leader change: %v", err)
	}
	tc.closeAll()

	out := logs.String()
	if len(out) == 0 {
		t.Fatal("nothing was logged: the capture is broken")
	}
	for _, sid := range sids {
		if strings.Contains(out, sid) {
			t.Errorf("the log holds session id %s in clear", sid)
		}
	}
	if strings.Contains(out, token) {
		t.Error("the log holds the client token")
	}
	t.Logf("%d log lines checked", strings.Count(out, "\n"))
}

// Raft's transport logs an ERROR for every incoming raft connection its
// shutdown ends ("failed to decode incoming command" with
// raft.ErrTransportShutdown, seen on a leader stopped with SIGTERM), which
// alerts on errors caught: quietShutdown logs those at DEBUG, and every
// other error as it was.
func TestTransportShutdownIsNoError(t *testing.T) {
	var out logCapture
	q := quietShutdown{hclog.New(&hclog.LoggerOptions{Name: "raft-net", Level: hclog.Debug, Output: &out})}
	q.Error("failed to decode incoming command", "error", raft.ErrTransportShutdown)
	q.Error("failed to decode incoming command", "error", io.ErrUnexpectedEOF)
	got := out.String()
	if !strings.Contains(got, "[DEBUG] raft-net: failed to decode incoming command: error=\"transport shutdown\"") ||
		!strings.Contains(got, "[ERROR] raft-net: failed to decode incoming command: error=\"unexpected EOF\"") {
		t.Fatalf("logged:\n%s", got)
	}
}

// TestJoiningLogsNoRoutineWarnings: a cluster formed by --join (two nodes
// joining a bootstrapped one, then catching up) logs no warning at all at
// info level; raft's "no known peers" and "failed to get previous log",
// routine while a node joins, read as faults.
//
// Raft's timeouts are 1 s, not 200 ms: what is checked is the protocol's
// steps, and a joining node slowed by a busy machine (-race beside busy
// loops, 1 run in 11) went 200 ms without answering, which its leader
// rightly warned of ("failed to contact").
func TestJoiningLogsNoRoutineWarnings(t *testing.T) {
	logs := map[string]*logCapture{}
	tc := newTestCluster(t, 3, func(c *Config) {
		logs[c.ID] = &logCapture{}
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.ID, Level: hclog.Info, Output: logs[c.ID]})
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, time.Second
	})
	mustSave(t, tc.nodes[tc.leader()], "s", `{}`)
	tc.waitSame()
	for id, l := range logs {
		for _, line := range strings.Split(l.String(), "\n") {
			if strings.Contains(line, "[WARN]") {
				t.Errorf("%s logged a warning while the cluster formed: %s", id, line)
			}
		}
	}
}

// A removed member restarted without --join served nothing, and said why
// only in raft's warnings ("not part of a stable
// configuration"); it now says it was removed and how to re-admit it:
// from its own log, which holds the configuration without it, or, when
// raft's last append to it was lost (the leader makes one attempt to send
// a removed member its removal: CI under -race once saw it not arrive in
// 10 s), from the leader's notice when it asks for votes.
func TestRemovedMemberRestartedWithoutJoinSaysSo(t *testing.T) {
	tc, logs := newLoggedCluster(t, 3)
	f := tc.follower()
	id := tc.nodes[f].ID()
	if err := tc.nodes[tc.leader()].Remove(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	tc.waitMembers(2)
	poll(t, tc.nodes[f].removed, 10*time.Second, "the removed node to learn it (its log, or the leader's notice)")
	tc.stop(f)
	logs[id].mu.Lock()
	logs[id].buf.Reset()
	logs[id].mu.Unlock()
	tc.cfgs[f].Join = nil
	tc.start(f)
	poll(t, func() bool {
		s := logs[id].String()
		return strings.Contains(s, "this node is not a member of its cluster's configuration (it was removed)") ||
			strings.Contains(s, "this node was removed from the cluster")
	}, 15*time.Second, "the restarted node to say it was removed")
	if s := logs[id].String(); !strings.Contains(s, "kadosession join --cluster ") || !strings.Contains(s, "--id "+id) {
		t.Fatalf("no way back named:\n%s", s)
	}
}
