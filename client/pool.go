package client

import (
	"context"
	"sync/atomic"
	"time"
)

// node is one cluster node as the Store sees it: its address and a fixed
// number of connection slots, each dialled on first use and redialled on the
// first use after its connection failed. node is safe for concurrent use.
type node struct {
	addr  string
	next  atomic.Uint32 // round-robin over slots
	slots []slot
}

// slot holds at most one connection. Its lock is a channel so that a caller
// waiting for someone else's dial can give up when its context ends.
type slot struct {
	conn  atomic.Pointer[conn]
	lock  chan struct{} // held while dialling
	dials atomic.Uint64 // dials finished, to notice one that ended while we waited
	// lastErr is the last dial's error, when it failed on its own merits
	// (not because its caller's context ended); guarded by lock.
	lastErr error
}

func newNode(addr string, size int) *node {
	n := &node{addr: addr, slots: make([]slot, size)}
	for i := range n.slots {
		n.slots[i].lock = make(chan struct{}, 1)
	}
	return n
}

// get returns a healthy connection to the node, dialling one if the slot
// it picks has none. A caller that waited while another dialled the same
// slot and failed gets that failure instead of dialling again, so a dead node
// costs one dial timeout per slot, not one per caller.
//
// The wait is bounded by ctx and by expired (nil for none), which fires at
// deadline (zero for none).
func (n *node) get(ctx context.Context, expired <-chan time.Time, deadline time.Time, s *Store) (*conn, error) {
	sl := &n.slots[int(n.next.Add(1)-1)%len(n.slots)]
	if c := sl.conn.Load(); c != nil && !c.broken.Load() {
		return c, nil
	}
	seen := sl.dials.Load()
	select {
	case sl.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-expired:
		return nil, errExpired
	case <-s.done:
		return nil, ErrClosed
	}
	defer func() { <-sl.lock }()
	if c := sl.conn.Load(); c != nil && !c.broken.Load() {
		return c, nil
	}
	if sl.dials.Load() != seen && sl.lastErr != nil {
		return nil, sl.lastErr
	}
	dctx := ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	c, err := dial(dctx, n.addr, &s.cfg)
	sl.dials.Add(1)
	sl.lastErr = nil
	if err != nil {
		if dctx.Err() == nil {
			// A failure of the node, not of this caller's patience:
			// callers queued behind this dial share it.
			sl.lastErr = err
		}
		return nil, err
	}
	if !s.register(func() { sl.conn.Store(c) }) {
		c.close(ErrClosed)
		return nil, ErrClosed
	}
	return c, nil
}

// closeAll closes every connection of the node with cause. The Store must
// already refuse new registrations.
func (n *node) closeAll(cause error) {
	for i := range n.slots {
		if c := n.slots[i].conn.Load(); c != nil {
			c.close(cause)
		}
	}
}
