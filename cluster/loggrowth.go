package cluster

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/internal/bytesize"
)

// DefaultSnapshotLogBytes and DefaultTrailingLogs are the most that
// Config.SnapshotLogBytes and Config.TrailingLogs are when left at 0.
const (
	DefaultSnapshotLogBytes = 256 << 20
	DefaultTrailingLogs     = 4096
)

// The raft log's share of a small disk. Unscaled, a snapshot came after
// 256 MiB of log, and 4096 entries (each up to a batch of saves, up to
// 4 MiB) stayed after one: on a 64 MiB disk the log filled the disk before
// its first snapshot. So both are held to logBudget: between snapshots the
// log grows by at most 1.5 times it (or the state's size), and a snapshot
// leaves trailingFor's entries, at most twice it.
const (
	minLogBudget      = 4 << 20
	assumedEntryBytes = 64 << 10 // a batch of 64 saves of 1 KiB, until entries are seen
)

// logBudget is the raft log's share of a file system of size bytes: a
// sixteenth, between 4 MiB and DefaultSnapshotLogBytes (which is also the
// share when the size is not known, 0).
func logBudget(size uint64) uint64 {
	if size == 0 {
		return DefaultSnapshotLogBytes
	}
	return min(max(size/16, minLogBudget), DefaultSnapshotLogBytes)
}

// maxBatchBytes bounds a batch of writes (one raft log entry).
const maxBatchBytes = 4 << 20

// batchBytesFor is the most bytes of writes one raft log entry carries
// where the log's budget is budget: 4 MiB, or a quarter of a small disk's
// budget. bbolt rewrites the log's last leaf, which holds up to four
// entries, with each append, and frees the old copy only after it: on a
// 64 MiB disk, sessions of 1 MB in 4 MiB batches needed 32 MB for that
// alone, and the disk filled. Sessions of ordinary size never fill a batch
// that large.
func batchBytesFor(budget uint64) int {
	return int(min(budget/4, maxBatchBytes))
}

// appendEntriesFor is how many entries raft sends a follower in one
// append (raft's MaxAppendEntries) where the log's budget is budget: 256,
// or on a small disk as many as half the budget holds at the largest
// batch (2 on a 64 MiB disk). A follower stores one append in one bbolt
// transaction; on three nodes with 64 MiB disks and 1 MB sessions, a
// follower behind the leader, sent up to 256 entries of 1 MiB at once,
// grew its raft.db to 55 MB, filled its disk and stayed behind (a drill).
func appendEntriesFor(budget uint64) int {
	if budget >= DefaultSnapshotLogBytes {
		return 256
	}
	return max(1, int(budget/2)/batchBytesFor(budget))
}

// trailingFor is how many entries a snapshot leaves, when entries average
// avg bytes and recent of them were applied in the last fsm.DedupeWindow:
// as many as budget holds, or more to reach back that window, up to twice
// budget (at least one entry, at most most). A node restarted from the
// snapshot recognises the retried writes of that window only from these
// entries (rememberBeforeSnapshot): leaving budget's worth alone, a small
// disk under load kept half a second of them, and a write retried across a
// restart was applied again over a later one (a review's test). What twice
// budget does not hold, a small disk cannot keep.
func trailingFor(budget, avg, recent, most uint64) uint64 {
	avg = max(avg, 1)
	return min(max(budget/avg, min(recent, 2*budget/avg), 1), most)
}

