package transport

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is a fixed number of connection slots to one node, handed out round
// robin. Each slot is dialled on first use and redialled on the first use
// after its connection failed. A caller that waited while another dialled
// the same slot and failed gets that failure instead of dialling again, so
// a dead node costs one dial timeout per slot, not one per caller.
//
// A Pool is safe for concurrent use. Close closes every connection; Get
// fails with ErrClosed afterwards.
type Pool struct {
	addr  string
	cfg   ConnConfig
	next  atomic.Uint32 // round-robin over slots
	slots []poolSlot
	done  chan struct{} // closed by Close

	mu     sync.Mutex
	closed bool
}

// poolSlot holds at most one connection. Its lock is a channel so that a
// caller waiting for someone else's dial can give up when its context ends.
type poolSlot struct {
	conn  atomic.Pointer[Conn]
	lock  chan struct{} // held while dialling
	dials atomic.Uint64 // dials finished, to notice one that ended while we waited
	// lastErr is the last dial's error, when it failed on its own merits
	// (not because its caller's context ended); guarded by lock.
	lastErr error
}

// NewPool returns a Pool of size connections (at least 1) to addr, each
// dialled with cfg when first needed. It does not connect.
func NewPool(addr string, size int, cfg ConnConfig) *Pool {
	p := &Pool{addr: addr, cfg: cfg.withDefaults(), slots: make([]poolSlot, max(size, 1)), done: make(chan struct{})}
	for i := range p.slots {
		p.slots[i].lock = make(chan struct{}, 1)
	}
	return p
}

// Addr returns the address the Pool dials.
func (p *Pool) Addr() string { return p.addr }

// Get returns a healthy connection from the next slot, dialling one if the
// slot has none (bounded by ctx and ConnConfig.DialTimeout). When the slot
// holds a healthy connection it returns at once without looking at ctx. The
// error is a *DialError, ctx.Err() or ErrClosed.
func (p *Pool) Get(ctx context.Context) (*Conn, error) {
	return p.GetDeadline(ctx, time.Time{})
}

// GetDeadline is Get that also gives up at deadline (none when zero): while
// waiting for another caller's dial of the same slot with ErrDeadline, and
// while dialling as if ctx had that deadline.
func (p *Pool) GetDeadline(ctx context.Context, deadline time.Time) (*Conn, error) {
	sl := &p.slots[int(p.next.Add(1)-1)%len(p.slots)]
	if c := sl.conn.Load(); c != nil && !c.broken.Load() {
		return c, nil
	}
	return p.dial(ctx, deadline, sl)
}

// dial takes sl's lock and dials it, unless a healthy connection or a
// failed dial appeared there meanwhile.
func (p *Pool) dial(ctx context.Context, deadline time.Time, sl *poolSlot) (*Conn, error) {
	seen := sl.dials.Load()
	select {
	case sl.lock <- struct{}{}:
	default:
		if err := p.waitLock(ctx, deadline, sl); err != nil {
			return nil, err
		}
	}
	defer func() { <-sl.lock }()
	if c := sl.conn.Load(); c != nil && !c.broken.Load() {
		return c, nil
	}
	if sl.dials.Load() != seen && sl.lastErr != nil {
		return nil, sl.lastErr
	}
	if p.isClosed() {
		return nil, ErrClosed
	}
	// The dial ends with the caller's context, its deadline, or Close
	// (a node that drops packets would otherwise hold a closing Store's
	// calls for the whole DialTimeout).
	cctx, cancelOnClose := context.WithCancel(ctx)
	defer cancelOnClose()
	go func() {
		select {
		case <-p.done:
			cancelOnClose()
		case <-cctx.Done():
		}
	}()
	dctx := cctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(cctx, deadline)
		defer cancel()
	}
	c, err := Dial(dctx, p.addr, p.cfg)
	sl.dials.Add(1)
	sl.lastErr = nil
	if err != nil {
		if p.isClosed() {
			return nil, ErrClosed
		}
		if dctx.Err() == nil {
			// A failure of the node, not of this caller's patience:
			// callers queued behind this dial share it.
			sl.lastErr = err
		}
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return nil, ErrClosed
	}
	sl.conn.Store(c)
	p.mu.Unlock()
	return c, nil
}

// waitLock waits for sl's lock, for ctx to end, for deadline or for Close.
func (p *Pool) waitLock(ctx context.Context, deadline time.Time, sl *poolSlot) error {
	var expired <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expired = t.C
	}
	select {
	case sl.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-expired:
		return ErrDeadline
	case <-p.done:
		return ErrClosed
	}
}

func (p *Pool) isClosed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Close closes every connection of the Pool (requests in flight fail with a
// *ConnError wrapping ErrClosed) and makes Get fail with ErrClosed. A dial
// in progress is closed when it completes. Close is idempotent and returns
// nil.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	for i := range p.slots {
		if c := p.slots[i].conn.Load(); c != nil {
			c.Close()
		}
	}
	return nil
}
