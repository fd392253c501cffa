package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/kadosession/kadosession/transport"
)

// mappedResident returns how many bytes of the file named name this process
// has resident through its mappings of it (/proc/self/smaps).
func mappedResident(t *testing.T, name string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total int64
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 { // a mapping's header line
			in = len(fields) >= 6 && fields[5] == name
			continue
		}
		if in && fields[0] == "Rss:" && len(fields) >= 2 {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			total += kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

func openTestBolt(t *testing.T) (*raftboltdb.BoltStore, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "raft.db")
	// The node's options, and a mapping large enough that bbolt never
	// remaps the file in the test (a new mapping starts with nothing
	// resident, which would hide what the tests look for).
	s, err := raftboltdb.New(raftboltdb.Options{Path: path,
		BoltOptions: &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType,
			InitialMmapSize: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	name, err := filepath.EvalSymlinks(path) // as /proc/self/smaps names it
	if err != nil {
		t.Fatal(err)
	}
	return s, name
}

// TestNewMappedPagesFindsTheDatabase: mappedPages reaches into
// raft-boltdb's store for its bbolt database; an upgrade that moves it
// would silently turn the drops off.
func TestNewMappedPagesFindsTheDatabase(t *testing.T) {
	bolt, _ := openTestBolt(t)
	m := newMappedPages(bolt)
	if m == nil || m.db == nil {
		t.Fatal("newMappedPages found no bbolt database in the raft-boltdb store")
	}
	if m.db.Path() == "" || m.db.Info().Data == 0 {
		t.Fatalf("the database found (%s) is not open", m.db.Path())
	}
}

// openTestLog is a log store wrapped as a node wraps it, dropping its
// mapped pages or (drop false) not, and its file's name in /proc/self/smaps.
func openTestLog(t *testing.T, drop bool) (chunkedCompaction, string) {
	t.Helper()
	bolt, name := openTestBolt(t)
	s := chunkedCompaction{LogStore: bolt}
	if drop {
		s.mapped = newMappedPages(bolt)
	}
	return s, name
}

// readBack reads entries from..to and checks their data (entryData).
func readBack(t *testing.T, s raft.LogStore, from, to uint64, size int) {
	t.Helper()
	var l raft.Log
	for i := from; i <= to; i++ {
		if err := s.GetLog(i, &l); err != nil || !bytes.Equal(l.Data, entryData(i, size)) {
			t.Fatalf("entry %d: err %v, data intact %v", i, err, err == nil && bytes.Equal(l.Data, entryData(i, size)))
		}
	}
}

func entryData(i uint64, size int) []byte {
	return bytes.Repeat([]byte{byte(i), byte(i >> 8)}, size/2)
}

func storeEntries(t *testing.T, s raft.LogStore, from, to uint64, size int) {
	t.Helper()
	for i := from; i <= to; i += 8 {
		var batch []*raft.Log
		for j := i; j < i+8 && j <= to; j++ {
			batch = append(batch, &raft.Log{Index: j, Term: 1, Type: raft.LogCommand, Data: entryData(j, size)})
		}
		if err := s.StoreLogs(batch); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCompactionDropsMappedLogPages: reading the log through bbolt's
// mapping makes it resident; a compaction drops those pages from the
// process but not from the page cache, and the log left reads back
// intact. Without mappedPages the pages stay (checked on a store with
// mapped == nil, so the test shows it can fail).
func TestCompactionDropsMappedLogPages(t *testing.T) {
	for _, drop := range []bool{false, true} {
		s, name := openTestLog(t, drop)
		// 28 MiB, stored and read back: 56 MiB touched, below
		// dropMappedBytes, so no drop runs before the compaction's (one
		// in the middle of readBack left 18 MiB resident in a CI run).
		const n, size = 900, 32 << 10
		storeEntries(t, s, 1, n, size)
		readBack(t, s, 1, n, size)
		before := mappedResident(t, name)
		if before < n*size/2 {
			t.Fatalf("after reading %d MiB of log, %d MiB of it resident: the test cannot tell a drop", n*size>>20, before>>20)
		}
		cachedBefore := cachedPages(t, name)
		if err := s.DeleteRange(1, n*3/4); err != nil {
			t.Fatal(err)
		}
		after := mappedResident(t, name)
		if cached := cachedPages(t, name); cached < cachedBefore*9/10 {
			t.Errorf("the page cache held %d pages of the log file before the compaction, %d after: the drop evicted them", cachedBefore, cached)
		}
		t.Logf("drop=%v: %d MiB of the log file resident before the compaction, %d MiB after", drop, before>>20, after>>20)
		if drop && after > 4<<20 {
			t.Errorf("after a compaction %d MiB of the log file is still resident, want at most 4", after>>20)
		}
		if !drop && after < before/2 {
			t.Errorf("without mappedPages, %d MiB resident after the compaction of %d MiB: the drop is not what this test measures", after>>20, before>>20)
		}
		readBack(t, s, n*3/4+1, n, size) // intact after the compaction
	}
}

// TestTouchedLogDropsMappedPages: the log a leader reads back for its
// followers, or a restart replays, becomes resident too, with no
// compaction to drop it; every dropMappedBytes of log stored or read, the
// pages are dropped, so no more than about that much stays resident.
func TestTouchedLogDropsMappedPages(t *testing.T) {
	for _, drop := range []bool{false, true} {
		s, name := openTestLog(t, drop)
		const size = 64 << 10
		const round = 32 << 20 / size // entries of 32 MiB
		most, res := int64(0), int64(0)
		for r := uint64(0); r < 4; r++ {
			storeEntries(t, s, r*round+1, (r+1)*round, size)
			readBack(t, s, r*round+1, (r+1)*round, size)
			deadline := time.Now().Add(5 * time.Second)
			for drop && s.mapped.running.Load() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			res = mappedResident(t, name)
			most = max(most, res)
		}
		t.Logf("drop=%v: 128 MiB of log stored and read back, at most %d MiB of it resident, %d MiB at the end", drop, most>>20, res>>20)
		if drop && most > dropMappedBytes+8<<20 {
			t.Errorf("%d MiB of the log file resident, want at most %d", most>>20, (dropMappedBytes+8<<20)>>20)
		}
		if !drop && res < 100<<20 {
			t.Errorf("without mappedPages only %d MiB of the 128 MiB read back is resident: the test cannot tell a drop", res>>20)
		}
	}
}

// cachedPages counts the pages of the file at path in the page cache
// (mincore over a mapping of its own).
func cachedPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(b)
	vec := make([]byte, (len(b)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestRestartDropsMappedLogPages: a node that opens a log drops what
// opening read (bbolt walks every page to rebuild its freelist) and, once
// raft has replayed the log, what the replay read: 24 MiB here, under
// dropMappedBytes, so only those two drops can clear it.
func TestRestartDropsMappedLogPages(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, Config{DataDir: dir})
	value := `{"v":"` + strings.Repeat("x", 48<<10) + `"}`
	for i := range 500 {
		mustSave(t, n, fmt.Sprintf("s%d", i), value)
	}
	n.Close()

	n2 := startNode(t, Config{DataDir: dir})
	last, err := n2.bolt.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	poll(t, func() bool { return n2.raft.AppliedIndex() >= last }, 10*time.Second, "the log replayed")
	name, err := filepath.EvalSymlinks(filepath.Join(dir, "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	var res int64
	poll(t, func() bool { res = mappedResident(t, name); return res <= 2<<20 }, 5*time.Second,
		"the log file's pages out of resident memory after the replay")
	// Raft's applied index moves when entries are handed to the state
	// machine, before they are applied (CI, under the race detector, saw
	// 321 of 500 applied at this point).
	poll(t, func() bool { return n2.State().Len() == 500 }, 10*time.Second, "the 500 sessions back after the restart")
}

// threadNice reads the nice value of the calling thread (field 19 of
// /proc/thread-self/stat).
func threadNice(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // after "pid (comm) "
	nice, err := strconv.Atoi(fields[16])                         // field 19 of the whole line
	if err != nil {
		t.Fatal(err)
	}
	return nice
}

// TestInBackgroundRunsNiced: a full-state write runs at backgroundNice, on
// a thread of its own; the caller's thread keeps its priority, and f's
// error comes back.
func TestInBackgroundRunsNiced(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadNice(t)
	var inside int
	want := errors.New("from f")
	err := inBackground(func() error { inside = threadNice(t); return want })
	if err != want {
		t.Fatalf("inBackground returned %v, want f's error", err)
	}
	if inside != backgroundNice {
		t.Fatalf("f ran at nice %d, want %d", inside, backgroundNice)
	}
	if after := threadNice(t); after != before {
		t.Fatalf("the caller's thread went from nice %d to %d", before, after)
	}
}

// TestInBackgroundHasAProcOfItsOwn: while a full-state write runs the
// process has one P more, so the niced thread never holds one the request
// goroutines need; two writes at once (two nodes in one process) have two,
// and GOMAXPROCS is as before once both have ended.
func TestInBackgroundHasAProcOfItsOwn(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	var inside int
	if err := inBackground(func() error { inside = runtime.GOMAXPROCS(0); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside != before+1 {
		t.Fatalf("GOMAXPROCS %d while the write ran, want %d", inside, before+1)
	}
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after the write, want %d as before", got, before)
	}
	first, second := withOwnProc(), withOwnProc()
	if got := runtime.GOMAXPROCS(0); got != before+2 {
		t.Fatalf("GOMAXPROCS %d with two writes running, want %d", got, before+2)
	}
	first()
	if got := runtime.GOMAXPROCS(0); got != before+1 {
		t.Fatalf("GOMAXPROCS %d with one write left, want %d", got, before+1)
	}
	second()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after both writes, want %d as before", got, before)
	}
}

// allocated returns how many bytes of disk the file at path takes.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return allocatedBytes(f)
}

// TestFreePagesGivenBackWhenShort: where the disk has less free than the
// reserve, a start and a log compaction give the file system back the
// raft log file's free pages but the first punchKeep (bolt never shrinks
// its file: a follower whose log had filled a 64 MiB disk kept a 59 MB
// raft.db once its log was compacted, and its disk stayed full: a drill);
// with room, nothing is given back. What is reported returned is what the
// file took less. Bolt then reuses those pages, and the log reads back
// after a restart.
func TestFreePagesGivenBackWhenShort(t *testing.T) {
	dir := t.TempDir()
	free := fakeFreeSpace(t, 1<<40)
	cfg := Config{DataDir: dir, SaveFrequency: time.Hour, SnapshotThreshold: 1 << 40, SnapshotLogBytes: 1 << 40, TrailingLogs: 8}
	n := startNode(t, cfg)
	cfg.Listen = n.Addr()
	save := func(n *Node, from, to int, fill string) {
		for i := from; i < to; i++ {
			mustSave(t, n, fmt.Sprintf("s%d", i%20), fmt.Sprintf(`{"i":%d,"v":%q}`, i, strings.Repeat(fill, 64<<10)))
		}
	}
	path := filepath.Join(dir, "raft.db")
	save(n, 0, 200, "v") // 13 MB of log for 1.3 MB of sessions
	before := allocated(t, path)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if withRoom := allocated(t, path); withRoom < before*3/4 {
		t.Fatalf("with room on the disk raft.db went from %d to %d bytes: nothing should be given back", before, withRoom)
	}
	n.Close()
	free.Store(saveFileReserve - 1)
	n = startNode(t, cfg)
	atStart := allocated(t, path)
	t.Logf("raft.db took %d bytes of disk; after a start short of space, %d", before, atStart)
	if atStart > before/4 {
		t.Fatalf("after a start short of space raft.db still takes %d bytes of disk (%d before)", atStart, before)
	}
	// What was punched before counts nothing (it counted 12 MB each time).
	if got, err := n.freePages.punch(); err != nil || got > 1<<20 {
		t.Fatalf("a second return, with at most what the start freed since to give back, reported %d bytes (%v)", got, err)
	}

	save(n, 200, 400, "w") // into the pages given back, and 13 MB more
	before = allocated(t, path)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	poll(t, func() bool { return allocated(t, path) < before/4 }, 5*time.Second, "the compaction's free pages given back")
	t.Logf("after 13 MB more, %d bytes; after a compaction short of space, %d", before, allocated(t, path))

	save(n, 400, 420, "x")
	n.Close()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bolt: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	n = startNode(t, cfg)
	for i := 400; i < 420; i++ {
		data, found, err := n.Restore(context.Background(), fmt.Sprintf("s%d", i%20), transport.Linearizable)
		if err != nil || !found || !strings.Contains(string(data), fmt.Sprintf(`"i":%d,`, i)) {
			t.Fatalf("s%d after a restart: found %v, %v, %.40s", i%20, found, err, data)
		}
	}
}