// logGrowth decides when the log has grown enough since the last snapshot
// to take another, by bytes. Raft's own trigger counts entries
// (Config.SnapshotThreshold) and looks only every 2-4 minutes; an entry
// here carries up to a batch of saves, so under heavy writes the log grew
// to gigabytes between snapshots: bolt's mapped pages, its in-memory
// freelist and each compaction all grew with it. A snapshot is due when the
// log entries applied since the last one add up to the larger of
// Config.SnapshotLogBytes and the size of the last snapshot, so that a
// large state is not rewritten after every small stretch of log (as an
// append-only file is rewritten when it has doubled), times a random
// factor from 1 to 1.5 drawn anew after each snapshot: every node applies
// the same entries, and without it all of them snapshotted at the same
// moment (1M sessions, 3 nodes on 2 cores: three 14 s snapshots at once).
//
// add and the capture in trackedFSM.Snapshot run on raft's FSM goroutine;
// the snapshot's size is noted when it has been written.
type logGrowth struct {
	floor   uint64
	applied atomic.Uint64 // bytes of log entries applied since the node started
	entries atomic.Uint64 // how many entries those were
	base    atomic.Uint64 // applied, as of the last snapshot written or restored
	next    atomic.Uint64 // bytes of log past base that make a snapshot due
	due     chan struct{} // one pending signal to snapshotOnLogGrowth
	// size is the last snapshot's, written or restored (0: none yet);
	// restoredCh signals snapshotOnLogGrowth that one was restored.
	size       atomic.Uint64
	restoredCh chan struct{}

	// The entries a snapshot leaves (trailingLogs; 0 budget: not tuned).
	// The rest is snapshotOnLogGrowth's alone.
	trailBudget, trailMost uint64
	avgEntry               uint64 // bytes per entry applied between the last two tunings
	recent                 uint64 // entries applied per fsm.DedupeWindow, at their rate then
	tunedBytes, tunedCount uint64 // applied and entries at the last one
	tunedAt                time.Time

	// budget is the log's share of its disk (logBudget), which bounds the
	// committer's batches (batchBytesFor) and the entries raft sends a
	// follower at once (appendEntriesFor).
	budget uint64
}

func newLogGrowth(floor uint64) *logGrowth {
	g := &logGrowth{floor: floor, due: make(chan struct{}, 1), restoredCh: make(chan struct{}, 1), avgEntry: assumedEntryBytes, tunedAt: time.Now()}
	g.next.Store(jittered(floor))
	return g
}

// trailingLogs returns how many entries the next snapshot should leave in
// the log (trailingFor), from the size and rate of the entries applied
// since the last call (0: not tuned). A size sets it, not a count alone: a
// batch is up to 4 MiB, and 4096 of them would be 16 GiB.
func (g *logGrowth) trailingLogs(now time.Time) uint64 {
	if g.trailBudget == 0 {
		return 0
	}
	bytes, count := g.applied.Load(), g.entries.Load()
	if count > g.tunedCount { // both only grow
		n := count - g.tunedCount
		g.avgEntry = (bytes - g.tunedBytes) / n
		if took := now.Sub(g.tunedAt); took > 0 {
			g.recent = uint64(float64(n) * float64(fsm.DedupeWindow) / float64(took.Milliseconds()+1))
		}
		g.tunedBytes, g.tunedCount, g.tunedAt = bytes, count, now
	}
	return trailingFor(g.trailBudget, g.avgEntry, g.recent, g.trailMost)
}

// jittered returns n times a random factor in [1, 1.5).
func jittered(n uint64) uint64 { return n + uint64(rand.Float64()*float64(n)/2) }

// limit is how many bytes of log may be applied before a snapshot is due.
func (g *logGrowth) limit() uint64 { return g.next.Load() }

// overdue reports whether the log applied since the last snapshot has
// reached limit.
func (g *logGrowth) overdue(limit uint64) bool {
	base := g.base.Load() // first: applied only grows, and base never passes it
	return g.applied.Load()-base >= limit
}

// add counts applied entries and their bytes, and signals when a snapshot
// is due.
func (g *logGrowth) add(bytes, entries int) {
	g.entries.Add(uint64(entries))
	g.applied.Add(uint64(bytes))
	if g.overdue(g.limit()) {
		select {
		case g.due <- struct{}{}:
		default:
		}
	}
}

