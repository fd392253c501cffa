package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/internal/bytesize"
)

// writeFileAtomic writes data to path through a temporary file in the same
// directory: write, fsync, rename, fsync the directory. A failure at any step
// leaves the previous file as it was.
func writeFileAtomic(path string, data []byte) error {
	return writeAtomic(path, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// createTemp is os.CreateTemp; tests replace it to make the disk fail.
var createTemp = os.CreateTemp

// WriteFileAtomic writes path through a temporary file in the same
// directory: write fills it (and may read it back to check it), then it is
// fsynced, renamed over path and the directory fsynced. When write or any
// step fails, path is left as it was and the temporary file is removed.
func WriteFileAtomic(path string, write func(*os.File) error) error { return writeAtomic(path, write) }

func writeAtomic(path string, write func(*os.File) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := createTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = write(tmp); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	old := path + ".old"
	dropSecondName(path, old) // a leftover from a crash
	keepSecondName(path, old)
	if err = os.Rename(tmp.Name(), path); err != nil {
		dropSecondName(path, old)
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	dropSecondName(path, old)
	return nil
}

// slowDeleteAbove is the size from which a file being replaced or deleted
// is removed in steps (keepSecondName).
var slowDeleteAbove int64 = 64 << 20 // a variable for tests

// keepSecondName gives the file at path, when it is large, a second name
// (a hard link) before a rename replaces it or raft deletes it. Either
// frees all of its blocks at once, and the filesystem's journal is held
// meanwhile (ext4: 160-200 ms for a 1 GB save file), and with it every
// raft log fsync: acknowledged writes stalled that long. Kept, the file is
// removed in steps afterwards by dropSecondName. Small files, and
// filesystems without hard links, are left alone.
func keepSecondName(path, name string) {
	if fi, err := os.Stat(path); err == nil && fi.Size() >= slowDeleteAbove {
		_ = os.Link(path, name)
	}
}

// dropSecondName removes name, a second name keepSecondName gave the file
// at path. When name still names the file at path (it was not replaced or
// deleted: a failed rename, or a crash in between), only the name goes;
// otherwise the file, now under name alone, is shrunk away in steps.
func dropSecondName(path, name string) {
	kept, err := os.Stat(name)
	if err != nil {
		return
	}
	if cur, err := os.Stat(path); err == nil && os.SameFile(kept, cur) {
		os.Remove(name)
		return
	}
	shrinkAndRemove(name)
}

// shrinkStep is how much of a large file one truncation frees.
const shrinkStep = 32 << 20

// shrinkAndRemove removes a file in steps: it truncates it shrinkStep at a
// time, pausing between steps so that other writes reach the journal, then
// unlinks what is left.
func shrinkAndRemove(path string) {
	if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
		if fi, err := f.Stat(); err == nil {
			for size := fi.Size(); size > 0; {
				size = max(0, size-shrinkStep)
				if f.Truncate(size) != nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		f.Close()
	}
	os.Remove(path)
}

// writeSaveFile writes a view as the save-file document, atomically, paced
// (diskPacer), through budget (saveFileBudget), which stops it past the
// bytes it allows.
func writeSaveFile(path string, v *fsm.View, budget *budgetWriter) error {
	return writeAtomic(path, func(f *os.File) error {
		budget.w = newPacedWriter(f)
		_, err := v.WriteTo(budget)
		return err
	})
}

// saveFileReserve is the free space a save-file rewrite, or a snapshot the
// node takes, leaves on the disk it shares with the raft log, for the log's
// appends; on a file system smaller than 8 times that, an eighth of its
// size (diskSpace.reserve).
const saveFileReserve = 32 << 20

// diskSpace is what a file system has: free, the bytes an unprivileged
// writer may still use, and its size.
type diskSpace struct{ free, size uint64 }

// reserve is the free space to leave on it for the raft log. A fixed 32 MiB
// on a 64 MiB disk left no room for the save file once the log held about
// 35 MB, nor for a snapshot, which is what lets the log be compacted.
func (d diskSpace) reserve() uint64 { return min(saveFileReserve, d.size/8) }

// freeSpace returns the space on the file system holding dir
// (diskfree_*.go; a variable for tests).
var freeSpace = diskFree

// saveFileBudget returns how many bytes a rewrite of the save file at path
// may write (-1: no limit). The new file is written beside the old one
// before the old one goes, and on a nearly full disk it took the last
// space the raft log needed (a disk-full drill), after which no write
// could be acknowledged. So where the save file shares its disk with the
// raft log (in dataDir), a rewrite must leave the reserve free; it is
// stopped when it would not (budgetWriter), and not started when there is
// not even that. Elsewhere, or with the free space unknown, it is not
// limited.
func saveFileBudget(path, dataDir string) (*budgetWriter, error) {
	dir := filepath.Dir(path)
	if !sameDisk(dir, dataDir) {
		return &budgetWriter{left: -1, what: "save file"}, nil
	}
	b := reserveBudget(dir, "save file")
	if b.left == 0 {
		return nil, fmt.Errorf("not written: its disk, which the raft log shares, has no more free than the %s kept for the log", bytesize.Text(b.reserve))
	}
	return b, nil
}

// reserveBudget returns a budgetWriter, for the file what, allowing the
// bytes that may still be written on the file system holding dir leaving
// its reserve free (no limit when the free space is unknown). Its w is
// for the caller to set.
func reserveBudget(dir, what string) *budgetWriter {
	d, err := freeSpace(dir)
	return budgetOn(d, err, what)
}

// budgetOn is reserveBudget for a file system whose space freeSpace found
// to be d, or failed to find (err).
func budgetOn(d diskSpace, err error, what string) *budgetWriter {
	if err != nil {
		return &budgetWriter{left: -1, what: what}
	}
	r := d.reserve()
	return &budgetWriter{left: int64(max(d.free, r) - r), reserve: r, what: what}
}

// budgetWriter fails a write past its budget (reserveBudget; no limit
// when left is negative): the save file's and the snapshots' on the raft
// log's disk. what names the file, and reserve the space kept, for the
// error.
type budgetWriter struct {
	w       io.Writer
	left    int64
	reserve uint64
	what    string
}

func (b *budgetWriter) Write(p []byte) (int, error) {
	if b.left >= 0 {
		if int64(len(p)) > b.left && b.reserve == 0 {
			return 0, fmt.Errorf("%s not written: its disk has too little free for it", b.what)
		}
		if int64(len(p)) > b.left {
			return 0, fmt.Errorf("%s not written: it would leave less than the %s kept free for the raft log's appends on its disk", b.what, bytesize.Text(b.reserve))
		}
		b.left -= int64(len(p))
	}
	return b.w.Write(p)
}

// previousSaveFile says what is left of the save file at path after a
// failed rewrite, for the error.
func previousSaveFile(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "there is no previous save file"
	}
	return fmt.Sprintf("the previous save file, written %s ago, is intact", time.Since(fi.ModTime()).Round(time.Second))
}

// checkSaveFilePath refuses, at start, a save file path no save could be
// written to: a directory, or a file in a directory that does not exist
// (the data directory, made at start, excepted). Found out at the first
// timed save, it was an error every save and a failed final save.
func checkSaveFilePath(path, dataDir string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("save file %s is a directory: give the path of a file (--save-file)", path)
	}
	dir := filepath.Dir(path)
	absDir, err1 := filepath.Abs(dir)
	absData, err2 := filepath.Abs(dataDir)
	if err1 == nil && err2 == nil && absDir == absData {
		return nil // made at start
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("the directory of the save file %s does not exist: create it, or give another --save-file", path)
	}
	return nil
}

// readSaveFile reads the save file at path. A missing file is an empty
// store (nil map, nil error). Records without a save time get now.
func readSaveFile(path string, now int64) (records map[string]*fsm.Record, badIDs int, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open save file: %w", err)
	}
	defer f.Close()
	m, bad, err := fsm.ReadSaveFile(f, now)
	if err != nil {
		return nil, 0, fmt.Errorf("save file %s cannot be read: %w; it has been left untouched: repair it, or move it away to start without it", path, err)
	}
	return m, bad, nil
}
