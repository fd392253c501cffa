//go:build !linux && !darwin && !freebsd && !dragonfly

package cluster

import "errors"

// diskFree is unknown here: saveFileBudget then sets no limit.
func diskFree(string) (diskSpace, error) {
	return diskSpace{}, errors.New("free disk space is not known on this system")
}

// sameDisk is unknown here, so no: nothing is refused for want of space.
func sameDisk(a, b string) bool { return false }
