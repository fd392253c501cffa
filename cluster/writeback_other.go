//go:build !linux

package cluster

import (
	"os"

	"go.etcd.io/bbolt"
)

// startWriteback does nothing where sync_file_range does not exist.
func startWriteback(f *os.File, off, n int64) {}

// awaitWriteback does nothing where sync_file_range does not exist.
func awaitWriteback(f *os.File, off, n int64) {}

// dropMapped does nothing where madvise does not exist.
func dropMapped(db *bbolt.DB) {}

// inBackground runs f.
func inBackground(f func() error) error { return f() }

// canPunch: holes cannot be punched here (no fallocate).
const canPunch = false

// punchHole cannot be done where fallocate does not exist.
func punchHole(f *os.File, off, n int64) error { return errNoPunch }

// allocatedBytes is not known here.
func allocatedBytes(f *os.File) int64 { return 0 }
