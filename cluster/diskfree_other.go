//go:build !unix

package cluster

import "errors"

// diskFree is unknown here: roomForSaveFile then does not refuse.
func diskFree(string) (uint64, error) {
	return 0, errors.New("free disk space is not known on this system")
}
