package cluster

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// DefaultSnapshotLogBytes is Config.SnapshotLogBytes's default.
const DefaultSnapshotLogBytes = 256 << 20

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
	base    atomic.Uint64 // applied, as of the last snapshot written or restored
	next    atomic.Uint64 // bytes of log past base that make a snapshot due
	due     chan struct{} // one pending signal to snapshotOnLogGrowth
}

func newLogGrowth(floor uint64) *logGrowth {
	g := &logGrowth{floor: floor, due: make(chan struct{}, 1)}
	g.next.Store(jittered(floor))
	return g
}

// jittered returns n times a random factor in [1, 1.5).
func jittered(n uint64) uint64 { return n + uint64(rand.Float64()*float64(n)/2) }

// limit is how many bytes of log may be applied before a snapshot is due.
func (g *logGrowth) limit() uint64 { return g.next.Load() }

// overdue reports whether the log applied since the last snapshot has
// reached limit.
func (g *logGrowth) overdue(limit uint64) bool { return g.applied.Load()-g.base.Load() >= limit }

// add counts applied entries' bytes and signals when a snapshot is due.
func (g *logGrowth) add(n int) {
	g.applied.Add(uint64(n))
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
	g.next.Store(jittered(max(g.floor, uint64(size))))
}

// restored: the state is now a snapshot's; the log before it is covered.
func (g *logGrowth) restored() { g.base.Store(g.applied.Load()) }

// snapshotOnLogGrowth takes a snapshot whenever logGrowth says one is due.
// A failed snapshot is retried after a pause rather than at once.
func (n *Node) snapshotOnLogGrowth() {
	defer n.bg.Done()
	g := n.fsm.growth
	for {
		select {
		case <-n.stop:
			return
		case <-g.due:
		}
		limit := g.limit()
		if !g.overdue(limit) {
			continue // a snapshot raft took by itself came first
		}
		start := time.Now()
		err := n.raft.Snapshot().Error()
		switch {
		case err == nil:
			n.log.Info("snapshot taken: the log had grown past its limit", "limit_bytes", limit, "took", time.Since(start).Round(time.Millisecond))
		case errors.Is(err, raft.ErrNothingNewToSnapshot):
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default:
			n.log.Warn("snapshot for log growth failed; retrying later", "error", err)
			select {
			case <-n.stop:
				return
			case <-time.After(10 * time.Second):
			}
		}
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
	budget := reserveBudget(s.dataDir, "snapshot")
	budget.w = sink
	c := &countingSink{SnapshotSink: sink, w: budget}
	err := s.writeState(func() error { return s.FSMSnapshot.Persist(c) })
	if err == nil {
		s.growth.written(s.mark, c.n)
	}
	return err
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
