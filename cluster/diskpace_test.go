package cluster

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// deleteRecorder is a log store that notes every DeleteRange it is asked.
type deleteRecorder struct {
	raft.LogStore
	calls [][2]uint64
}

func (d *deleteRecorder) DeleteRange(from, to uint64) error {
	d.calls = append(d.calls, [2]uint64{from, to})
	return d.LogStore.DeleteRange(from, to)
}

func TestCompactionDeletesInChunksOldestFirst(t *testing.T) {
	mem := raft.NewInmemStore()
	for i := uint64(1); i <= 5000; i++ {
		if err := mem.StoreLog(&raft.Log{Index: i, Term: 1, Data: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	rec := &deleteRecorder{LogStore: mem}
	s := chunkedCompaction{LogStore: rec}

	if err := s.DeleteRange(1, 4500); err != nil {
		t.Fatal(err)
	}
	var want [][2]uint64
	for lo := uint64(1); lo <= 4500; lo += compactChunk {
		want = append(want, [2]uint64{lo, min(lo+compactChunk-1, 4500)})
	}
	if len(want) < 3 {
		t.Fatalf("compactChunk %d: the test needs a range of several chunks", compactChunk)
	}
	if len(rec.calls) != len(want) {
		t.Fatalf("compaction of 4500 entries: deletes %v, want %v", rec.calls, want)
	}
	for i := range want {
		if rec.calls[i] != want[i] {
			t.Fatalf("compaction of 4500 entries: deletes %v, want %v", rec.calls, want)
		}
	}
	if first, _ := s.FirstIndex(); first != 4501 {
		t.Fatalf("first index after compaction = %d, want 4501", first)
	}

	// A follower truncating a conflicting tail: one delete, however long.
	rec.calls = nil
	if err := s.DeleteRange(4600, 5000); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) != 1 || rec.calls[0] != [2]uint64{4600, 5000} {
		t.Fatalf("tail truncation: deletes %v, want one [4600 5000]", rec.calls)
	}
	if last, _ := s.LastIndex(); last != 4599 {
		t.Fatalf("last index after truncation = %d, want 4599", last)
	}

	// An empty log (raft compacting after an install replaced it, from
	// its FirstIndex, 0): one delete, not one empty transaction, two
	// fsyncs each, per 512 indexes (a review: 391 for index 200,000).
	if err := s.DeleteRange(4501, 4599); err != nil {
		t.Fatal(err)
	}
	rec.calls = nil
	if err := s.DeleteRange(0, 200_000); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) != 1 {
		t.Fatalf("compacting an empty log: %d deletes, want 1", len(rec.calls))
	}
}

func TestSnapshotStateFileIsPaced(t *testing.T) {
	dir := t.TempDir()
	fss, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	store := pacedSnapshots{fss, dir, 2}
	sink, err := store.Create(raft.SnapshotVersionMax, 10, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ps, ok := sink.(*pacedSink)
	if !ok {
		// The pacer finds the state file by raft's layout: a new raft
		// version that moved it would silently turn pacing off.
		t.Fatalf("snapshot sink is %T, not paced: snapshots/ID.tmp/state.bin not found", sink)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*paceChunk/16+100)
	for b := data; len(b) > 0; {
		n := min(len(b), 64<<10)
		if _, err := sink.Write(b[:n]); err != nil {
			t.Fatal(err)
		}
		b = b[n:]
	}
	if ps.pace.waited < 2*paceChunk || ps.pace.started <= ps.pace.waited {
		t.Fatalf("after %d bytes: writeback started to %d, waited to %d", len(data), ps.pace.started, ps.pace.waited)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	_, rc, err := store.Open(sink.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("snapshot read back: %d bytes, want the %d written", len(got), len(data))
	}
}

func TestPacedWriterWritesEverything(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := newPacedWriter(f)
	data := bytes.Repeat([]byte{'x'}, 5*paceChunk/2)
	for b := data; len(b) > 0; b = b[min(len(b), 4096):] {
		if _, err := w.Write(b[:min(len(b), 4096)]); err != nil {
			t.Fatal(err)
		}
	}
	if w.started != 2*paceChunk || w.waited != paceChunk {
		t.Fatalf("after %d bytes: writeback started to %d, waited to %d; want %d and %d", len(data), w.started, w.waited, 2*paceChunk, paceChunk)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), want %d", len(got), err, len(data))
	}
}

func TestReplacingALargeFileShrinksTheOldOne(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sessions.json")
	large := func(p string) {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		// Sparse: as large as a big save file to Stat, cheap to make.
		if err := f.Truncate(slowDeleteAbove + 3*shrinkStep/2); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	large(path)
	large(path + ".old") // a leftover from a crash between rename and shrink
	if err := writeFileAtomic(path, []byte(`{"a":{"x":1}}`)); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != `{"a":{"x":1}}` {
		t.Fatalf("save file after replacing a large one: %q, %v", got, err)
	}
	if _, err := os.Lstat(path + ".old"); !os.IsNotExist(err) {
		t.Fatalf("the old file's second name is still there: %v", err)
	}
	// A small file is replaced as before, with no second name.
	if err := writeFileAtomic(path, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != `{}` {
		t.Fatalf("save file after replacing a small one: %q", got)
	}
	keepSecondName(path, path+".old")
	if _, err := os.Lstat(path + ".old"); !os.IsNotExist(err) {
		t.Fatalf("a small file was given a second name: %v", err)
	}

	// A crash between giving the live file its second name and the rename
	// leaves two names for one file: dropping the extra name must leave the
	// live file whole.
	large(path)
	keepSecondName(path, path+".old")
	dropSecondName(path, path+".old")
	if fi, err := os.Stat(path); err != nil || fi.Size() != slowDeleteAbove+3*shrinkStep/2 {
		t.Fatalf("the live file after dropping its second name: %v, %v", fi, err)
	}
	if _, err := os.Lstat(path + ".old"); !os.IsNotExist(err) {
		t.Fatalf("the second name is still there: %v", err)
	}
}

func TestObsoleteSnapshotsAreShrunkAway(t *testing.T) {
	defer func(v int64) { slowDeleteAbove = v }(slowDeleteAbove)
	slowDeleteAbove = 1 << 20
	dir := t.TempDir()
	fss, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	store := pacedSnapshots{fss, dir, 2}
	reaping := func() []string {
		names, _ := filepath.Glob(filepath.Join(dir, reapedPrefix+"*"))
		return names
	}
	data := bytes.Repeat([]byte("x"), 2<<20)
	snapshot := func(index uint64) string {
		sink, err := store.Create(raft.SnapshotVersionMax, index, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sink.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		// Raft closes the sink again after the state machine's Persist
		// closed it: that must change nothing.
		if err := sink.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if names := reaping(); len(names) > 1 {
			t.Fatalf("second names after closing snapshot %d twice: %v (a second Close named a retained snapshot)", index, names)
		}
		return sink.ID()
	}
	first := snapshot(10)
	snapshot(20)

	// The snapshot a third one would make raft delete gets a second name;
	// while it still exists, clearing only drops that name.
	if !store.keepReaped() {
		t.Fatal("keepReaped found no snapshot a third would make obsolete")
	}
	if kept := reaping(); len(kept) != 1 || filepath.Base(kept[0]) != reapedPrefix+first {
		t.Fatalf("kept %v, want the oldest snapshot %s", kept, first)
	}
	store.clearReaped()
	if names := reaping(); len(names) != 0 {
		t.Fatalf("second names left: %v", names)
	}
	if _, rc, err := store.Open(first); err != nil {
		t.Fatalf("the oldest snapshot was damaged by clearing its second name: %v", err)
	} else {
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Fatal("the oldest snapshot's data changed")
		}
	}

	snapshot(30)
	poll(t, func() bool { return len(reaping()) == 0 }, 5*time.Second, "the obsolete snapshot's file to be removed")
	metas, err := store.List()
	if err != nil || len(metas) != 2 || metas[1].Index != 20 {
		t.Fatalf("snapshots after a third: %v, %v", metas, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshots", first)); !os.IsNotExist(err) {
		t.Fatalf("the oldest snapshot is still there: %v", err)
	}
}
