package cluster

import "syscall"

// diskFree returns the bytes an unprivileged writer may still use on the
// file system holding dir, and its size (statfs counts both in fragments
// of f_frsize bytes).
func diskFree(dir string) (diskSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return diskSpace{}, err
	}
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	return diskSpace{free: uint64(st.Bavail) * unit, size: uint64(st.Blocks) * unit}, nil
}

// sameDisk reports whether paths a and b are on one file system.
func sameDisk(a, b string) bool {
	var sa, sb syscall.Stat_t
	return syscall.Stat(a, &sa) == nil && syscall.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}
