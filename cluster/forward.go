package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// forwarder carries requests a follower cannot serve to the leader, over a
// few pipelined connections per peer that live as long as the node.
type forwarder struct {
	cfg    transport.ConnConfig
	mu     sync.Mutex
	pools  map[string]*transport.Pool
	closed bool // after close: no new connections (a late call would leak its pool)
}

const forwardPoolSize = 4

func newForwarder(cfg transport.ConnConfig) *forwarder {
	return &forwarder{cfg: cfg, pools: map[string]*transport.Pool{}}
}

func (f *forwarder) pool(addr string) *transport.Pool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	p, ok := f.pools[addr]
	if !ok {
		p = transport.NewPool(addr, forwardPoolSize, f.cfg)
		f.pools[addr] = p
	}
	return p
}

// call sends req to addr and returns the response; a failure to reach the
// peer is CodeUnavailable naming it.
func (f *forwarder) call(ctx context.Context, addr string, req *transport.Request) (transport.Response, error) {
	p := f.pool(addr)
	if p == nil {
		return transport.Response{}, errCommitterStopped
	}
	conn, err := p.Get(ctx)
	if err == nil {
		var resp transport.Response
		resp, err = conn.RoundTrip(ctx, req)
		if err == nil {
			return resp, nil
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return transport.Response{}, transport.Errorf(transport.CodeTimeout, "%s to the node at %s: %v", req.Op, addr, err)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return transport.Response{}, err
	}
	if errors.Is(err, transport.ErrHTTPPort) {
		return transport.Response{}, httpPortError{transport.Errorf(transport.CodeUnavailable,
			"%s to %s: the server there %v: is that a node's --http (admin) port? Give its --listen port", req.Op, addr, transport.ErrHTTPPort)}
	}
	return transport.Response{}, transport.Errorf(transport.CodeUnavailable, "%s to the node at %s: %v", req.Op, addr, err)
}

// httpPortError is the forwarder's error for an address where an HTTP
// server answered: CodeUnavailable, as any peer it cannot reach (a node
// started with --join retries), and transport.ErrHTTPPort for a caller
// that knows the address is wrong rather than down (join's check of the
// address it is given).
type httpPortError struct{ te *transport.Error }

func (e httpPortError) Error() string   { return e.te.Error() }
func (e httpPortError) Unwrap() []error { return []error{e.te, transport.ErrHTTPPort} }

// callOnce sends req to addr on a connection of its own, closed after it:
// for a call that must not share, nor wait behind, the pooled connections'
// traffic (verifyPeerCluster, made as raft dials).
func (f *forwarder) callOnce(ctx context.Context, addr string, req *transport.Request) (transport.Response, error) {
	c, err := transport.Dial(ctx, addr, f.cfg)
	if err != nil {
		return transport.Response{}, err
	}
	defer c.Close()
	return c.RoundTrip(ctx, req)
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pools {
		p.Close()
	}
	f.pools = map[string]*transport.Pool{}
	f.closed = true
}

// forward sends req to the leader when this node is not the leader and
// reports whether it did; when it did not, the caller serves req itself. A successful forwarded response tells a native
// client where the leader is (transport.SetLeaderHint).
func (n *Node) forward(ctx context.Context, req *transport.Request) (resp transport.Response, forwarded bool, err error) {
	if n.raft.State() == raft.Leader {
		return resp, false, nil
	}
	addr, _ := n.raft.LeaderWithID()
	if addr == "" {
		return resp, true, notLeader(n.raft)
	}
	for {
		if string(addr) == n.cfg.Advertise {
			if n.raft.State() == raft.Leader {
				return resp, false, nil // we were elected meanwhile: serve it here
			}
			// Raft still names us while stepping down; do not loop.
			return resp, true, notLeader(n.raft)
		}
		resp, err = n.callWhileLeader(ctx, addr, req)
		if err == nil || !errors.Is(err, transport.ErrUnavailable) {
			break
		}
		// The leader we know is unreachable (it died, or we are cut off):
		// wait, within the request's deadline, for raft to name another,
		// then try that one. A client that cannot retry (Kado JSON) rides
		// through a failover this way.
		next, waitErr := n.awaitNewLeader(ctx, addr)
		if waitErr != nil {
			return resp, true, err
		}
		addr = next
	}
	if err != nil {
		return resp, true, err
	}
	if resp.Err != nil {
		return resp, true, resp.Err
	}
	transport.SetLeaderHint(ctx, string(addr))
	return resp, true, nil
}

// callWhileLeader forwards req to addr, giving up early (CodeUnavailable)
// if raft names another leader meanwhile: a leader that is frozen or cut off
// accepts connections but never answers, and the request should go to its
// successor instead of waiting out its deadline. Every request is
// idempotent, so sending it again is safe.
func (n *Node) callWhileLeader(ctx context.Context, addr raft.ServerAddress, req *transport.Request) (transport.Response, error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := n.leaderChanges()
	if cur, _ := n.raft.LeaderWithID(); cur != addr {
		return transport.Response{}, transport.Errorf(transport.CodeUnavailable, "the leader changed from %s", addr)
	}
	moved := make(chan struct{})
	go func() {
		select {
		case <-cctx.Done():
		case <-changed:
			if cur, _ := n.raft.LeaderWithID(); cur != addr {
				close(moved)
				cancel()
			}
		}
	}()
	resp, err := n.fwd.call(cctx, string(addr), req)
	select {
	case <-moved:
		if ctx.Err() == nil {
			return resp, transport.Errorf(transport.CodeUnavailable, "the leader at %s stopped answering and lost its leadership", addr)
		}
	default:
	}
	return resp, err
}

// leaderChanges returns a channel closed at the next change of leader that
// raft reports (see watchLeader).
func (n *Node) leaderChanges() <-chan struct{} {
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	return n.leaderCh
}

// watchLeader turns raft's leader observations into leaderChanges.
func (n *Node) watchLeader(obs chan raft.Observation) {
	defer n.bg.Done()
	for {
		select {
		case <-n.stop:
			return
		case o := <-obs:
			n.leaderMu.Lock()
			close(n.leaderCh)
			n.leaderCh = make(chan struct{})
			n.leaderMu.Unlock()
			lo, ok := o.Data.(raft.LeaderObservation)
			if !ok {
				continue
			}
			switch {
			case lo.LeaderAddr == "":
				n.leaderLostAt.CompareAndSwap(0, time.Now().UnixNano())
			default:
				n.leaderLostAt.Store(0)
			}
			// When this node took office, for kadosession_peer_last_contact_seconds.
			if lo.LeaderID == raft.ServerID(n.id) {
				n.ledSince.Store(time.Now().UnixNano())
			}
		}
	}
}

// awaitNewLeader polls until raft names a leader other than old.
func (n *Node) awaitNewLeader(ctx context.Context, old raft.ServerAddress) (raft.ServerAddress, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := n.raft.LeaderWithID(); addr != "" && addr != old {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-n.stop:
			return "", errCommitterStopped
		case <-t.C:
		}
	}
}
