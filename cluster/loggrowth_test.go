package cluster

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// snapshotMetas reads the metadata of the snapshots kept in a node's data
// directory, newest first.
func snapshotMetas(t *testing.T, dir string) []*raft.SnapshotMeta {
	t.Helper()
	fss, err := raft.NewFileSnapshotStore(dir, snapshotsRetained, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := fss.List()
	if err != nil {
		t.Fatal(err)
	}
	return metas
}

// latestSnapshot reads the newest snapshot's metadata in a node's data
// directory (zero when there is none).
func latestSnapshot(t *testing.T, dir string) raft.SnapshotMeta {
	t.Helper()
	metas := snapshotMetas(t, dir)
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

// logEntries calls fn with each entry of the node's raft log, oldest first.
func logEntries(t *testing.T, n *Node, fn func(l raft.Log)) {
	t.Helper()
	first, err := n.bolt.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := n.bolt.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i <= last && first != 0; i++ {
		var l raft.Log
		if err := n.bolt.GetLog(i, &l); err != nil {
			// A snapshot's compaction may have removed it meanwhile.
			if now, ferr := n.bolt.FirstIndex(); errors.Is(err, raft.ErrLogNotFound) && ferr == nil && now > i {
				i = now - 1
				continue
			}
			t.Fatalf("%s: entry %d of %d..%d: %v", n.ID(), i, first, last, err)
		}
		fn(l)
	}
}

// logCommands calls fn with each command entry of the node's raft log,
// decoded.
func logCommands(t *testing.T, n *Node, fn func(l raft.Log, c fsm.Command)) {
	t.Helper()
	logEntries(t, n, func(l raft.Log) {
		if l.Type != raft.LogCommand {
			return
		}
		c, err := fsm.DecodeCommand(l.Data)
		if err != nil {
			t.Fatalf("%s: entry %d: %v", n.ID(), l.Index, err)
		}
		fn(l, c)
	})
}

// logHeld returns how many entries the node's raft log holds, and their
// bytes.
func logHeld(t *testing.T, n *Node) (entries int, bytes uint64) {
	t.Helper()
	logEntries(t, n, func(l raft.Log) {
		entries++
		bytes += uint64(len(l.Data))
	})
	return entries, bytes
}

// on64MiBDisk makes every data directory look like a 64 MiB file system
// with 60 MiB free, for the rest of the test.
func on64MiBDisk(t *testing.T) {
	fakeDisk(t, 64<<20, 60<<20)
}

// TestLogKeptToASmallDisk: on a file system of 64 MiB a node left with the
// defaults keeps its raft log to a sixteenth of it (4 MiB): a snapshot
// comes after 4 to 6 MiB of log, not 256 MiB, and leaves at most twice
// that of entries, not 4096 entries. Unscaled, a drill's log filled a
// 64 MiB disk before its first snapshot.
func TestLogKeptToASmallDisk(t *testing.T) {
	if got := []uint64{logBudget(0), logBudget(1 << 40), logBudget(4 << 30), logBudget(1 << 30), logBudget(64 << 20), logBudget(16 << 20)}; fmt.Sprint(got) !=
		fmt.Sprint([]uint64{256 << 20, 256 << 20, 256 << 20, 64 << 20, 4 << 20, 4 << 20}) {
		t.Errorf("logBudget for unknown, 1 TiB, 4 GiB, 1 GiB, 64 MiB, 16 MiB: %v", got)
	}
	for _, c := range []struct{ budget, avg, recent, want uint64 }{
		{256 << 20, 1000, 0, 4096},      // at most 4096
		{256 << 20, 4 << 20, 0, 64},     // batches of 4 MiB: what the budget holds
		{4 << 20, 32 << 10, 0, 128},     // a small disk
		{4 << 20, 32 << 10, 200, 200},   // reaching back the dedupe window
		{4 << 20, 32 << 10, 10000, 256}, // but to twice the budget at most
		{4 << 20, 1 << 20, 100, 8},
		{4 << 20, 8 << 20, 0, 1}, // at least one
		{4 << 20, 0, 0, 4096},
	} {
		if got := trailingFor(c.budget, c.avg, c.recent, 4096); got != c.want {
			t.Errorf("trailingFor(budget %d, entries of %d bytes, %d in the window): %d, want %d", c.budget, c.avg, c.recent, got, c.want)
		}
	}

	// A restart from a snapshot larger than the budget waits for as much
	// log as it holds, as after writing it.
	if g := newLogGrowth(4 << 20); func() bool { g.restored(40 << 20); return g.limit() < 40<<20 }() {
		t.Errorf("after restoring a 40 MiB snapshot the next is due after %d bytes of log", g.limit())
	}

	on64MiBDisk(t)
	dir := t.TempDir()
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour})
	// 20 MiB of log over 16 sessions of 32 KiB: each save is an entry.
	value := `{"p":"` + strings.Repeat("x", 32<<10) + `"}`
	for i := range 640 {
		mustSave(t, n, fmt.Sprintf("s%02d", i%16), value)
	}
	if latestSnapshot(t, dir).Index == 0 {
		t.Fatal("no snapshot after 20 MiB of log on a 64 MiB disk")
	}
	// At most 1.5 times the budget since the last snapshot, and the
	// budget's worth it left.
	entries, bytes := logHeld(t, n)
	if bytes > 14<<20+1<<20 {
		t.Fatalf("the raft log holds %d entries, %d bytes, after 20 MiB of saves on a 64 MiB disk; want under 15 MiB", entries, bytes)
	}
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	// All the saves came within the dedupe window: twice the budget.
	entries, bytes = logHeld(t, n)
	if bytes > 8<<20+64<<10 {
		t.Fatalf("a snapshot left %d entries, %d bytes, in the raft log; want at most 8 MiB (about 250 entries of 33 KB)", entries, bytes)
	}
	t.Logf("after a snapshot the log holds %d entries, %d bytes", entries, bytes)
}

