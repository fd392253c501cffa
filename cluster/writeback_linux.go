package cluster

import (
	"os"
	"runtime"
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
func inBackground(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), backgroundNice)
		done <- f()
	}()
	return <-done
}
