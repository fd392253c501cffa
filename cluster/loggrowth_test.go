package cluster

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
)

// latestSnapshot reads the newest snapshot's metadata in a node's data
// directory (zero when there is none).
func latestSnapshot(t *testing.T, dir string) raft.SnapshotMeta {
	t.Helper()
	fss, err := raft.NewFileSnapshotStore(dir, snapshotsRetained, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := fss.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(metas) == 0 {
		return raft.SnapshotMeta{}
	}
	return *metas[0]
}

// TestSnapshotsFollowLogBytes: with raft's own entry-count trigger out of
// reach, every node snapshots when the log applied since its last snapshot
// outgrows the larger of SnapshotLogBytes and that snapshot's size (times
// 1 to 1.5), and not before; the snapshot compacts the log.
func TestSnapshotsFollowLogBytes(t *testing.T) {
	const floor = 64 << 10
	tc := newTestCluster(t, 3, func(c *Config) {
		c.SnapshotThreshold = 1 << 40
		c.TrailingLogs = 16
		c.SnapshotLogBytes = floor
	})
	l := tc.nodes[tc.leader()]
	value := `{"p":"` + strings.Repeat("x", 1000) + `"}`
	save := func(from, to int) {
		for i := from; i < to; i++ {
			mustSave(t, l, fmt.Sprintf("s%04d", i), value)
		}
		tc.waitSame()
	}
	// 200 KB of state: past the floor, so every node snapshots on its own.
	save(0, 200)
	for i := range tc.nodes {
		dir := tc.cfgs[i].DataDir
		poll(t, func() bool { return latestSnapshot(t, dir).Index > 0 }, 10*time.Second, "a snapshot on "+tc.nodes[i].ID())
	}
	// A snapshot of the whole state now: the next is due after 1 to 1.5
	// times as many bytes of log as it holds (~200 KB), not after the
	// 64 KB floor.
	before := make([]raft.SnapshotMeta, len(tc.nodes))
	for i, n := range tc.nodes {
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
		before[i] = latestSnapshot(t, tc.cfgs[i].DataDir)
		if before[i].Size < 200<<10 {
			t.Fatalf("%s: snapshot of %d bytes, want the whole state", n.ID(), before[i].Size)
		}
	}
	save(200, 300) // ~100 KB of log
	time.Sleep(300 * time.Millisecond)
	for i, n := range tc.nodes {
		if got := latestSnapshot(t, tc.cfgs[i].DataDir); got.Index != before[i].Index {
			t.Fatalf("%s snapshotted after ~100 KB of log (index %d -> %d); its last snapshot holds %d bytes",
				n.ID(), before[i].Index, got.Index, before[i].Size)
		}
	}
	save(300, 550) // ~350 KB since the snapshot: due
	for i, n := range tc.nodes {
		dir := tc.cfgs[i].DataDir
		poll(t, func() bool { return latestSnapshot(t, dir).Index > before[i].Index }, 10*time.Second,
			"a snapshot after the log outgrew the last one on "+n.ID())
		first, err := n.bolt.FirstIndex()
		if err != nil {
			t.Fatal(err)
		}
		if first <= before[i].Index {
			t.Fatalf("%s: log starts at %d, not compacted past the earlier snapshot at %d", n.ID(), first, before[i].Index)
		}
	}
}

// TestLogGrowthLimitsAreJittered: the limit after a snapshot is its size
// (or the floor) times a factor from 1 to 1.5, drawn anew each time, so
// nodes applying the same log do not all snapshot at once.
func TestLogGrowthLimitsAreJittered(t *testing.T) {
	const floor, size = 1 << 20, 10 << 20
	seen := map[uint64]bool{}
	for range 50 {
		g := newLogGrowth(floor)
		if l := g.limit(); l < floor || l >= floor*3/2 {
			t.Fatalf("first limit %d, want [%d, %d)", l, floor, floor*3/2)
		}
		g.written(g.captured(), size)
		l := g.limit()
		if l < size || l >= size*3/2 {
			t.Fatalf("limit after a %d-byte snapshot: %d, want [%d, %d)", size, l, size, size*3/2)
		}
		seen[l] = true
		g.written(g.captured(), 10)
		if l := g.limit(); l < floor || l >= floor*3/2 {
			t.Fatalf("limit after a tiny snapshot: %d, want the floor's [%d, %d)", l, floor, floor*3/2)
		}
	}
	if len(seen) < 40 {
		t.Fatalf("only %d different limits in 50 draws", len(seen))
	}
}

// persistRecorder is an FSMSnapshot that notes that it was persisted.
type persistRecorder struct{ done chan struct{} }

func (p *persistRecorder) Persist(sink raft.SnapshotSink) error { close(p.done); return sink.Close() }
func (p *persistRecorder) Release()                             {}

// discardSink is a SnapshotSink that keeps nothing.
type discardSink struct{}

func (discardSink) Write(b []byte) (int, error) { return len(b), nil }
func (discardSink) Close() error                { return nil }
func (discardSink) Cancel() error               { return nil }
func (discardSink) ID() string                  { return "discard" }

// TestSnapshotWaitsForSaveFile: a snapshot is not written while the save
// file is (trackedFSM.writeState), and is once it is done.
func TestSnapshotWaitsForSaveFile(t *testing.T) {
	tf := &trackedFSM{FSM: fsm.NewFSM(), applied: newAppliedIndex(), growth: newLogGrowth(1 << 20)}
	rec := &persistRecorder{done: make(chan struct{})}
	s := &countedSnapshot{FSMSnapshot: rec, growth: tf.growth, writeState: tf.writeState}
	tf.writing.Lock() // a save file being written
	errc := make(chan error, 1)
	go func() { errc <- s.Persist(discardSink{}) }()
	select {
	case <-rec.done:
		t.Fatal("the snapshot was written while the save file was")
	case <-time.After(100 * time.Millisecond):
	}
	tf.writing.Unlock()
	select {
	case <-rec.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the snapshot was not written after the save file was done")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