// TestFrequentSnapshotsLoggedLower: a snapshot's lines go to info once
// every routineEvery, all of them or none, and the rest to debug; the
// snapshot store's lines, which repeat raft's, go to debug. A drill on a
// 64 MiB disk logged 473 snapshots in 40 s, four lines each, at info.
func TestFrequentSnapshotsLoggedLower(t *testing.T) {
	var out logCapture
	var r routineLines
	q := quietRaft{Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: &out}), routine: &r}
	snapshot := func(index int) {
		q.Info("creating new snapshot", "path", "x.tmp")
		q.Info("starting snapshot up to", "index", index)
		q.Info("compacting logs", "from", 1, "to", index/2)
		q.Info("snapshot complete up to", "index", index)
		q.Info("reaping snapshot", "path", "y")
	}
	snapshot(10)
	snapshot(20)
	snapshot(30)
	got := out.String()
	if strings.Count(got, "\n") != 3 || strings.Count(got, "index=10") != 2 || strings.Contains(got, "snapshot: path") {
		t.Fatalf("three snapshots in a row: want the first's three raft lines at info, got:\n%s", got)
	}
	r.last = r.last.Add(-routineEvery)
	snapshot(40)
	if got := out.String()[len(got):]; strings.Count(got, "\n") != 3 || strings.Count(got, "index=40") != 2 {
		t.Fatalf("a snapshot routineEvery later: want its three lines at info, got:\n%s", got)
	}
	q.Info("election won", "term", 3)
	if !strings.Contains(out.String(), "election won") {
		t.Fatal("other raft lines stay at info")
	}
}

// TestSnapshotStoreErrorsOncePerMinute: the snapshot store's error lines
// go out once a minute each, the repeats to debug, and the next that goes
// out counts them. On a full disk a node tries a snapshot every second,
// and the store logged "failed to write metadata" at error every time (an
// operator's drill).
func TestSnapshotStoreErrorsOncePerMinute(t *testing.T) {
	var out logCapture
	q := quietRaft{Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: &out}), errors: new(sayEachEvery)}
	for range 5 {
		q.Error("failed to write metadata", "error", "no space left on device")
	}
	q.Error("failed to move snapshot into place", "error", "x")
	got := out.String()
	if strings.Count(got, "failed to write metadata") != 1 || strings.Count(got, "failed to move snapshot into place") != 1 {
		t.Fatalf("five failures of one kind and one of another: want one line each, got:\n%s", got)
	}
	q.errors.of("failed to write metadata").said = time.Now().Add(-time.Minute)
	q.Error("failed to write metadata", "error", "no space left on device")
	if got := out.String()[len(got):]; strings.Count(got, "\n") != 1 || !strings.Contains(got, "failures_since_last_said=5") {
		t.Fatalf("a minute later: want one line counting the 5 failures since, got:\n%s", got)
	}
}

// TestRetryAfterRestartOnASmallDisk: on a small disk a snapshot still
// leaves the entries of the dedupe window, up to twice the log's budget,
// so that a write retried across a restart is recognised. Leaving the
// budget's worth (4 MiB here) alone, a review's test saw the retry of a
// write 6 MiB of log back applied again over a later one.
func TestRetryAfterRestartOnASmallDisk(t *testing.T) {
	on64MiBDisk(t)
	tc := newTestCluster(t, 1, func(c *Config) { c.SaveFrequency = time.Hour })
	n := tc.nodes[tc.leader()]
	first := transport.Request{Op: transport.OpSave, SID: "s", Data: []byte(`{"v":"first"}`), Nonce: transport.Nonce{1, 2, 3}}
	later := transport.Request{Op: transport.OpSave, SID: "s", Data: []byte(`{"v":"later"}`), Nonce: transport.Nonce{4, 5, 6}}
	c := nativeConn(t, n.Addr())
	roundTrip(t, c, &first)
	roundTrip(t, c, &later)
	c.Close()
	value := `{"p":"` + strings.Repeat("x", 32<<10) + `"}`
	for i := range 190 { // 6 MiB
		mustSave(t, n, fmt.Sprintf("o%02d", i%16), value)
	}
	n.tuneTrailingLogs()
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tc.crash(0)
	n = tc.start(0)
	tc.leader()
	c = nativeConn(t, n.Addr())
	defer c.Close()
	retry := first
	roundTrip(t, c, &retry)
	if got := roundTrip(t, c, &transport.Request{Op: transport.OpRestore, SID: "s"}); string(got.Data) != `{"v":"later"}` {
		t.Fatalf("after the retry of a write 6 MiB of log before the snapshot, s = %s; want the later write", got.Data)
	}
}

