package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// committer is the group commit: it packs the session writes that arrive
// while earlier ones are being replicated into one OpBatch log entry, so one
// fsync and one round of replication serve many clients. Commands keep their
// arrival order. The leader's time is stamped here, when a batch is formed.
type committer struct {
	raft     *raft.Raft
	queue    chan *pendingWrite
	inflight chan struct{}
	maxBytes int
	maxCount int
	timeout  time.Duration
	obs      *metrics // batch sizes and apply latency; nil: none
	// logVersion is the newest log version every member applies
	// (logversion.go); nil: any.
	logVersion func() int

	// applied reports a write id already applied (fsm.State.Applied);
	// pending holds the ids proposed here and not yet answered.
	applied func(id fsm.RequestID, now int64) (int, bool)
	pmu     sync.Mutex
	pending map[fsm.RequestID]chan struct{}

	mu       sync.Mutex
	lastTime int64
	stop     chan struct{}
	wg       sync.WaitGroup
}

type pendingWrite struct {
	cmd    fsm.Command
	size   int
	done   chan fsm.Result
	onDone func() // called once the result is known (dedupe bookkeeping)
}

// finish delivers p's result.
func (p *pendingWrite) finish(r fsm.Result) {
	p.done <- r
	if p.onDone != nil {
		p.onDone()
	}
}

// newCommitter starts a committer whose batches hold up to maxBytes of
// commands (one command may be larger: it goes alone).
func newCommitter(r *raft.Raft, timeout time.Duration, maxBytes int) *committer {
	c := &committer{
		raft:     r,
		queue:    make(chan *pendingWrite, 4096),
		inflight: make(chan struct{}, 1),
		maxBytes: maxBytes,
		maxCount: 1024,
		timeout:  timeout,
		pending:  map[fsm.RequestID]chan struct{}{},
		stop:     make(chan struct{}),
	}
	c.wg.Add(1)
	go c.loop()
	return c
}

// errCommitterStopped is returned for writes submitted after close.
var errCommitterStopped = transport.Errorf(transport.CodeUnavailable, "node is shutting down")

// submit queues cmd and waits for its result. It fails fast when the node is
// not the leader, and the caller's ctx bounds the wait; a write whose ctx
// ends after it was queued may still be applied (the caller reports a
// timeout, and retrying it is safe because every command is idempotent).
func (c *committer) submit(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if cmd.ID == (fsm.RequestID{}) || c.applied == nil {
		return c.submitOnce(ctx, cmd, nil)
	}
	// A write carrying an id is proposed once: a retry of one that was
	// applied gets the first result; a retry of one still in flight here
	// waits for it, then looks again.
	for {
		if count, ok := c.applied(cmd.ID, time.Now().UnixMilli()); ok {
			return fsm.Result{Count: count}, nil
		}
		c.pmu.Lock()
		if busy, ok := c.pending[cmd.ID]; ok {
			c.pmu.Unlock()
			select {
			case <-busy:
				continue
			case <-ctx.Done():
				return fsm.Result{}, ctx.Err()
			case <-c.stop:
				return fsm.Result{}, errCommitterStopped
			}
		}
		busy := make(chan struct{})
		c.pending[cmd.ID] = busy
		c.pmu.Unlock()
		return c.submitOnce(ctx, cmd, func() {
			c.pmu.Lock()
			delete(c.pending, cmd.ID)
			c.pmu.Unlock()
			close(busy)
		})
	}
}

func (c *committer) submitOnce(ctx context.Context, cmd fsm.Command, onDone func()) (fsm.Result, error) {
	if v := cmd.LogVersion(); v > 0 && c.logVersion != nil && v > c.logVersion() {
		// A member would stop at it: a command with no older form that
		// was not held back (logversion.go).
		if onDone != nil {
			onDone()
		}
		return fsm.Result{}, transport.Errorf(transport.CodeUnavailable, "%v needs raft log version %d, and not every member applies it yet: upgrade every member", cmd.Op, v)
	}
	p := &pendingWrite{cmd: cmd, size: approxSize(&cmd), done: make(chan fsm.Result, 1), onDone: onDone}
	select {
	case c.queue <- p:
	case <-c.stop:
		if onDone != nil {
			onDone()
		}
		return fsm.Result{}, errCommitterStopped
	case <-ctx.Done():
		if onDone != nil {
			onDone()
		}
		return fsm.Result{}, ctx.Err()
	}
	select {
	case r := <-p.done:
		return r, r.Err
	case <-ctx.Done():
		return fsm.Result{}, ctx.Err()
	case <-c.stop:
		// The write may still be applied: like a timeout, its outcome is
		// unknown, and retrying it elsewhere is safe.
		select {
		case r := <-p.done:
			return r, r.Err
		case <-time.After(c.timeout):
			return fsm.Result{}, errCommitterStopped
		}
	}
}