// captured returns the mark a snapshot captured now covers; written(mark,
// size) makes it the base once the snapshot is safely on disk.
func (g *logGrowth) captured() uint64 { return g.applied.Load() }

func (g *logGrowth) written(mark uint64, size int64) {
	if mark > g.base.Load() {
		g.base.Store(mark)
	}
	g.size.Store(uint64(size))
	g.next.Store(jittered(max(g.floor, uint64(size))))
}

// restored: the state is now a snapshot's of size bytes; the log before it
// is covered, and the next snapshot is due as after one written (a large
// state was written again after the floor's worth of log after every
// restart).
func (g *logGrowth) restored(size int64) {
	g.base.Store(g.applied.Load())
	g.size.Store(uint64(size))
	g.next.Store(jittered(max(g.floor, uint64(size))))
	select {
	case g.restoredCh <- struct{}{}:
	default:
	}
}

// snapshotOnLogGrowth takes a snapshot whenever logGrowth says one is due.
// A failed snapshot is tried again after a pause (snapshotRetryPause), on
// its own timer: applies that go on meanwhile do not cut the pause short,
// and a node whose log stopped growing (its disk full) still tries again.
// A snapshot restored (a leader's, installed) ends a pause: it replaces
// the log, which then grows afresh. A single pause of 10 s let a follower
// on a 64 MiB disk, catching up at 20 MB/s after a moment of full disk,
// fill the disk with log it could then never compact (a drill), and so
// did the pause of up to 10 s that a long run of failures had reached (a
// review's drill).
func (n *Node) snapshotOnLogGrowth() {
	defer n.bg.Done()
	g := n.fsm.growth
	taken := 0 // snapshots taken since the last one logged at info
	var (
		retry  <-chan time.Time // set while pausing after a failure
		paused time.Duration    // the last pause; 0 after a success
		failed sayEvery
	)
	for {
		due := g.due
		if retry != nil {
			due = nil
		}
		select {
		case <-n.stop:
			return
		case <-due:
		case <-retry:
			retry = nil
		case <-g.restoredCh:
			retry, paused = nil, 0
		}
		limit := g.limit()
		if !g.overdue(limit) {
			paused = 0
			continue // a snapshot raft took or restored came first
		}
		n.tuneTrailingLogs()
		start := time.Now()
		err := n.raft.Snapshot().Error()
		switch {
		case err == nil:
			taken, paused = taken+1, 0
			const msg = "snapshot taken: the log had grown past its limit"
			level := n.routine.level(msg)
			n.log.Log(level, msg, "limit_bytes", limit, "took", time.Since(start).Round(time.Millisecond), "snapshots_since_last_logged", taken)
			if level == hclog.Info {
				taken = 0
			}
		case errors.Is(err, raft.ErrNothingNewToSnapshot):
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default:
			paused = snapshotRetryPause(paused, time.Since(start))
			retry = time.After(paused)
			level, failures := failed.next(hclog.Warn, 1)
			n.log.Log(level, "snapshot for log growth failed; trying again", "in", paused, "failures_since_last_said", failures, "error", err)
		}
	}
}

// snapshotRetryPause is the pause after a failed snapshot that took took,
// when the pause before it was last (0: the first failure): double the
// last, at least snapshotRetryMin and as long as the attempt took, and at
// most four times that, between snapshotRetryCheap and snapshotRetryMax.
// A failure that cost little (a disk full: no room for its first bytes)
// is tried again every second however long it lasts; one of a large
// state is not rewritten over and over.
func snapshotRetryPause(last, took time.Duration) time.Duration {
	most := min(max(snapshotRetryCheap, 4*took), snapshotRetryMax)
	return min(max(2*last, snapshotRetryMin, took), most)
}

const (
	snapshotRetryMin   = 250 * time.Millisecond
	snapshotRetryCheap = time.Second
	snapshotRetryMax   = 10 * time.Second
)

