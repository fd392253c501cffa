package cluster

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"syscall"

	"go.etcd.io/bbolt"
)

// sync_file_range flags (linux/fs.h).
const (
	syncFileRangeWaitBefore = 0x1
	syncFileRangeWrite      = 0x2
	syncFileRangeWaitAfter  = 0x4
)

// startWriteback asks the kernel to start writing a range of f to disk now,
// without waiting for it.
func startWriteback(f *os.File, off, n int64) {
	_ = syscall.SyncFileRange(int(f.Fd()), off, n, syncFileRangeWrite)
}

// awaitWriteback writes a range of f to disk and waits until it is there
// (the data only: it is no fsync, and gives no durability by itself).
func awaitWriteback(f *os.File, off, n int64) {
	_ = syscall.SyncFileRange(int(f.Fd()), off, n, syncFileRangeWaitBefore|syncFileRangeWrite|syncFileRangeWaitAfter)
}

// dropMapped drops from this process the pages of db's file that it maps,
// with MADV_DONTNEED: bbolt maps its file read-only and shared, so they are
// page-cache pages, which stay cached (nothing is read back from disk) and
// come back on the next access. The read transaction holds bbolt's mapping
// in place (a remap waits for it), so the range is bbolt's. Errors are
// ignored: the pages stay, as before.
func dropMapped(db *bbolt.DB) {
	tx, err := db.Begin(false)
	if err != nil {
		return
	}
	defer tx.Rollback()
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, db.Info().Data, uintptr(tx.Size()), syscall.MADV_DONTNEED)
}

// backgroundNice is the nice value full-state writes run at.
const backgroundNice = 10

// inBackground runs f, which writes the whole state (a snapshot or the save
// file: seconds of CPU at 1M sessions), on an OS thread of its own at nice
// backgroundNice, so the threads serving requests, on this node and on any
// other sharing the machine, come first. The thread ends with the call
// (locked to its goroutine, it is not handed back to the Go scheduler), and
// its priority with it.
//
// While f runs the process has one P more (withOwnProc): a niced thread
// that held one of the others kept it while the kernel, preferring every
// other thread on a busy machine, did not run it, and the node served
// requests on the Ps left (2 CPUs, two CPU hogs beside a node snapshotting
// 200k sessions, BenchmarkSaveDuringSnapshot200k, 4 A/B pairs: the longest
// save during the snapshot 72-104 ms with the thread sharing the Ps, 48-63
// ms with a P of its own; p99 30-36 ms against 27-34 ms; the snapshot
// itself took longer, 5.3-8.7 s against 4.5-6.2 s: the thread now gets
// what the request threads leave, as its nice value means it to).
func inBackground(f func() error) error {
	defer withOwnProc()()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), backgroundNice)
		done <- f()
	}()
	return <-done
}

// extraProcs counts the calls of withOwnProc in progress (every node of the
// process), and base is GOMAXPROCS from before the first of them.
var extraProcs struct {
	sync.Mutex
	n    int
	base int
}

// withOwnProc raises GOMAXPROCS by one until the function it returns is
// called. When the last such call ends, GOMAXPROCS goes back to what it
// was. Setting it turns off the runtime's automatic updates (to a changed
// CPU quota or set), so without GOMAXPROCS in the environment they are
// turned back on first, and the old value set again only if it differs
// from the runtime's choice (a program that set it itself); a program that
// set it to exactly the runtime's choice gets the automatic updates back.
func withOwnProc() (restore func()) {
	e := &extraProcs
	e.Lock()
	defer e.Unlock()
	if e.n == 0 {
		e.base = runtime.GOMAXPROCS(0)
	}
	e.n++
	runtime.GOMAXPROCS(e.base + e.n)
	return func() {
		e.Lock()
		defer e.Unlock()
		e.n--
		switch {
		case e.n > 0:
			runtime.GOMAXPROCS(e.base + e.n)
		case os.Getenv("GOMAXPROCS") == "":
			runtime.SetDefaultGOMAXPROCS()
			if runtime.GOMAXPROCS(0) != e.base {
				runtime.GOMAXPROCS(e.base)
			}
		default:
			runtime.GOMAXPROCS(e.base)
		}
	}
}

// fallocate modes (linux/falloc.h).
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
)

// canPunch: holes can be punched in files here (punchHole).
const canPunch = true

// allocatedBytes returns how many bytes of disk f takes (0 if unknown).
func allocatedBytes(f *os.File) int64 {
	var st syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// punchHole gives the file system back the blocks of a range of f, which
// then reads as zeros; f keeps its size.
func punchHole(f *os.File, off, n int64) error {
	err := syscall.Fallocate(int(f.Fd()), fallocPunchHole|fallocKeepSize, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return errNoPunch
	}
	return err
}
