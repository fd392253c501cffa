package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
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
	return err
}

func (s *tidySink) Cancel() error {
	err := s.SnapshotSink.Cancel()
	s.done(err != nil)
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
