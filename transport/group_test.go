package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// arrivalHandler records, for every restore, whether its context said when
// it arrived and how many restores were in the handler at once; restoring
// "block" waits until unblock is closed.
type arrivalHandler struct {
	memHandler
	in, peak atomic.Int32
	mu       sync.Mutex
	arrived  map[string]time.Time
	unknown  int
	busy     time.Duration // how long each restore but "block" takes
}

func (h *arrivalHandler) Restore(ctx context.Context, sid string, c Consistency) ([]byte, bool, error) {
	now := time.Now()
	n := h.in.Add(1)
	defer h.in.Add(-1)
	for p := h.peak.Load(); n > p && !h.peak.CompareAndSwap(p, n); p = h.peak.Load() {
	}
	at := Arrived(ctx)
	h.mu.Lock()
	if !at.IsZero() && !at.After(now) {
		h.arrived[sid] = at
	} else {
		h.unknown++
	}
	h.mu.Unlock()
	switch sid {
	case "block":
		select {
		case <-h.unblock:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	default:
		for time.Since(now) < h.busy {
		}
	}
	return []byte(`{"sid":"` + sid + `"}`), true, nil
}

// TestPipelinedRestoresAreServedInLine: restores that arrive together are
// served one after another by one worker, each knowing when it arrived,
// and answered. (Each takes 100µs, so workers of their own would overlap.)
func TestPipelinedRestoresAreServedInLine(t *testing.T) {
	wait := restoreGroupWait
	restoreGroupWait = time.Minute // however slow the machine, in line
	t.Cleanup(func() { restoreGroupWait = wait })
	h := &arrivalHandler{memHandler: *newMemHandler(), arrived: map[string]time.Time{}, busy: 100 * time.Microsecond}
	ts := startServer(t, h, ServerConfig{})
	n := dialNative(t, ts.addr)
	const count = 20
	sent := time.Now()
	var reqs []Request
	for i := range count {
		reqs = append(reqs, Request{ID: uint64(i + 1), Op: OpRestore, SID: fmt.Sprint("s", i)})
	}
	n.send(reqs...) // one write: the node reads them together
	seen := map[uint64]bool{}
	for range count {
		resp := n.recv()
		if resp.Err != nil || !resp.Found || string(resp.Data) != fmt.Sprintf(`{"sid":"s%d"}`, resp.ID-1) || seen[resp.ID] {
			t.Fatalf("response %+v (data %s)", resp, resp.Data)
		}
		seen[resp.ID] = true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.unknown != 0 || len(h.arrived) != count {
		t.Fatalf("%d restores knew when they arrived, %d did not; want all %d", len(h.arrived), h.unknown, count)
	}
	for sid, at := range h.arrived {
		if at.Before(sent) {
			t.Errorf("%s arrived at %v, before it was sent (%v)", sid, at, sent)
		}
	}
	if p := h.peak.Load(); p != 1 {
		t.Errorf("%d restores were in the handler at once; want them served in line, one at a time", p)
	}
}

// TestSlowRestoreDoesNotHoldItsGroup: a restore that waits (here, until the
// test lets it go) holds the others read with it for restoreGroupWait at
// most; then they are served beside it.
func TestSlowRestoreDoesNotHoldItsGroup(t *testing.T) {
	h := &arrivalHandler{memHandler: *newMemHandler(), arrived: map[string]time.Time{}}
	ts := startServer(t, h, ServerConfig{})
	n := dialNative(t, ts.addr)
	reqs := []Request{{ID: 1, Op: OpRestore, SID: "block"}}
	for i := range 5 {
		reqs = append(reqs, Request{ID: uint64(i + 2), Op: OpRestore, SID: fmt.Sprint("s", i)})
	}
	var once sync.Once
	unblock := func() { once.Do(func() { close(h.unblock) }) }
	t.Cleanup(unblock) // before the server's Close waits for the handler
	sent := time.Now()
	n.send(reqs...)
	_ = n.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 5 {
		if resp := n.recv(); resp.ID == 1 || resp.Err != nil {
			t.Fatalf("response %+v while the first restore still waits", resp)
		}
	}
	if d := time.Since(sent); d > 500*time.Millisecond {
		t.Errorf("the others were answered %v after they were sent; want about restoreGroupWait (%v)", d, restoreGroupWait)
	}
	poll(t, func() bool { return ts.InFlight() == 1 }, 5*time.Second) // the blocked one
	unblock()
	if resp := n.recv(); resp.ID != 1 || resp.Err != nil || !resp.Found {
		t.Fatalf("blocked restore's response: %+v", resp)
	}
	poll(t, func() bool { return ts.InFlight() == 0 }, 5*time.Second) // freed once the answer is sent
	if p := h.peak.Load(); p < 2 {
		t.Errorf("peak %d restores in the handler: the others waited for the blocked one", p)
	}
}

// TestRestoreGroupsUnderLoad: restores mixed with writes and pings, slow
// and fast, on connections with few in-flight slots, some closed right
// after sending: every request sent on a connection kept open is answered
// once, and nothing hangs or races (run with -race).
func TestRestoreGroupsUnderLoad(t *testing.T) {
	h := &jitterHandler{memHandler: *newMemHandler()}
	for _, inflight := range []int{1, 2, 3, 7, 64} {
		ts := startServer(t, h, ServerConfig{MaxInflight: inflight})
		var wg sync.WaitGroup
		for c := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := dialNative(t, ts.addr)
				var reqs []Request
				for i := range 40 {
					id := uint64(i + 1)
					switch i % 5 {
					case 3:
						reqs = append(reqs, Request{ID: id, Op: OpDelete, SID: fmt.Sprint("d", i)})
					case 4:
						reqs = append(reqs, Request{ID: id, Op: OpPing})
					default:
						reqs = append(reqs, Request{ID: id, Op: OpRestore, SID: fmt.Sprint("s", i)})
					}
				}
				n.send(reqs...)
				if c == 3 {
					n.c.Close() // gone before the answers: the node must not hang
					return
				}
				_ = n.c.SetReadDeadline(time.Now().Add(20 * time.Second))
				seen := map[uint64]bool{}
				for range reqs {
					resp, err := n.tryRecv()
					if err != nil {
						t.Errorf("MaxInflight %d: %v after %d answers", inflight, err, len(seen))
						return
					}
					if resp.Err != nil || seen[resp.ID] || resp.ID == 0 || resp.ID > uint64(len(reqs)) {
						t.Errorf("MaxInflight %d: answer %+v (seen before: %v)", inflight, resp, seen[resp.ID])
						return
					}
					seen[resp.ID] = true
				}
			}()
		}
		wg.Wait()
		ts.Close()
	}
}

// jitterHandler's restores take 0 to 1.5 ms.
type jitterHandler struct {
	memHandler
	n atomic.Int64
}

func (h *jitterHandler) Restore(ctx context.Context, sid string, c Consistency) ([]byte, bool, error) {
	time.Sleep(time.Duration(h.n.Add(1)*7919%1500) * time.Microsecond)
	return nil, false, nil
}
