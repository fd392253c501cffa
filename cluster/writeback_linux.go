package cluster

import (
	"bytes"
	"os"
	"strconv"
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

// madvPageout is MADV_PAGEOUT (linux/mman.h, Linux 5.4).
const madvPageout = 21

// dropMapped asks the kernel to drop from this process the pages it maps
// of the file at path (every mapping of it /proc/self/maps lists). For a
// file mapped read-only and shared, as bbolt maps its file, they are clean
// page-cache pages: the next access reads them back, nothing is lost. A
// range unmapped or reused meanwhile is harmless too: MADV_PAGEOUT only
// reclaims, it never changes what memory holds. Errors are ignored (an
// older kernel: the pages stay, as before).
func dropMapped(path string) {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	for len(maps) > 0 {
		line := maps
		if i := bytes.IndexByte(maps, '\n'); i >= 0 {
			line, maps = maps[:i], maps[i+1:]
		} else {
			maps = nil
		}
		// "start-end perms offset dev inode   path"
		f := bytes.Fields(line)
		if len(f) < 6 || string(f[5]) != path {
			continue
		}
		lo, hi, ok := bytes.Cut(f[0], []byte{'-'})
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), madvPageout)
	}
}
