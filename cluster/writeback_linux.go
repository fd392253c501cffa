package cluster

import (
	"os"
	"syscall"
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
