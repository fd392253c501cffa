package cluster

import (
	"context"
	"fmt"
	"runtime"
	"strings"
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
