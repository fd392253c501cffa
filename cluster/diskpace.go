package cluster

import (
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Large background writes (the save file, raft snapshots, log compaction)
// share one disk with the raft log, whose fsyncs every acknowledged write
// waits for. This file keeps them from stalling those fsyncs.

// paceChunk is how much of a large file is written between pacing steps.
const paceChunk = 1 << 20

// diskPacer paces the writing of one large file: each chunk written is sent
// to disk at once, and the writer waits until the chunk before it is there.
// At most two chunks of the file are on their way to disk at any time, so a
// raft log fsync never queues behind the whole file (as it does when one
// closing fsync flushes 100 MB), and that closing fsync has little left to
// do. The file is still made durable by its own fsync: this only spreads
// the work out.
type diskPacer struct {
	f       *os.File
	written int64 // bytes written to f
	started int64 // bytes whose writeback was started
	waited  int64 // bytes known to be on disk
}

// wrote tells the pacer that n more bytes were written to the file.
func (p *diskPacer) wrote(n int) {
	p.written += int64(n)
	if p.written-p.started < paceChunk {
		return
	}
	if p.started > p.waited {
		awaitWriteback(p.f, p.waited, p.started-p.waited)
		p.waited = p.started
	}
	startWriteback(p.f, p.started, p.written-p.started)
	p.started = p.written
}

// pacedWriter writes to a file through a diskPacer.
type pacedWriter struct{ diskPacer }

func newPacedWriter(f *os.File) *pacedWriter { return &pacedWriter{diskPacer{f: f}} }

func (w *pacedWriter) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.wrote(n)
	return n, err
}

// pacedSnapshots paces the state file of every snapshot written to a
// raft.FileSnapshotStore in dir (taken here or installed from a leader).
// The sink does not expose its file, so the pacer opens the file by the
// path FileSnapshotStore gives it (snapshots/ID.tmp/state.bin); should
// that ever fail, the snapshot is written unpaced, as before.
//
// It also removes the snapshot that a new one makes obsolete in steps
// (shrinkAndRemove): raft deletes it whole, which frees up to a gigabyte at
// once and holds the filesystem's journal, as replacing a save file did.
type pacedSnapshots struct {
	raft.SnapshotStore
	dir    string
	retain int // how many snapshots the store keeps
}

func (s pacedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	s.clearReaped()
	sink, err := s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(s.dir, "snapshots", sink.ID()+".tmp", "state.bin"))
	if err != nil {
		return sink, nil
	}
	return &pacedSink{SnapshotSink: sink, pace: diskPacer{f: f}, store: s}, nil
}

// reapedPrefix names, in the data directory, the second names of snapshot
// files that raft is about to delete.
const reapedPrefix = ".reaping-"

// stateFile is the path of a finished snapshot's state file.
func (s pacedSnapshots) stateFile(id string) string {
	return filepath.Join(s.dir, "snapshots", id, "state.bin")
}

// keepReaped gives the state file of every snapshot that finishing a new
// one will make raft delete a second name (keepSecondName), and reports
// whether there was any.
func (s pacedSnapshots) keepReaped() bool {
	metas, err := s.SnapshotStore.List()
	if err != nil || s.retain < 1 || len(metas) < s.retain {
		return false
	}
	for _, m := range metas[s.retain-1:] {
		keepSecondName(s.stateFile(m.ID), filepath.Join(s.dir, reapedPrefix+m.ID))
	}
	return true
}

// clearReaped drops every second name keepReaped made (dropSecondName):
// the files of snapshots raft deleted are shrunk away in steps; those of
// snapshots still there (the new one failed, or a crash came between) only
// lose the extra name.
func (s pacedSnapshots) clearReaped() {
	names, _ := filepath.Glob(filepath.Join(s.dir, reapedPrefix+"*"))
	for _, name := range names {
		dropSecondName(s.stateFile(filepath.Base(name)[len(reapedPrefix):]), name)
	}
}

type pacedSink struct {
	raft.SnapshotSink
	pace   diskPacer
	store  pacedSnapshots
	closed bool
}

func (s *pacedSink) Write(b []byte) (int, error) {
	n, err := s.SnapshotSink.Write(b)
	s.pace.wrote(n)
	return n, err
}

// Close finishes the snapshot. It is called twice, by the state machine's
// Persist and again by raft, and only the first does anything: a second
// pass gave retained snapshots second names, and its clearReaped shrank
// the reaped files beside the first's. Raft's own sink ignores the second.
func (s *pacedSink) Close() error {
	if s.closed {
		return s.SnapshotSink.Close()
	}
	s.closed = true
	s.pace.f.Close()
	kept := s.store.keepReaped()
	err := s.SnapshotSink.Close()
	if kept {
		// In the background: on a follower, Close runs in raft's main loop.
		go s.store.clearReaped()
	}
	return err
}

func (s *pacedSink) Cancel() error {
	s.pace.f.Close()
	return s.SnapshotSink.Cancel()
}

// compactChunk is how many log entries one transaction of a log compaction
// deletes; after each, the compaction pauses as long as the chunk took, up
// to compactPauseMax.
const (
	compactChunk    = 512
	compactPauseMax = 50 * time.Millisecond
)

