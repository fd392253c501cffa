package cluster

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
)

// session1K is a 1 KiB session.
var session1K = []byte(`{"user":"alice","pad":"` + strings.Repeat("x", 1024-25) + `"}`)

func benchNode(b *testing.B) (*Node, *client.Store) {
	b.Helper()
	n, err := Open(Config{Listen: "127.0.0.1:0", DataDir: b.TempDir(), Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	for !n.Ready() || n.raft.State().String() != "Leader" {
		runtime.Gosched()
	}
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return n, c
}

// BenchmarkNodeSave measures durable saves of 1 KiB sessions through the Go
// client against a real single node, with 1 and 64 callers in flight.
func BenchmarkNodeSave(b *testing.B) {
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			_, c := benchNode(b)
			var seq atomic.Int64
			runCallers(b, callers, func() error {
				return c.SaveRaw(context.Background(), fmt.Sprintf("s%d", seq.Add(1)%10000), session1K)
			})
		})
	}
}

// BenchmarkNodeRestore measures linearizable restores of 1 KiB sessions.
func BenchmarkNodeRestore(b *testing.B) {
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			_, c := benchNode(b)
			for i := 0; i < 1000; i++ {
				if err := c.SaveRaw(context.Background(), fmt.Sprintf("s%d", i), session1K); err != nil {
					b.Fatal(err)
				}
			}
			var seq atomic.Int64
			runCallers(b, callers, func() error {
				_, found, err := c.RestoreRaw(context.Background(), fmt.Sprintf("s%d", seq.Add(1)%1000))
				if err == nil && !found {
					err = fmt.Errorf("session missing")
				}
				return err
			})
		})
	}
}

// runCallers runs op b.N times across exactly callers goroutines.
func runCallers(b *testing.B, callers int, op func() error) {
	b.SetBytes(int64(len(session1K)))
	b.ResetTimer()
	var next atomic.Int64
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		go func() {
			for next.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for i := 0; i < callers; i++ {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkClusterSaveVia measures saves of 1 KiB sessions with 64 callers
// on a three-node cluster, sent to the leader directly or to a follower
// (which forwards). The client here does not follow the leader hint, so
// every request through the follower is forwarded.
func BenchmarkClusterSaveVia(b *testing.B) {
	for _, via := range []string{"leader", "follower"} {
		b.Run(via, func(b *testing.B) {
			tc := newBenchCluster(b)
			target := tc.nodes[tc.leader()]
			if via == "follower" {
				target = tc.nodes[tc.follower()]
			}
			var seq atomic.Int64
			runCallers(b, 64, func() error {
				return target.Save(context.Background(), fmt.Sprintf("s%d", seq.Add(1)%10000), session1K)
			})
		})
	}
}

// BenchmarkFourthNodeCatchUp100k measures how long a fourth node takes to
// join a cluster holding 100k sessions of 1 KiB, by snapshot installation.
func BenchmarkFourthNodeCatchUp100k(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tc := newBenchCluster(b)
		l := tc.nodes[tc.leader()]
		var seq atomic.Int64
		ctx := context.Background()
		errs := make(chan error, 64)
		for g := 0; g < 64; g++ {
			go func() {
				for {
					k := seq.Add(1)
					if k > 100000 {
						errs <- nil
						return
					}
					if err := l.Save(ctx, fmt.Sprintf("s%06d", k), session1K); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		for g := 0; g < 64; g++ {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		if err := l.raft.Snapshot().Error(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		tc.cfgs = append(tc.cfgs, Config{ID: "n4", Listen: "127.0.0.1:0", DataDir: b.TempDir(), Logger: testLogger(), Join: []string{l.Addr()}})
		tc.nodes = append(tc.nodes, nil)
		tc.start(3)
		for tc.nodes[3].State().Len() < 100000 {
			time.Sleep(5 * time.Millisecond)
		}
		b.ReportMetric(time.Since(start).Seconds(), "catch-up-s")
		b.StopTimer()
		tc.closeAll()
	}
}

// BenchmarkSaveDuringSnapshot200k measures what a raft snapshot of 200k
// sessions of 1 KiB costs the saves running meanwhile, on a single node
// (no save file within the run): a paced prober (8 callers, one save every
// 4 ms each) runs for 3 s before the snapshot and during it, and the p50,
// p99 and longest save of each stretch are reported (of the last
// iteration). The snapshot is written on a niced thread (inBackground);
// run beside CPU hogs to see the machine's other nodes compete.
func BenchmarkSaveDuringSnapshot200k(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		saveDuringSnapshot(b, 200_000)
	}
}

func saveDuringSnapshot(b *testing.B, sessions int64) {
	n, err := Open(Config{Listen: "127.0.0.1:0", DataDir: b.TempDir(), Logger: testLogger(), SaveFrequency: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	for !n.Ready() || n.raft.State().String() != "Leader" {
		runtime.Gosched()
	}
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	var seq atomic.Int64
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		go func() {
			for k := seq.Add(1); k <= sessions; k = seq.Add(1) {
				if err := c.SaveRaw(context.Background(), fmt.Sprintf("s%d", k), session1K); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for w := 0; w < 64; w++ {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}

	type sample struct {
		during bool
		d      time.Duration
	}
	var (
		snapshotting atomic.Bool
		mu           sync.Mutex
		samples      []sample
		proberErr    error
		wg           sync.WaitGroup
	)
	stop := make(chan struct{})
	stopProbers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopProbers() // also when a b.Fatal below ends the run early
	for w := int64(0); w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(4 * time.Millisecond)
			defer tick.Stop()
			for k := w; ; k += 8 {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				during := snapshotting.Load()
				start := time.Now()
				err := c.SaveRaw(context.Background(), fmt.Sprintf("s%d", k%sessions), session1K)
				s := sample{during || snapshotting.Load(), time.Since(start)}
				mu.Lock()
				samples = append(samples, s)
				if err != nil && proberErr == nil {
					proberErr = err
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(3 * time.Second)
	b.StartTimer()
	snapshotting.Store(true)
	start := time.Now()
	err = n.raft.Snapshot().Error()
	took := time.Since(start)
	snapshotting.Store(false)
	b.StopTimer()
	stopProbers()
	if err != nil {
		b.Fatal(err)
	}
	if proberErr != nil {
		b.Fatal(proberErr)
	}
	var quiet, during []time.Duration
	for _, s := range samples {
		if s.during {
			during = append(during, s.d)
		} else {
			quiet = append(quiet, s.d)
		}
	}
	pct := func(ds []time.Duration, p float64) float64 {
		if len(ds) == 0 {
			return 0
		}
		slices.Sort(ds)
		return float64(ds[int(float64(len(ds)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(took.Seconds(), "snapshot-s")
	b.ReportMetric(pct(quiet, 0.5), "quiet-p50-ms")
	b.ReportMetric(pct(quiet, 0.99), "quiet-p99-ms")
	b.ReportMetric(pct(during, 0.5), "during-p50-ms")
	b.ReportMetric(pct(during, 0.99), "during-p99-ms")
	b.ReportMetric(pct(during, 1), "during-max-ms")
}
