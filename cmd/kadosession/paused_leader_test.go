package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
)

// TestProcessPausedLeaderCostsInFlightCallsLittle: the Go client writes
// to the leader while the leader is frozen (SIGSTOP: a VM paused, a
// process stuck; nothing answers and no connection is reset). The others
// elect a leader within about a second; the calls in flight on the frozen
// one must move there then (the client asks another node who leads), not
// wait out the client's 5 s RequestTimeout and fail, as each of them did.
// Every acknowledged write is there afterwards.
func TestProcessPausedLeaderCostsInFlightCallsLittle(t *testing.T) {
	addrs, procs, leader := startProcessCluster(t)
	st, err := client.New(client.Config{Addrs: []string{addrs[leader], addrs[(leader+1)%3], addrs[(leader+2)%3]}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	value := map[string]json.RawMessage{"i": json.RawMessage("1")}
	if err := st.Save(ctx, "warm", value); err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		pausedAt time.Time
		spanning []time.Duration // calls under way when the leader froze
		errs     []error
		acked    []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sid := fmt.Sprintf("w%d-%d", w, i)
				start := time.Now()
				err := st.Save(ctx, sid, value)
				took := time.Since(start)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					acked = append(acked, sid)
				}
				if !pausedAt.IsZero() && start.Before(pausedAt) {
					spanning = append(spanning, took)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	pausedAt = time.Now()
	procs[leader].cmd.Process.Signal(syscall.SIGSTOP)
	mu.Unlock()
	defer procs[leader].cmd.Process.Signal(syscall.SIGCONT)
	// Long enough for every call under way to end, one way or the other.
	time.Sleep(client.DefaultRequestTimeout + time.Second)
	close(stop)
	wg.Wait()

	t.Logf("calls under way when the leader froze took %v; %d acknowledged writes", spanning, len(acked))
	if len(errs) > 0 {
		t.Fatalf("%d calls failed while the leader was frozen, the first: %v", len(errs), errs[0])
	}
	if len(spanning) == 0 {
		t.Fatal("no call was under way when the leader froze")
	}
	for _, d := range spanning {
		// Well under the 5 s a call waited before, with room for a slow
		// election on a loaded machine (the first question comes after 1 s,
		// the next after 2 s, and so on).
		if d >= client.DefaultRequestTimeout*4/5 {
			t.Fatalf("a call under way when the leader froze took %v: it waited for the frozen leader instead of moving to the new one (all: %v)", d, spanning)
		}
	}
	procs[leader].cmd.Process.Signal(syscall.SIGCONT)
	for _, sid := range acked {
		if _, found, err := st.Restore(ctx, sid); err != nil || !found {
			t.Fatalf("acknowledged %s: found %v, %v", sid, found, err)
		}
	}
}
