// Package bytesize writes byte counts for people: 512 B, 1.5 KiB, 8.0 MiB,
// 2.3 GiB.
package bytesize

import "fmt"

// Text returns n in the largest binary unit it reaches, to one decimal.
func Text(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
