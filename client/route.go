package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// do sends req to the current node, following leader hints and moving on to
// the next known node after retryable failures, within ctx and
// Config.MaxRetries. Every operation of the native protocol may be retried
// (reads; writes carry a nonce, which the leader applies once within
// fsm.DedupeWindow; admin reads, join and remove are idempotent, and a
// revoke carries a nonce in its body), so any failure that leaves the outcome
// unknown but the node healthy-looking may be retried, within
// retryWindow of the first attempt.
func (s *Store) do(ctx context.Context, req *transport.Request) (transport.Response, error) {
	if s.isClosed() {
		return transport.Response{}, ErrClosed
	}
	start := time.Now() // of the first attempt
	backoffs := 0
	skipped := 0        // 1 once a read failed on this Store's follower
	var last *callError // the last retryable failure
	for attempt := 0; ; attempt++ {
		n := s.cur.Load()
		var r *reader // the follower a read went to, if any
		if attempt == 0 && s.toFollower(req) {
			if r = s.reader(n); r != nil {
				n = r.pool
			}
		}
		resp, err := s.attempt(ctx, n, req)
		if err == nil {
			r.ok()
			return resp, nil
		}
		var ce *callError
		if !errors.As(err, &ce) {
			return resp, err
		}
		switch ce.class {
		case classFinal:
			return resp, err
		case classEnded:
			if last == nil {
				return resp, err
			}
			// The context ended during a retry: say so, and keep what the
			// retries were up against.
			return resp, fmt.Errorf("kadosession: %s: %w while retrying; last failure: %w", req.Op, ce.cause, last)
		}
		if r != nil {
			// The read failed on this Store's follower (refused,
			// unreachable, or not answering in time): leave it out for a
			// while and ask the leader at once. The follower's attempt
			// does not count against MaxRetries.
			r.fail()
			last, skipped = ce, 1
			if ce.class == classFollow {
				s.follow(ce.leader)
			}
			continue
		}
		if ce.class == classTimedOut {
			// The node took the request but did not answer in time: it may
			// be cut off. Do not pile another attempt on a struggling
			// cluster, but send the next call elsewhere.
			s.advance(n)
			return resp, err
		}
		if attempt-skipped >= s.cfg.MaxRetries || time.Since(start) >= retryWindow {
			// No retry left: the next call goes where a retry would have
			// (the leader named, or the next node), or a Store with
			// retries off would ask a dead node forever.
			if ce.class != classFollow || !s.follow(ce.leader) {
				s.advance(n)
			}
			if attempt == 0 {
				return resp, err
			}
			why := fmt.Sprintf("gave up after %d attempts", attempt+1)
			if attempt-skipped < s.cfg.MaxRetries {
				why += fmt.Sprintf(" in %s: a write retried later may be applied twice", retryWindow)
			}
			return resp, &callError{
				text:  fmt.Sprintf("%s (%s)", ce.text, why),
				cause: ce,
				class: classFinal,
			}
		}
		last = ce
		if ce.class == classFollow && s.follow(ce.leader) {
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
// ctx ends sooner. The RequestTimeout is a deadline handed to the pool and
// the connection (which wait on a pooled timer) rather than a derived
// context: no allocation, and no registration with a cancellable parent.
func (s *Store) attempt(ctx context.Context, n *transport.Pool, req *transport.Request) (transport.Response, error) {
	var deadline time.Time
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > s.cfg.RequestTimeout {
		deadline = time.Now().Add(s.cfg.RequestTimeout)
	}
	c, err := n.GetDeadline(ctx, deadline)
	dialFailed := err != nil
	var resp transport.Response
	if err == nil {
		resp, err = c.RoundTripChecked(ctx, deadline, req, s.stallEvery(), s.watch(n).check)
	}
	switch {
	case err == nil && resp.Err != nil:
		return resp, serverError(req.Op, n.Addr(), resp.Err)
	case err == nil:
		if resp.Leader != "" {
			s.followHint(n, resp.Leader)
		}
		return resp, nil
	}
	if errors.Is(err, transport.ErrMoved) {
		e := &callError{cause: err, class: classFollow}
		e.leader, e.text = s.watch(n).movedTo()
		if e.leader == "" { // a newer question replaced the one that moved it
			e.class = classNext
		}
		e.text = fmt.Sprintf("kadosession: %s on %s: no answer for %s or more, and %s", req.Op, n.Addr(), s.stallEvery(), e.text)
		return resp, e
	}
	err = s.callErr(req.Op, n.Addr(), err)
	if ce := (*callError)(nil); dialFailed && ctx.Err() == nil && errors.As(err, &ce) && ce.class == classNext {
		// A dial that failed for the node's sake (connectError: not a
		// refused token, which every node would refuse the same).
		s.cannotReach(n)
	}
	switch {
	case errors.Is(err, ErrClosed):
		return resp, err
	case ctx.Err() != nil || pastDeadline(ctx):
		return resp, contextError(req.Op, n.Addr(), ctx)
	case errors.Is(err, transport.ErrDeadline) || !deadline.IsZero() && !time.Now().Before(deadline):
		return resp, timeoutError(req.Op, n.Addr(), s.cfg.RequestTimeout)
	}
	return resp, err
}

// retryWindow is how long after its first failure a call is retried at
// most, whatever MaxRetries and RequestTimeout allow: the leader
// recognises a retried write for fsm.DedupeWindow (a minute) after it
// applied it, and a retry after that would apply it again.
var retryWindow = 45 * time.Second // a variable for tests

// pastDeadline reports whether ctx's deadline has passed, which a network
// deadline derived from it may notice before ctx's own timer has fired.
func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// followHint makes leader, the address a node that served a request by
// forwarding it named, the current node, when n (which answered) still is
// and the address is valid.
func (s *Store) followHint(n *transport.Pool, leader string) {
	if leader == n.Addr() || s.cur.Load() != n || checkAddr(leader) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cur.Load() != n || s.unreachableLocked(leader, time.Now().UnixNano()) {
		return
	}
	s.cur.Store(s.nodeLocked(leader))
}

// follow makes addr, a leader hint, the current node, adding it to the
// known nodes if it is new. It reports false, and leaves the current node
// as it is, when this Store could not connect to addr lately.
func (s *Store) follow(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.unreachableLocked(addr, time.Now().UnixNano()) {
		return false
	}
	s.cur.Store(s.nodeLocked(addr))
	return true
}

// advance moves the current node from n to the next known one that this
// Store has not failed to connect to lately (the next one, if every other
// one failed), unless another caller has moved it already.
func (s *Store) advance(n *transport.Pool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != n || len(s.addrs) < 2 {
		return
	}
	i := slices.Index(s.addrs, n.Addr())
	next := s.addrs[(i+1)%len(s.addrs)]
	now := time.Now().UnixNano()
	for k := 1; k < len(s.addrs); k++ {
		if a := s.addrs[(i+k)%len(s.addrs)]; !s.unreachableLocked(a, now) {
			next = a
			break
		}
	}
	s.cur.Store(s.nodes[next])
}

// hintPause is how long a node this Store failed to connect to is not
// moved to: neither as a leader hint nor, while another node is left, as
// the next node. Its requests go to nodes it can reach, which forward
// writes to the leader. This is what keeps a client working when the
// nodes advertise addresses it cannot reach (names only a container
// network resolves, seen from the host): without it, every request
// followed the hint, failed to connect, and came back.
var hintPause = 10 * time.Second

// cannotReach notes that connecting to n failed: it is avoided for
// hintPause, also by reads (ReadFollower).
func (s *Store) cannotReach(n *transport.Pool) {
	until := time.Now().Add(hintPause).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unreachable[n.Addr()] = until
	if r := s.readMap[n]; r != nil {
		r.downUntil.Store(until)
	}
}

// unreachableLocked reports whether this Store failed to connect to addr
// less than hintPause before now. s.mu is held.
func (s *Store) unreachableLocked(addr string, now int64) bool {
	until, ok := s.unreachable[addr]
	if ok && now >= until {
		delete(s.unreachable, addr)
		return false
	}
	return ok
}

// readerPause is how long a node that failed a read is left out of the
// readers before one read tries it again.
var readerPause = 2 * time.Second

// reader is a node reads may go to, with its health.
type reader struct {
	pool *transport.Pool
	// downUntil is 0 while the node serves reads; after a failure, the
	// time (UnixNano) until which reads skip it.
	downUntil atomic.Int64
}

// readerSet is where reads go while writes go to writer: every other known
// node.
type readerSet struct {
	writer *transport.Pool
	nodes  []*reader
}

// toFollower reports whether req is a read for this Store's follower
// (Config.Reads).
func (s *Store) toFollower(req *transport.Request) bool {
	return req.Op == transport.OpRestore && s.cfg.Reads == ReadFollower && req.Consistency != Leader
}

// reader returns the node other than writer a read goes to: this Store's
// follower (the first healthy one from its random place in the list), or
// nil when there is none.
func (s *Store) reader(writer *transport.Pool) *reader {
	set := s.readers.Load()
	if set == nil || set.writer != writer {
		set = s.makeReaders(writer)
	}
	k := uint32(len(set.nodes))
	if k == 0 {
		return nil
	}
	now := time.Now().UnixNano()
	for j := range k {
		if r := set.nodes[(s.readStart%k+j)%k]; r.usable(now) {
			return r
		}
	}
	return nil
}

// makeReaders makes and keeps the readers for writer: every known node
// but writer.
func (s *Store) makeReaders(writer *transport.Pool) *readerSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := &readerSet{writer: writer}
	for _, a := range s.addrs {
		n := s.nodes[a]
		if n == writer {
			continue
		}
		r := s.readMap[n]
		if r == nil {
			r = &reader{pool: n}
			s.readMap[n] = r
		}
		set.nodes = append(set.nodes, r)
	}
	s.readers.Store(set)
	return set
}

// usable reports whether reads may go to r now: it is healthy, or it has
// been left out for readerPause and this caller is the one read that
// tries it again (the others go on skipping it until that read succeeds).
func (r *reader) usable(now int64) bool {
	d := r.downUntil.Load()
	switch {
	case d == 0:
		return true
	case now < d:
		return false
	}
	return r.downUntil.CompareAndSwap(d, now+int64(readerPause))
}

// ok notes that r (if not nil) served a read.
func (r *reader) ok() {
	if r != nil && r.downUntil.Load() != 0 {
		r.downUntil.Store(0)
	}
}

// fail leaves r out of the readers for readerPause, or longer if it is
// left out longer already (cannotReach).
func (r *reader) fail() {
	if until := time.Now().Add(readerPause).UnixNano(); r.downUntil.Load() < until {
		r.downUntil.Store(until)
	}
}

// nodeLocked returns the node (its connection pool) for addr, adding it to the known nodes if it
// is new. s.mu is held.
func (s *Store) nodeLocked(addr string) *transport.Pool {
	n, ok := s.nodes[addr]
	if !ok {
		n = transport.NewPool(addr, s.cfg.PoolSize, s.connCfg)
		s.nodes[addr] = n
		s.addrs = append(s.addrs, addr)
		s.readers.Store(nil) // a node to read from, or the writer itself
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