// tuneTrailingLogs sets raft's TrailingLogs for the snapshots to come
// (logGrowth.trailingLogs).
func (n *Node) tuneTrailingLogs() {
	if t := n.fsm.growth.trailingLogs(time.Now()); t != 0 {
		n.changeRaftConfig("trailing logs (entries a snapshot leaves)", func(rc *raft.ReloadableConfig) { rc.TrailingLogs = t })
	}
}

// countedSnapshot reports a snapshot's size to logGrowth once written.
type countedSnapshot struct {
	raft.FSMSnapshot
	growth     *logGrowth
	mark       uint64
	writeState func(func() error) error // trackedFSM.writeState
	dataDir    string                   // where the snapshot and the raft log are (reserveBudget)
}

func (s *countedSnapshot) Persist(sink raft.SnapshotSink) error {
	// Only snapshots taken here are held to the reserve: one installed
	// from the leader replaces the whole log, which frees its space. A
	// snapshot that filled the disk failed the log's appends, and so
	// acknowledged writes, each time raft tried it again (a disk-full
	// drill); stopped, it leaves the log growing until there is room.
	budget := snapshotBudget(s.dataDir, s.growth.size.Load())
	budget.w = sink
	c := &countingSink{SnapshotSink: sink, w: budget}
	err := s.writeState(func() error { return s.FSMSnapshot.Persist(c) })
	if err == nil {
		s.growth.written(s.mark, c.n)
	}
	return err
}

// snapshotBudget is reserveBudget for a snapshot taken here, whose last
// one was last bytes (0: not known), except where the disk has less free
// than the reserve (the log, or something else, took it): then a
// snapshot that may fit (last, and an eighth more) may use what is free
// but an eighth of the reserve, left for the log's appends meanwhile,
// since only a snapshot, and the compaction after it, gives the log room
// again. Held to the reserve there, a follower whose log had grown into
// it could never snapshot: its log filled the disk and it stayed behind
// for good (a drill). One that cannot fit is refused at once, as before,
// rather than fill the disk while it is written.
func snapshotBudget(dir string, last uint64) *budgetWriter {
	d, err := freeSpace(dir)
	b := budgetOn(d, err, "snapshot")
	if keep := d.reserve() / 8; err == nil && b.left == 0 && d.free > keep && last+last/8 <= d.free-keep {
		b.left, b.reserve = int64(d.free-keep), 0
	}
	return b
}

type countingSink struct {
	raft.SnapshotSink
	w io.Writer // the sink, through its budget
	n int64
}

func (c *countingSink) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// scaleLogToDisk returns the node's logGrowth, with what Config left of
// SnapshotLogBytes and TrailingLogs at 0 held to the data directory's
// logBudget (withDefaults leaves them at 0 for this), and batches held to
// it whatever Config says.
func (n *Node) scaleLogToDisk() *logGrowth {
	cfg := n.cfg
	budget, size := uint64(DefaultSnapshotLogBytes), uint64(0)
	if d, err := freeSpace(cfg.DataDir); err == nil {
		budget, size = logBudget(d.size), d.size
	}
	floor := cfg.SnapshotLogBytes
	if floor == 0 {
		floor = budget
	}
	g := newLogGrowth(floor)
	g.budget = budget
	if cfg.TrailingLogs == 0 {
		g.trailBudget, g.trailMost = budget, DefaultTrailingLogs
	}
	if budget < DefaultSnapshotLogBytes {
		args := []any{"file_system", bytesize.Text(size), "snapshot_after_log", bytesize.Text(floor)}
		if g.trailBudget != 0 {
			args = append(args, "log_left_by_a_snapshot", bytesize.Text(budget))
		}
		args = append(args, "largest_batch", bytesize.Text(uint64(batchBytesFor(budget))), "entries_per_append", appendEntriesFor(budget))
		n.log.Info("the data directory's file system is small; the raft log is kept to about a sixteenth of it", args...)
	}
	return g
}