func approxSize(c *fsm.Command) int {
	n := 32 + len(c.SID) + len(c.Data)
	for _, f := range c.Set {
		n += len(f.Key) + len(f.Value) + 8
	}
	for _, k := range c.Del {
		n += len(k) + 4
	}
	return n
}

// stamp returns the leader's time in ms, never going backwards.
func (c *committer) stamp() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now().UnixMilli()
	if now < c.lastTime {
		now = c.lastTime
	}
	c.lastTime = now
	return now
}

func (c *committer) loop() {
	defer c.wg.Done()
	var carry *pendingWrite // the write that did not fit in the last batch
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-c.queue:
			case <-c.stop:
				c.drain(errCommitterStopped)
				return
			}
		}
		// Wait for a free slot before cutting the batch, so that everything
		// that queues while earlier batches are replicated rides in this one.
		select {
		case c.inflight <- struct{}{}:
		case <-c.stop:
			first.finish(fsm.Result{Err: errCommitterStopped})
			c.drain(errCommitterStopped)
			return
		}
		batch := []*pendingWrite{first}
		size := first.size
	fill:
		for len(batch) < c.maxCount {
			select {
			case p := <-c.queue:
				if size+p.size > c.maxBytes {
					carry = p
					break fill
				}
				batch = append(batch, p)
				size += p.size
			default:
				break fill
			}
		}
		now := c.stamp()
		cmd := fsm.Command{Op: fsm.OpBatch, Time: now, Batch: make([]fsm.Command, len(batch))}
		for i, p := range batch {
			p.cmd.Time = now
			cmd.Batch[i] = p.cmd
		}
		// Raft keeps the entry: a buffer of its own, of exactly its size.
		data := cmd.Encode(make([]byte, 0, cmd.EncodedLen()))
		start := time.Now()
		f := c.raft.Apply(data, c.timeout)
		c.wg.Add(1)
		go c.await(f, batch, start)
	}
}

func (c *committer) await(f raft.ApplyFuture, batch []*pendingWrite, start time.Time) {
	defer c.wg.Done()
	err := f.Error()
	c.obs.observeApply(len(batch), time.Since(start))
	<-c.inflight
	if err != nil {
		werr := applyError(err, c.raft)
		for _, p := range batch {
			p.finish(fsm.Result{Err: werr})
		}
		return
	}
	results, ok := f.Response().([]fsm.Result)
	if !ok || len(results) != len(batch) {
		for _, p := range batch {
			p.finish(fsm.Result{Err: fmt.Errorf("internal error: batch response %T does not match its %d writes", f.Response(), len(batch))})
		}
		return
	}
	for i, p := range batch {
		p.finish(results[i])
	}
}

// applyError turns raft's apply errors into errors for the wire.
func applyError(err error, r *raft.Raft) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		addr, _ := r.LeaderWithID()
		return &transport.Error{Code: transport.CodeNotLeader, Message: "this node is not the leader: " + err.Error(), Leader: string(addr)}
	case errors.Is(err, raft.ErrRaftShutdown):
		return errCommitterStopped
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return transport.Errorf(transport.CodeTimeout, "write not accepted by raft in time: %v", err)
	}
	return transport.Errorf(transport.CodeUnavailable, "write failed: %v", err)
}

func (c *committer) drain(err error) {
	for {
		select {
		case p := <-c.queue:
			p.finish(fsm.Result{Err: err})
		default:
			return
		}
	}
}

// close stops taking writes, fails queued ones and waits, within the apply
// timeout, for those already handed to raft. (Raft may never answer an
// apply still in its queue when it shuts down; close must not hang on it.)
func (c *committer) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.timeout):
	}
}
