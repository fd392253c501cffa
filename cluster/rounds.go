package cluster

import (
	"context"
	"sync"
)

// rounds shares one call of do among every caller that joins before the
// call starts: a caller joins the next round, which starts as soon as the
// previous one ended, so each round's do begins after all its callers
// arrived (what a read index needs), and a busy node makes one call per
// round trip, not one per caller. The zero value is not usable: set do.
type rounds struct {
	do func() (uint64, error)

	mu      sync.Mutex
	next    *round
	running bool
}

type round struct {
	done  chan struct{}
	value uint64
	err   error
}

// join waits for the result of the next round, or returns ctx's error.
func (rs *rounds) join(ctx context.Context) (uint64, error) {
	rs.mu.Lock()
	if rs.next == nil {
		rs.next = &round{done: make(chan struct{})}
		if !rs.running {
			rs.running = true
			go rs.run()
		}
	}
	r := rs.next
	rs.mu.Unlock()
	select {
	case <-r.done:
		return r.value, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (rs *rounds) run() {
	for {
		rs.mu.Lock()
		r := rs.next
		rs.next = nil
		if r == nil {
			rs.running = false
			rs.mu.Unlock()
			return
		}
		rs.mu.Unlock()
		r.value, r.err = rs.do()
		close(r.done)
	}
}
