package cluster

import (
	"os"
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
