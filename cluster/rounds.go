package cluster

import (
	"context"
	"sync"
	"time"
)

// rounds shares one call of do among every caller that joins before the
// call starts: a caller joins the next round, which starts as soon as the
// previous one ended, so each round's do begins after all its callers
// arrived (what a read index needs), and a busy node makes one call per
// round trip, not one per caller. The zero value is not usable: set do.
//
// The goroutine that runs the rounds waits a while for the next one before
// it exits: started afresh for every round, it grew its stack each time,
// which cost a busy node a tenth of its CPU.
type rounds struct {
	do func() (uint64, error)

	mu      sync.Mutex
	next    *round
	running bool
	kick    chan struct{} // wakes a waiting run for a new round (capacity 1)
}

// roundsIdle is how long run waits for another round before it exits.
const roundsIdle = time.Second

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
			if rs.kick == nil {
				rs.kick = make(chan struct{}, 1)
			}
			go rs.run()
		} else {
			select {
			case rs.kick <- struct{}{}:
			default:
			}
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
	idle := time.NewTimer(roundsIdle)
	defer idle.Stop()
	for {
		rs.mu.Lock()
		r := rs.next
		rs.next = nil
		rs.mu.Unlock()
		if r == nil {
			idle.Reset(roundsIdle)
			select {
			case <-rs.kick:
				continue
			case <-idle.C:
			}
			rs.mu.Lock()
			if rs.next == nil {
				rs.running = false
				rs.mu.Unlock()
				return
			}
			rs.mu.Unlock()
			continue
		}
		r.value, r.err = rs.do()
		close(r.done)
	}
}
