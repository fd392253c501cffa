package cluster

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// failingSnapshots is a snapshot store whose Create leaves a temporary
// directory behind and fails, or whose sinks' Cancel fails and leaves
// theirs, as hashicorp/raft's file store does on a full disk.
type failingSnapshots struct {
	raft.SnapshotStore
	dir          string
	failCreate   bool
	createdCount int
}

func (f *failingSnapshots) Create(raft.SnapshotVersion, uint64, uint64, raft.Configuration, uint64, raft.Transport) (raft.SnapshotSink, error) {
	f.createdCount++
	id := filepath.Join(f.dir, "snapshots", "1-"+string(rune('0'+f.createdCount))+"-1")
	if err := os.MkdirAll(id+snapshotTmpSuffix, 0o755); err != nil {
		return nil, err
	}
	if f.failCreate {
		return nil, errors.New("write meta.json: no space left on device")
	}
	return &failingSink{id: filepath.Base(id)}, nil
}

type failingSink struct {
	io.Writer
	id string
}

func (s *failingSink) ID() string    { return s.id }
func (s *failingSink) Close() error  { return nil }
func (s *failingSink) Cancel() error { return errors.New("flush: no space left on device") }

// TestFailedSnapshotsLeaveNoTemporaryDirectories: the temporary directory
// of a snapshot whose Create or Cancel failed is removed, as is one left
// by an earlier run, at start; the one a sink is writing is not.
func TestFailedSnapshotsLeaveNoTemporaryDirectories(t *testing.T) {
	dir := t.TempDir()
	snapDir := filepath.Join(dir, "snapshots")
	leftover := filepath.Join(snapDir, "7-70-1"+snapshotTmpSuffix)
	if err := os.MkdirAll(leftover, 0o755); err != nil {
		t.Fatal(err)
	}
	inner := &failingSnapshots{dir: dir}
	tidy := newTidySnapshots(inner, dir, hclog.NewNullLogger())
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("a temporary snapshot directory from an earlier run is still there: %v", err)
	}
	tmps := func() []string {
		m, _ := filepath.Glob(filepath.Join(snapDir, "*"+snapshotTmpSuffix))
		return m
	}

	// A sink being written keeps its directory through a failed Create.
	writing, err := tidy.Create(1, 1, 1, raft.Configuration{}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner.failCreate = true
	if _, err := tidy.Create(1, 1, 1, raft.Configuration{}, 0, nil); err == nil {
		t.Fatal("Create did not fail")
	}
	if got := tmps(); len(got) != 1 || filepath.Base(got[0]) != writing.ID()+snapshotTmpSuffix {
		t.Fatalf("after a failed Create beside a sink being written: %v; want only the sink's", got)
	}
	// Its failed Cancel removes it.
	if err := writing.Cancel(); err == nil {
		t.Fatal("Cancel did not fail")
	}
	if got := tmps(); len(got) != 0 {
		t.Fatalf("after a failed Cancel: %v left", got)
	}
}
