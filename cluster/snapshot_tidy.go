package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/internal/bytesize"
)

// tidySnapshots removes the temporary directories of snapshots that failed.
// hashicorp/raft's file store leaves one behind when it cannot write the
// new snapshot's metadata (Create fails), and when a sink's Cancel cannot
// flush what it buffered (a full disk, both): each held what it had
// written, up to a whole snapshot, and every later attempt left another,
// so a node whose disk filled kept it full after space was freed (a
// disk-full drill: a 59 MB leftover took the 60 MB freed). A start, and a
// failed Create or Cancel, remove every temporary directory that no sink
// of this process is writing.
type tidySnapshots struct {
	raft.SnapshotStore
	dir string // the store's snapshots directory
	log hclog.Logger

	mu      sync.Mutex
	writing map[string]bool // ids of the sinks open now
	// room: makeRoom's line (it may remove a snapshot after every one
	// while space is short).
	room sayEvery
}

func newTidySnapshots(store raft.SnapshotStore, dataDir string, log hclog.Logger) *tidySnapshots {
	t := &tidySnapshots{SnapshotStore: store, dir: filepath.Join(dataDir, "snapshots"), log: log, writing: map[string]bool{}}
	t.sweep()
	return t
}

const snapshotTmpSuffix = ".tmp"

// sweep removes the temporary snapshot directories no open sink writes.
func (t *tidySnapshots) sweep() {
	entries, err := os.ReadDir(t.dir)
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), snapshotTmpSuffix)
		if !ok || !e.IsDir() || t.writing[id] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(t.dir, e.Name())); err != nil {
			t.log.Warn("cannot remove the temporary directory of a snapshot that failed", "dir", e.Name(), "error", err)
			continue
		}
		t.log.Info("removed the temporary directory of a snapshot that failed", "dir", e.Name())
	}
}

func (t *tidySnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := t.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		t.sweep()
		t.makeRoom()
		return nil, err
	}
	t.mu.Lock()
	t.writing[sink.ID()] = true
	t.mu.Unlock()
	return &tidySink{SnapshotSink: sink, store: t}, nil
}

// tidySink is a sink of tidySnapshots.
type tidySink struct {
	raft.SnapshotSink
	store *tidySnapshots
}

func (s *tidySink) Close() error {
	err := s.SnapshotSink.Close() // removes its directory when it fails
	s.done(false)
	s.store.makeRoom()
	return err
}

// Cancel ends a snapshot that failed (raft cancels only those).
func (s *tidySink) Cancel() error {
	err := s.SnapshotSink.Cancel()
	s.done(err != nil)
	s.store.makeRoom()
	return err
}

// done ends the sink's writing; failed sweeps what it may have left.
func (s *tidySink) done(failed bool) {
	s.store.mu.Lock()
	delete(s.store.writing, s.ID())
	s.store.mu.Unlock()
	if failed {
		s.store.sweep()
	}
}

// makeRoom, after a snapshot failed or was written, removes every snapshot
// but the newest when the disk has less free than the reserve
// (diskSpace.reserve). A new
// snapshot is written beside the ones kept before the oldest goes, so a
// disk that a node's log had filled held two snapshots and no room for a
// third: neither the node's own snapshot, which would let its log be
// compacted, nor its leader's could be written, and it stayed behind for
// good (a drill on a 64 MiB disk). The newest is all a restart needs; the
// older one is a fallback should the newest be unreadable, which a full
// disk cannot afford.
func (t *tidySnapshots) makeRoom() {
	d, err := freeSpace(t.dir)
	if err != nil || d.free >= d.reserve() {
		return
	}
	metas, err := t.SnapshotStore.List() // newest first
	if err != nil || len(metas) < 2 {
		return
	}
	for _, m := range metas[1:] {
		if err := os.RemoveAll(filepath.Join(t.dir, m.ID)); err != nil {
			t.log.Warn("cannot remove an older snapshot to make room", "snapshot", m.ID, "error", err)
			continue
		}
		level, removed := t.room.next(hclog.Warn, 1)
		t.log.Log(level, "the disk is nearly full: removed an older snapshot to make room for the next (only the newest is kept while space is short)",
			"snapshot", m.ID, "free", bytesize.Text(d.free), "kept", metas[0].ID, "removed_since_last_said", removed)
	}
}
