//go:build darwin || freebsd || dragonfly

package cluster

import "syscall"

// diskFree returns the bytes an unprivileged writer may still use on the
// file system holding dir, and its size.
func diskFree(dir string) (diskSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return diskSpace{}, err
	}
	return diskSpace{free: uint64(st.Bavail) * uint64(st.Bsize), size: uint64(st.Blocks) * uint64(st.Bsize)}, nil
}

// sameDisk reports whether paths a and b are on one file system.
func sameDisk(a, b string) bool {
	var sa, sb syscall.Stat_t
	return syscall.Stat(a, &sa) == nil && syscall.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}
