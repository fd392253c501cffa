package cluster

import (
	"os"
	"syscall"
)

// syncFileRangeWrite is SYNC_FILE_RANGE_WRITE: start writing the range back
// without waiting for it.
const syncFileRangeWrite = 0x2

// startWriteback asks the kernel to start writing a range of f to disk now,
// so that the fsync that ends a large save file finds little left to do:
// one long fsync would queue the raft log's fsyncs behind it and stall every
// write for as long.
func startWriteback(f *os.File, off, n int64) {
	_ = syscall.SyncFileRange(int(f.Fd()), off, n, syncFileRangeWrite)
}
