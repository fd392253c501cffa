package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// do sends req to the current node, following leader hints and moving on to
// the next known node after retryable failures, within ctx and
// Config.MaxRetries. Every operation of the native protocol is idempotent
// (restore, whole-session save, key set/delete, delete, touch, ping, and
// admin requests, which the nodes make idempotent), so any failure that
// leaves the outcome unknown but the node healthy-looking may be retried.
func (s *Store) do(ctx context.Context, req *transport.Request) (transport.Response, error) {
	if s.isClosed() {
		return transport.Response{}, ErrClosed
	}
	backoffs := 0
	for attempt := 0; ; attempt++ {
		n := s.cur.Load()
		resp, err := s.attempt(ctx, n, req)
		if err == nil {
			return resp, nil
		}
		var ce *callError
		if !errors.As(err, &ce) {
			return resp, err
		}
		switch ce.class {
		case classFinal:
			return resp, err
		case classTimedOut:
			// The node took the request but did not answer in time: it may
			// be cut off. Do not pile another attempt on a struggling
			// cluster, but send the next call elsewhere.
			s.advance(n)
			return resp, err
		}
		if attempt >= s.cfg.MaxRetries {
			if attempt == 0 {
				return resp, err
			}
			return resp, &callError{
				text:  fmt.Sprintf("%s (gave up after %d attempts)", ce.text, attempt+1),
				cause: ce,
				class: classFinal,
			}
		}
		if ce.class == classFollow {
			s.follow(ce.leader)
			continue
		}
		s.advance(n)
		if err := s.sleep(ctx, backoff(backoffs)); err != nil {
			return resp, fmt.Errorf("kadosession: %s: %w while retrying; last failure: %w", req.Op, err, ce)
		}
		backoffs++
	}
}

// attempt sends req once to n, bounded by ctx and by RequestTimeout unless
// ctx ends sooner. The RequestTimeout is a pooled timer rather than a derived
// context: no allocation, and no registration with a cancellable parent.
func (s *Store) attempt(ctx context.Context, n *node, req *transport.Request) (transport.Response, error) {
	var (
		expired  <-chan time.Time
		deadline time.Time
	)
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > s.cfg.RequestTimeout {
		t := timers.Get().(*time.Timer)
		t.Reset(s.cfg.RequestTimeout)
		defer func() { t.Stop(); timers.Put(t) }()
		expired, deadline = t.C, time.Now().Add(s.cfg.RequestTimeout)
	}
	c, err := n.get(ctx, expired, deadline, s)
	var resp transport.Response
	if err == nil {
		resp, err = c.roundTrip(ctx, expired, req)
	}
	switch {
	case err == nil && resp.Err != nil:
		return resp, serverError(req.Op, n.addr, resp.Err)
	case err == nil:
		return resp, nil
	case errors.Is(err, ErrClosed):
		return resp, err
	case ctx.Err() != nil:
		return resp, contextError(req.Op, n.addr, ctx)
	case err == errExpired || !deadline.IsZero() && !time.Now().Before(deadline):
		return resp, timeoutError(req.Op, n.addr, s.cfg.RequestTimeout)
	}
	return resp, err
}

// timers recycles stopped attempt timers. Since Go 1.23 a stopped timer's
// channel holds no stale tick, so Reset is all a reused one needs.
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// follow makes addr, a leader hint, the current node, adding it to the
// known nodes if it is new.
func (s *Store) follow(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.cur.Store(s.nodeLocked(addr))
}

// advance moves the current node from n to the next known one, unless
// another caller has moved it already.
func (s *Store) advance(n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != n || len(s.addrs) < 2 {
		return
	}
	i := slices.Index(s.addrs, n.addr)
	s.cur.Store(s.nodes[s.addrs[(i+1)%len(s.addrs)]])
}

// nodeLocked returns the node for addr, adding it to the known nodes if it
// is new. s.mu is held.
func (s *Store) nodeLocked(addr string) *node {
	n, ok := s.nodes[addr]
	if !ok {
		n = newNode(addr, s.cfg.PoolSize)
		s.nodes[addr] = n
		s.addrs = append(s.addrs, addr)
	}
	return n
}

// backoff returns the wait before the (i+1)th retry that backs off:
// exponential from backoffBase, capped at backoffCap, drawn from [d/2, d).
func backoff(i int) time.Duration {
	d := backoffCap
	if i < 16 {
		d = min(backoffBase<<i, backoffCap)
	}
	return d/2 + rand.N(d/2)
}

// sleep waits for d, returning early with ctx's error or ErrClosed.
func (s *Store) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrClosed
	}
}
