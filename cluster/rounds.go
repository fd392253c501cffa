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
// round trip, not one per caller. A caller whose request's arrival is known
// (transport.Arrived) is also served by a round that started after that,
// running or finished: reads that arrived together and are served one
// after another (the transport's restore groups) share one round too. The
// zero value is not usable: set do.
//
// The goroutine that runs the rounds waits a while for the next one before
// it exits: started afresh for every round, it grew its stack each time,
// which cost a busy node a tenth of its CPU.
type rounds struct {
	do func() (uint64, error)
	// holds, when set, tells whether a finished round's value still
	// holds (a confirmation round's term: not once a later term began);
	// one that does not is not reused, and its caller joins the next.
	holds func(value uint64) bool

	mu       sync.Mutex
	next     *round
	inFlight *round // the round do is running for, if any
	last     *round // the latest round to have succeeded
	running  bool
	kick     chan struct{} // wakes a waiting run for a new round (capacity 1)
}

// roundsIdle is how long run waits for another round before it exits.
const roundsIdle = time.Second

type round struct {
	done  chan struct{}
	start time.Time // when do began
	value uint64
	err   error
}

// join waits for the result of a round that started after the caller's
// request arrived (the next one, when arrived is zero: not known), or
// returns ctx's error.
func (rs *rounds) join(ctx context.Context, arrived time.Time) (uint64, error) {
	rs.mu.Lock()
	if !arrived.IsZero() {
		if r := rs.last; r != nil && r.start.After(arrived) && (rs.holds == nil || rs.holds(r.value)) {
			rs.mu.Unlock()
			return r.value, nil
		}
		if r := rs.inFlight; r != nil && r.start.After(arrived) {
			rs.mu.Unlock()
			return r.wait(ctx)
		}
	}
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
	return r.wait(ctx)
}

func (r *round) wait(ctx context.Context) (uint64, error) {
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
		if r != nil {
			r.start = time.Now()
			rs.inFlight = r
		}
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
		rs.mu.Lock()
		rs.inFlight = nil
		if r.err == nil {
			rs.last = r
		}
		rs.mu.Unlock()
		close(r.done)
	}
}
