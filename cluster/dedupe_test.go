package cluster

import (
	"testing"

	"github.com/kadosession/kadosession/transport"
)

// TestRetryAfterRestartFromSnapshot: a write whose first try was applied
// before a snapshot, then overwritten, is retried (same nonce) after the
// node restarts from that snapshot. The retry must be recognised and not
// applied again: the later write stays.
func TestRetryAfterRestartFromSnapshot(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	n := tc.nodes[tc.leader()]
	first := transport.Request{Op: transport.OpSave, SID: "s", Data: []byte(`{"v":"first"}`), Nonce: transport.Nonce{1, 2, 3}}
	later := transport.Request{Op: transport.OpSave, SID: "s", Data: []byte(`{"v":"later"}`), Nonce: transport.Nonce{4, 5, 6}}
	c := nativeConn(t, n.Addr())
	roundTrip(t, c, &first)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	roundTrip(t, c, &later)
	c.Close()

	tc.crash(0)
	n = tc.start(0)
	tc.leader()
	c = nativeConn(t, n.Addr())
	retry := first
	roundTrip(t, c, &retry) // the first try's outcome was "lost": the client retries
	got := roundTrip(t, c, &transport.Request{Op: transport.OpRestore, SID: "s"})
	if string(got.Data) != `{"v":"later"}` {
		t.Fatalf("after the retry of a write applied before the snapshot, s = %s; want the later write", got.Data)
	}
}