// TestBatchesKeptSmallOnASmallDisk: on a 64 MiB file system a batch of
// writes (one raft log entry) holds at most a quarter of the log's budget,
// 1 MiB, not 4 MiB. bbolt rewrites the log's last leaf, up to four entries,
// with each append: a drill with 16 clients saving 4 sessions of 1 MB
// filled a 64 MiB disk in a second, and the node stopped serving.
func TestBatchesKeptSmallOnASmallDisk(t *testing.T) {
	if got := []int{batchBytesFor(256 << 20), batchBytesFor(16 << 20), batchBytesFor(4 << 20)}; fmt.Sprint(got) != fmt.Sprint([]int{4 << 20, 4 << 20, 1 << 20}) {
		t.Errorf("batchBytesFor 256 MiB, 16 MiB, 4 MiB of budget: %v", got)
	}
	on64MiBDisk(t)
	// No snapshot, so that every entry stays to be looked at; the batches
	// follow the disk also where Config sets the log's sizes.
	n := startNode(t, Config{SaveFrequency: time.Hour, SnapshotLogBytes: 1 << 40, TrailingLogs: 1 << 20})
	value := `{"p":"` + strings.Repeat("x", 300<<10) + `"}`
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 8 {
				mustSave(t, n, fmt.Sprintf("s%d", (c+i)%4), value)
			}
		}()
	}
	wg.Wait()
	largest, writes, entries := 0, 0, 0
	logCommands(t, n, func(l raft.Log, cmd fsm.Command) {
		entries++
		writes += max(len(cmd.Batch), 1)
		largest = max(largest, len(l.Data))
	})
	if writes < 128 {
		t.Fatalf("the log holds %d of the 128 saves", writes)
	}
	if largest > 1<<20+4<<10 {
		t.Fatalf("a log entry of %d bytes on a 64 MiB disk; want at most 1 MiB", largest)
	}
	t.Logf("128 saves of 300 KiB in %d entries, the largest %d bytes", entries, largest)
}

// appendCounter is a log store that notes the most entries one append
// stored.
type appendCounter struct {
	raft.LogStore
	most *atomic.Int64
}

func (a appendCounter) StoreLogs(logs []*raft.Log) error {
	for n := int64(len(logs)); ; {
		m := a.most.Load()
		if n <= m || a.most.CompareAndSwap(m, n) {
			break
		}
	}
	return a.LogStore.StoreLogs(logs)
}

// TestFollowerSentFewEntriesOnASmallDisk: on a 64 MiB disk raft sends a
// follower at most 2 entries in one append, which it stores in one bbolt
// transaction: on three nodes with such disks and 1 MB sessions, a
// follower behind the leader, sent up to 256 entries of 1 MiB at once,
// grew its raft.db to 55 MB, filled its disk and stayed behind (a drill,
// 2 of 6 runs; with 2 entries, 7 of 7 runs peaked at 50 MB).
func TestFollowerSentFewEntriesOnASmallDisk(t *testing.T) {
	if got := []int{appendEntriesFor(256 << 20), appendEntriesFor(64 << 20), appendEntriesFor(8 << 20), appendEntriesFor(4 << 20)}; fmt.Sprint(got) != "[256 8 2 2]" {
		t.Errorf("appendEntriesFor 256 MiB, 64 MiB, 8 MiB, 4 MiB of budget: %v", got)
	}
	on64MiBDisk(t)
	// No snapshot: the follower catches up from the leader's log.
	tc := newTestCluster(t, 3, func(c *Config) { c.SaveFrequency = time.Hour; c.SnapshotLogBytes = 1 << 40 })
	f := tc.follower()
	tc.stop(f)
	l := tc.nodes[tc.leader()]
	value := `{"p":"` + strings.Repeat("x", 100<<10) + `"}`
	for i := range 40 {
		mustSave(t, l, fmt.Sprintf("s%d", i), value)
	}
	var most atomic.Int64
	tc.cfgs[f].wrapLogStore = func(s raft.LogStore) raft.LogStore { return appendCounter{s, &most} }
	tc.start(f)
	tc.waitSame()
	if m := most.Load(); m < 1 || m > 2 {
		t.Fatalf("a follower 40 entries behind, on a 64 MiB disk, stored up to %d entries in one append; want 1 or 2", m)
	}
}
