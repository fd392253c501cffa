// Package gcpace sets the Go garbage collector's target from the live heap,
// so that the heap may grow over the live data by a percentage (GOGC's
// rule) but always by at least a fixed amount.
//
// A session store's heap is mostly its sessions, which live long. With one
// fixed percentage a large store keeps that fraction of its data again in
// garbage (at 1M sessions of 1 KiB and GOGC 50, ~650 MB), while a small one
// collects after every few megabytes of requests: at 10k sessions a single
// node saved 7% fewer sessions a second at 25% than at 50%. The floor lets a
// small heap grow by a fixed amount, so a low percentage costs it nothing,
// and the percentage then bounds what a large one holds over its data.
package gcpace

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// maxPercent bounds the target a tiny live heap would get from the floor.
const maxPercent = 10000

// minLive is the live heap assumed below Go's own minimum heap (4 MiB at
// GOGC 100): before the first collection there is no live heap to go by,
// and the floor over nothing would let the first collection wait for
// hundreds of MB.
const minLive = 4 << 20

// Percent returns the GOGC value that lets the heap grow over live bytes of
// live data by percent, or by floor bytes if that is more.
func Percent(live uint64, percent int, floor uint64) int {
	live = max(live, minLive)
	p := (floor*100 + live - 1) / live // ceil(100 * floor / live)
	if p > maxPercent {
		return maxPercent
	}
	return max(percent, int(p))
}

// Run sets the collector's target to Percent(live heap, percent, floor)
// now and then every interval, reading the live heap the last collection
// marked, until stop is closed.
func Run(stop <-chan struct{}, percent int, floor uint64, interval time.Duration) {
	run(stop, percent, floor, interval, func(p int) { debug.SetGCPercent(p) })
}

func run(stop <-chan struct{}, percent int, floor uint64, interval time.Duration, setPercent func(int)) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	set := -1
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		metrics.Read(sample)
		live := uint64(0)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			live = sample[0].Value.Uint64()
		}
		if p := Percent(live, percent, floor); p != set {
			setPercent(p)
			set = p
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}
