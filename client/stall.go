package client

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// A call whose node stops answering without closing the connection (a
// frozen process, a VM paused, a host gone without a reset) would wait out
// its whole RequestTimeout, and fail, while the cluster elected another
// leader in about a second. So a call that has waited stallEvery without
// an answer has its Store ask another node who leads (one question per
// node at a time, shared by every call waiting on it); if that node names
// a leader other than the silent one, the calls waiting there move to the
// leader named, as after a not-leader answer. Every call may be retried
// (see do), so one that the silent node did serve after all is answered
// once more: a write by its nonce, a read again.

// stallEvery is how long a call waits without an answer before its Store
// asks another node who leads, and between such questions.
func (s *Store) stallEvery() time.Duration {
	return max(s.cfg.RequestTimeout/5, minStallEvery)
}

// minStallEvery bounds stallEvery from below, so a short RequestTimeout
// does not make a question out of every slow call (a variable for tests).
var minStallEvery = 200 * time.Millisecond

// stallWatch asks about calls waiting on one node.
type stallWatch struct {
	s     *Store
	n     *transport.Pool
	check func() <-chan struct{} // w.ask, made once

	mu   sync.Mutex
	last *leaderProbe // the latest question about n
}

// leaderProbe is one question to other nodes about who leads.
type leaderProbe struct {
	started time.Time
	moved   chan struct{} // closed once a node names a leader other than n
	leader  string        // that leader, set before moved is closed
	answer  string        // what was found, for the error of a call that moves
}

// watch returns n's stallWatch.
func (s *Store) watch(n *transport.Pool) *stallWatch {
	if w, ok := s.watches.Load(n); ok {
		return w.(*stallWatch)
	}
	w := &stallWatch{s: s, n: n}
	w.check = w.ask
	actual, _ := s.watches.LoadOrStore(n, w)
	return actual.(*stallWatch)
}

// ask starts a question about n unless one started less than stallEvery
// ago, and returns the channel closed when the calls waiting on n should
// move.
func (w *stallWatch) ask() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p := w.last; p != nil && time.Since(p.started) < w.s.stallEvery() {
		return p.moved
	}
	p := &leaderProbe{started: time.Now(), moved: make(chan struct{})}
	w.last = p
	go w.s.probe(w.n, p)
	return p.moved
}

// movedTo returns the leader the latest question named, and what was found.
func (w *stallWatch) movedTo() (leader, answer string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p := w.last; p != nil {
		select {
		case <-p.moved:
			return p.leader, p.answer
		default:
		}
	}
	return "", ""
}

// probe asks up to two other known nodes, in turn, which node leads, and
// closes p.moved if one names a leader other than n.
func (s *Store) probe(n *transport.Pool, p *leaderProbe) {
	s.mu.Lock()
	now := time.Now().UnixNano()
	var others []*transport.Pool
	i := slices.Index(s.addrs, n.Addr())
	for k := 1; k < len(s.addrs) && len(others) < 2; k++ {
		a := s.addrs[(i+k)%len(s.addrs)]
		if a != n.Addr() && !s.unreachableLocked(a, now) {
			others = append(others, s.nodes[a])
		}
	}
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	for _, o := range others {
		leader, err := s.askLeader(o, min(s.stallEvery(), time.Second))
		if err != nil {
			continue // that one does not answer either: ask the next
		}
		if leader != "" && leader != n.Addr() && checkAddr(leader) == nil {
			p.leader = leader
			p.answer = fmt.Sprintf("%s names %s as the leader", o.Addr(), leader)
			close(p.moved)
		}
		return
	}
}

// askLeader asks node o for its status and returns the leader's address it
// knows ("" for none).
func (s *Store) askLeader(o *transport.Pool, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	c, err := o.GetDeadline(context.Background(), deadline)
	if err != nil {
		return "", err
	}
	resp, err := c.RoundTripDeadline(context.Background(), deadline, &transport.Request{Op: transport.OpAdmin, Data: statusRequest})
	if err != nil {
		return "", err
	}
	if resp.Err != nil {
		return "", resp.Err
	}
	var st struct {
		Leader string `json:"leader_address"`
	}
	if err := json.Unmarshal(resp.Data, &st); err != nil {
		return "", err
	}
	return st.Leader, nil
}

var statusRequest = []byte(`{"op":"status"}`)