// chunkedCompaction deletes the head of the log (raft's compaction after a
// snapshot, tens of thousands of entries at a time) in transactions of
// compactChunk entries, oldest first. The log store has one writer at a
// time: deleting 70,000 entries in one transaction held back every write
// behind it for 60-200 ms; in chunks, the leader's appends go in between.
// Every intermediate state is a shorter compaction, which raft accepts after
// a crash. Other deletions (a follower truncating a conflicting tail) are
// short and pass through whole.
//
// The log store's file stays out of resident memory (mappedPages).
type chunkedCompaction struct {
	raft.LogStore
	mapped *mappedPages    // nil: nothing is dropped
	obs    *metrics        // log_store_duration_seconds; nil: none
	free   *freePageReturn // told of each deletion; nil: none
}

func (s chunkedCompaction) DeleteRange(from, to uint64) error {
	err := s.deleteRange(from, to)
	if err == nil {
		s.free.compacted()
	}
	return err
}

func (s chunkedCompaction) deleteRange(from, to uint64) error {
	first, err := s.FirstIndex()
	if err != nil || first == 0 || from != first || to-from < compactChunk {
		return s.LogStore.DeleteRange(from, to)
	}
	// The whole log goes when a follower installs a snapshot, on raft's
	// main goroutine, which nothing else is waiting to write behind: no
	// pauses then.
	last, err := s.LastIndex()
	whole := err == nil && to >= last
	for lo := from; ; lo += compactChunk {
		hi := min(lo+compactChunk-1, to)
		start := time.Now()
		err := s.LogStore.DeleteRange(lo, hi)
		s.mapped.drop() // after each chunk, so no more than a chunk's pages pile up
		if err != nil {
			return err
		}
		if hi == to {
			return nil
		}
		// Leave the log store's one writer free as long again, so the
		// leader's appends are not queued behind chunk after chunk (78,000
		// entries deleted back to back in 0.4 s held saves for 170 ms).
		if !whole {
			time.Sleep(min(time.Since(start), compactPauseMax))
		}
	}
}

func (s chunkedCompaction) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

func (s chunkedCompaction) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	err := s.LogStore.StoreLogs(logs)
	s.obs.observeLogStore(time.Since(start))
	n := 0
	for _, l := range logs {
		n += len(l.Data)
	}
	s.mapped.touched(n)
	return err
}

func (s chunkedCompaction) GetLog(index uint64, l *raft.Log) error {
	err := s.LogStore.GetLog(index, l)
	if err == nil {
		s.mapped.touched(len(l.Data))
	}
	return err
}

// dropMappedBytes is how much log may be stored or read between two drops
// of the log store's mapped pages.
const dropMappedBytes = 64 << 20

// mappedPages keeps the pages of the log store's file that bbolt maps from
// adding up in this process's resident memory. Bbolt writes with pwrite but
// reads through a read-only shared mapping: a leader's reads of entries for
// its followers and every compaction (which reads each page it frees) map
// pages, and the kernel maps the cached pages around each one too, so the
// log written since the last compaction stayed resident (RssFile 600 MB on
// a single node after loading 1M sessions), and a restart's replay of the
// log after its snapshot added as much. They are dropped after each chunk
// of a compaction and after every dropMappedBytes of log stored or read (on
// a goroutine of its own), with MADV_DONTNEED: the pages leave this process
// but stay in the page cache. MADV_PAGEOUT, tried first, also evicted them
// from the cache, and the next compaction read every page it freed back
// from disk while it held bbolt's one writer: saves stalled for 2.8 s.
type mappedPages struct {
	db      *bbolt.DB
	since   atomic.Int64 // log bytes stored or read since the last drop
	running atomic.Bool  // a drop is under way
}

// touched counts n bytes of log stored or read, and drops the pages once
// dropMappedBytes have been since the last drop. Like drop, it does nothing
// on a nil *mappedPages (a store whose database was not found).
func (m *mappedPages) touched(n int) {
	if m == nil || m.since.Add(int64(n)) < dropMappedBytes || !m.running.CompareAndSwap(false, true) {
		return
	}
	m.since.Store(0)
	go func() {
		defer m.running.Store(false)
		dropMapped(m.db)
	}()
}

func (m *mappedPages) drop() {
	if m == nil {
		return
	}
	m.since.Store(0)
	dropMapped(m.db)
}

// newMappedPages returns the mappedPages of a raft-boltdb store, or nil if
// its bbolt database cannot be reached. raft-boltdb keeps the database in
// an unexported field (conn); the version is pinned, and
// TestNewMappedPagesFindsTheDatabase fails if an upgrade moves it.
func newMappedPages(s *raftboltdb.BoltStore) *mappedPages {
	f := reflect.ValueOf(s).Elem().FieldByName("conn")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*bbolt.DB]() {
		return nil
	}
	db := *(**bbolt.DB)(unsafe.Pointer(f.UnsafeAddr()))
	if db == nil {
		return nil
	}
	return &mappedPages{db: db}
}
