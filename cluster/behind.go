package cluster

import (
	"fmt"
	"sync"
	"time"
)

// behindAfter is how far back status looks for a member that is behind:
// one that has not applied what the leader had applied this long ago
// (NodeStatus.Behind). A follower whose disk had filled answered status,
// heard from its leader every heartbeat and said nothing of a failure,
// but never caught up: status counted it as healthy ("1 more may fail")
// while it could not help commit (a drill). A variable for tests.
var behindAfter = 10 * time.Second

// appliedTrail is the node's applied index over the last behindAfter and a
// little more, sampled ten times per behindAfter (recordApplied).
type appliedTrail struct {
	mu      sync.Mutex
	samples [12]appliedSample // a ring; next is the oldest
	next    int
}

type appliedSample struct {
	at    time.Time
	index uint64
}

func (a *appliedTrail) add(at time.Time, index uint64) {
	a.mu.Lock()
	a.samples[a.next] = appliedSample{at, index}
	a.next = (a.next + 1) % len(a.samples)
	a.mu.Unlock()
}

// asOf returns the applied index of the newest sample taken at least d
// before now: what the node had applied d ago (0: it has no sample that
// old, having started since).
func (a *appliedTrail) asOf(now time.Time, d time.Duration) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var best appliedSample
	for _, s := range a.samples {
		if !s.at.IsZero() && now.Sub(s.at) >= d && s.at.After(best.at) {
			best = s
		}
	}
	return best.index
}

// recordApplied samples the node's applied index for the node's life.
func (n *Node) recordApplied() {
	defer n.bg.Done()
	tick := time.NewTicker(behindAfter / 10)
	defer tick.Stop()
	for {
		n.applied.add(time.Now(), n.appliedIndex())
		select {
		case <-n.stop:
			return
		case <-tick.C:
		}
	}
}

// behind says why a member that has applied applied is behind a leader
// that had applied earlier behindAfter ago and has applied leaderApplied
// now, or returns "".
func behind(applied, earlier, leaderApplied uint64) string {
	if applied >= earlier {
		return ""
	}
	return fmt.Sprintf("behind: it has not applied what the leader had applied %s ago (%d entries behind now); it is catching up slowly, or stuck (its log says why)",
		behindAfter, leaderApplied-applied)
}
