//go:build darwin || freebsd || dragonfly

package cluster

import "syscall"

// diskFree returns the bytes an unprivileged writer may still use on the
// file system holding dir.
func diskFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}

// sameDisk reports whether paths a and b are on one file system.
func sameDisk(a, b string) bool {
	var sa, sb syscall.Stat_t
	return syscall.Stat(a, &sa) == nil && syscall.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}
