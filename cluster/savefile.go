package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kadosession/kadosession/fsm"
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
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// writeSaveFile writes a view as the save-file document, atomically, paced
// (diskPacer) so that the raft log's fsyncs are not queued behind it.
func writeSaveFile(path string, v *fsm.View) error {
	return writeAtomic(path, func(f *os.File) error {
		_, err := v.WriteTo(newPacedWriter(f))
		return err
	})
}

// readSaveFile reads the save file at path. A missing file is an empty
// store (nil map, nil error). Records without a save time get now.
func readSaveFile(path string, now int64) (map[string]*fsm.Record, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open save file: %w", err)
	}
	defer f.Close()
	m, err := fsm.ReadDocument(f, now)
	if err != nil {
		return nil, fmt.Errorf("save file %s cannot be read: %w; it has been left untouched: repair it, or move it away to start without it", path, err)
	}
	return m, nil
}
