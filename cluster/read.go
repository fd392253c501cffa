package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// readIndex makes default reads linearizable without writing to the log:
// once per term a barrier proves the leader has applied everything earlier
// leaders committed; then each read notes the commit index, joins a
// VerifyLeader round (one round is shared by every read that arrived before
// it started), checks the term did not change, and waits until the state
// machine has applied the noted index.
type readIndex struct {
	raft    *raft.Raft
	applied *appliedIndex

	barrierTerm atomic.Uint64
	barrierMu   sync.Mutex

	mu      sync.Mutex
	next    *verifyRound
	running bool
}

type verifyRound struct {
	done chan struct{}
	err  error
}

// wait returns nil once a read made now would be linearizable, or an error
// (CodeNotLeader with a hint when this node is not the leader).
func (ri *readIndex) wait(ctx context.Context) error {
	if ri.raft.State() != raft.Leader {
		return notLeader(ri.raft)
	}
	term := ri.raft.CurrentTerm()
	if err := ri.barrier(ctx, term); err != nil {
		return err
	}
	index := ri.raft.CommitIndex()
	if err := ri.verify(ctx); err != nil {
		return err
	}
	if ri.raft.CurrentTerm() != term {
		return notLeader(ri.raft)
	}
	return ri.applied.waitFor(ctx, index, ri.raft.AppliedIndex)
}

func (ri *readIndex) barrier(ctx context.Context, term uint64) error {
	if ri.barrierTerm.Load() == term {
		return nil
	}
	ri.barrierMu.Lock()
	defer ri.barrierMu.Unlock()
	if ri.barrierTerm.Load() == term {
		return nil
	}
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if err := ri.raft.Barrier(timeout).Error(); err != nil {
		return applyError(err, ri.raft)
	}
	ri.barrierTerm.Store(term)
	return nil
}

func (ri *readIndex) verify(ctx context.Context) error {
	ri.mu.Lock()
	if ri.next == nil {
		ri.next = &verifyRound{done: make(chan struct{})}
		if !ri.running {
			ri.running = true
			go ri.run()
		}
	}
	r := ri.next
	ri.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return transport.Errorf(transport.CodeTimeout, "read timed out confirming leadership: %v", ctx.Err())
	}
}

func (ri *readIndex) run() {
	for {
		ri.mu.Lock()
		r := ri.next
		ri.next = nil
		if r == nil {
			ri.running = false
			ri.mu.Unlock()
			return
		}
		ri.mu.Unlock()
		if err := ri.raft.VerifyLeader().Error(); err != nil {
			r.err = applyError(err, ri.raft)
		}
		close(r.done)
	}
}

func notLeader(r *raft.Raft) error {
	addr, id := r.LeaderWithID()
	if addr == "" {
		return transport.Errorf(transport.CodeUnavailable, "no leader is known at the moment: retry shortly")
	}
	return &transport.Error{Code: transport.CodeNotLeader, Message: fmt.Sprintf("this node is not the leader; the leader is %s at %s", id, addr), Leader: string(addr)}
}

// appliedIndex tracks the index the state machine has applied and lets
// readers wait for one.
type appliedIndex struct {
	mu    sync.Mutex
	index uint64
	wake  chan struct{}
}

func newAppliedIndex() *appliedIndex { return &appliedIndex{wake: make(chan struct{})} }

func (a *appliedIndex) set(i uint64) {
	a.mu.Lock()
	if i > a.index {
		a.index = i
		close(a.wake)
		a.wake = make(chan struct{})
	}
	a.mu.Unlock()
}

func (a *appliedIndex) get() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.index
}

// waitFor returns once index i has been applied. raftApplied is raft's own
// applied index, which also counts entries that never reach the state
// machine (no-ops, barriers); it may run ahead of the state machine only by
// entries no client has been told about yet, so a read may count on it.
func (a *appliedIndex) waitFor(ctx context.Context, i uint64, raftApplied func() uint64) error {
	var poll *time.Timer
	for {
		a.mu.Lock()
		if a.index >= i || raftApplied() >= i {
			a.mu.Unlock()
			return nil
		}
		wake := a.wake
		a.mu.Unlock()
		if poll == nil {
			poll = time.NewTimer(time.Millisecond)
			defer poll.Stop()
		} else {
			poll.Reset(time.Millisecond)
		}
		select {
		case <-wake:
		case <-poll.C:
		case <-ctx.Done():
			return transport.Errorf(transport.CodeTimeout, "read timed out waiting for index %d to be applied: %v", i, ctx.Err())
		}
	}
}
