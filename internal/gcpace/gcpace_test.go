package gcpace

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live    uint64
		percent int
		want    int
	}{
		{0, 25, 1600},        // nothing marked yet: as if Go's 4 MiB minimum heap were live
		{1, 25, 1600},        // below the minimum heap, the same
		{16 * mib, 25, 400},  // 64 MiB over 16 MiB
		{64 * mib, 25, 100},  // the floor still wins
		{256 * mib, 25, 25},  // the two agree
		{1000 * mib, 25, 25}, // the percentage wins
		{1000 * mib, 50, 50}, // whatever percentage is asked
		{3 * mib, 25, 1600},  // below the minimum heap
		{6 * mib, 25, 1067},  // 1066.7, rounded up: never less than the floor
	} {
		got := Percent(c.live, c.percent, 64*mib)
		if got != c.want {
			t.Errorf("Percent(%d MiB, %d, 64 MiB) = %d, want %d", c.live/mib, c.percent, got, c.want)
		}
		if c.live >= minLive && got < maxPercent && c.live*uint64(got)/100 < 64*mib {
			t.Errorf("Percent(%d, %d) = %d gives less than the floor", c.live, c.percent, got)
		}
	}
}

// TestRunFollowsLiveHeap runs the pacer against this test's own heap: with
// little live data the floor sets the target; after 256 MiB more becomes
// live, the percentage does.
func TestRunFollowsLiveHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := make(chan struct{})
	done := make(chan struct{})
	var set atomic.Int64
	go func() {
		defer close(done)
		run(stop, 25, 64<<20, 10*time.Millisecond, func(p int) { set.Store(int64(p)); debug.SetGCPercent(p) })
	}()
	defer func() { close(stop); <-done }()

	current := func() int { return int(set.Load()) }
	waitFor := func(what string, ok func(int) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok(current()) {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC is %d; want %s", current(), what)
			}
			runtime.GC()
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("over 100 while the live heap is small", func(p int) bool { return p > 100 && p <= 1600 })

	live := make([][]byte, 256)
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	waitFor("25 with 256 MiB live", func(p int) bool { return p == 25 })
	runtime.KeepAlive(live)
}
