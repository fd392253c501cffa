package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// faultNet is the network the fault tests control. Every connection a node
// or a test client opens is dialled through it and tagged (from, to): a
// node's index, or clientBase+k for the tests' clients. Node listeners
// accept directly: since every connection was dialled by someone through
// faultNet, wrapping the dialling side is enough.
//
// A link (from, to) is one direction of reachability: cutting it fails the
// connections from dialled to, and their new dials, while connections
// dialled the other way keep working (to can still reach from). Three
// faults:
//   - refuse: existing connections on the link are closed, dials fail at
//     once, reads and writes fail (a crashed peer, a firewall REJECT);
//   - drop: dials hang until their deadline, writes vanish, reads deliver
//     nothing (a black hole);
//   - hold: dials, reads and writes wait until the link heals, then go
//     on with what was sent (a paused process: its peers' requests are
//     served when it wakes, which is when a deposed leader could answer
//     stale).
//
// plus delay (each write waits d first). Randomness comes from a seeded
// source, so a schedule's choices replay.
type faultNet struct {
	mu     sync.Mutex
	cond   *sync.Cond // signalled when links heal
	rng    *rand.Rand
	addrs  map[string]int
	faults map[link]fault
	delays map[link]time.Duration
	conns  map[*faultConn]struct{}
	dials  int64
}

// clientBase is the "from" index of the tests' first client.
const clientBase = 100

type link struct{ from, to int }

type fault uint8

const (
	faultNone fault = iota
	faultRefuse
	faultDrop
	faultHold
	// faultHoldReads lets writes through but holds reads until the link
	// heals: the peer gets the requests and answers at once, and the
	// answers reach the dialling node only later (answers in flight across
	// a process pause).
	faultHoldReads
)

func (f fault) String() string {
	return [...]string{"none", "refuse", "drop", "hold", "hold-reads"}[f]
}

var errCut = errors.New("faultnet: link cut")

func newFaultNet(seed int64) *faultNet {
	f := &faultNet{
		rng:    rand.New(rand.NewSource(seed)),
		addrs:  map[string]int{},
		faults: map[link]fault{},
		delays: map[link]time.Duration{},
		conns:  map[*faultConn]struct{}{},
	}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// intn is the schedule's seeded random source.
func (f *faultNet) intn(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Intn(n)
}

// register names the node listening on addr. Connections already dialled
// to addr (while the cluster formed, before its addresses were known) are
// tagged too: left as -1 they would carry raft's pooled traffic past every
// fault.
func (f *faultNet) register(addr string, node int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs[addr] = node
	for c := range f.conns {
		if c.addr == addr {
			c.l.to = node
		}
	}
}

// state returns the fault and delay of link (from, to). Caller holds mu.
func (f *faultNet) state(l link) (fault, time.Duration) {
	return f.faults[l], f.delays[l]
}

// dialer returns the Dialer of node or client from.
func (f *faultNet) dialer(from int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.mu.Lock()
		to, ok := f.addrs[addr]
		if !ok {
			to = -1
		}
		l := link{from, to}
		f.dials++
		for {
			switch flt, _ := f.state(l); flt {
			case faultRefuse:
				f.mu.Unlock()
				return nil, fmt.Errorf("dial %s: %w (refused)", addr, errCut)
			case faultDrop, faultHold:
				if err := f.waitHeal(ctx, l); err != nil {
					f.mu.Unlock()
					return nil, fmt.Errorf("dial %s: %w", addr, err)
				}
				continue
			}
			break
		}
		f.mu.Unlock()
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		fc := &faultConn{Conn: c, net: f, addr: addr}
		f.mu.Lock()
		if to, ok := f.addrs[addr]; ok { // registered while dialling
			l.to = to
		}
		fc.l = l
		f.conns[fc] = struct{}{}
		f.mu.Unlock()
		return fc, nil
	}
}

// waitHeal waits (mu held) until link l has no fault, ctx ends or, with a
// nil ctx, forever. It wakes on heal via cond and polls ctx.
func (f *faultNet) waitHeal(ctx context.Context, l link) error {
	if ctx != nil {
		stop := context.AfterFunc(ctx, func() {
			f.mu.Lock()
			f.cond.Broadcast()
			f.mu.Unlock()
		})
		defer stop()
	}
	for f.faults[l] != faultNone {
		if ctx != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		f.cond.Wait()
	}
	return nil
}

// set applies flt to link l, closing the link's connections for refuse.
func (f *faultNet) set(l link, flt fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if flt == faultNone {
		delete(f.faults, l)
		f.cond.Broadcast()
		return
	}
	f.faults[l] = flt
	if flt == faultRefuse {
		for c := range f.conns {
			if c.l == l {
				c.Conn.Close()
			}
		}
	}
	f.cond.Broadcast()
}

// cut applies flt between a and b in both directions.
func (f *faultNet) cut(a, b int, flt fault) {
	f.set(link{a, b}, flt)
	f.set(link{b, a}, flt)
}

// isolate applies flt to every link between node i and the others in
// nodes, and, when clients is true, between i and the clients too.
func (f *faultNet) isolate(i int, nodes []int, clients []int, flt fault) {
	for _, j := range nodes {
		if j != i {
			f.cut(i, j, flt)
		}
	}
	for _, c := range clients {
		f.set(link{c, i}, flt)
	}
}

// delay makes every write on link l wait d.
func (f *faultNet) delay(l link, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d == 0 {
		delete(f.delays, l)
	} else {
		f.delays[l] = d
	}
}

// healAll removes every fault and delay.
func (f *faultNet) healAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = map[link]fault{}
	f.delays = map[link]time.Duration{}
	f.cond.Broadcast()
}

// newFaultCluster starts an n-node test cluster whose nodes dial through a
// new faultNet (seeded 1), node i as i; tweak, when set, adjusts node i's
// configuration.
func newFaultCluster(t testing.TB, n int, tweak func(i int, c *Config)) (*testCluster, *faultNet) {
	fn := newFaultNet(1)
	tc := newTestCluster(t, n, func(c *Config) {
		i, _ := strconv.Atoi(strings.TrimPrefix(c.ID, "n"))
		c.Dialer = fn.dialer(i - 1)
		if tweak != nil {
			tweak(i-1, c)
		}
	})
	t.Cleanup(fn.closeAll)
	for i, node := range tc.nodes {
		fn.register(node.Addr(), i)
	}
	return tc, fn
}

// closeAll closes every connection the layer made (test end).
func (f *faultNet) closeAll() {
	f.healAll()
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Conn.Close()
	}
}

// faultConn is a dialled connection to addr on link l (l is guarded by
// net.mu: register may tag it later).
type faultConn struct {
	net.Conn
	net  *faultNet
	addr string
	l    link

	dmu      sync.Mutex // guards the deadlines, remembered so holds honour them
	rdl, wdl time.Time
}

func (c *faultConn) readDeadline() time.Time {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.rdl
}

func (c *faultConn) writeDeadline() time.Time {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.wdl
}

func (c *faultConn) SetDeadline(t time.Time) error {
	c.dmu.Lock()
	c.rdl, c.wdl = t, t
	c.dmu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *faultConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	c.rdl = t
	c.dmu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *faultConn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	c.wdl = t
	c.dmu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// gate applies the link's fault before a read or write: an error for
// refuse, a wait (within deadline) for hold; it reports whether the data
// should vanish (drop) and the delay to apply.
func (c *faultConn) gate(deadline time.Time, read bool) (drop bool, d time.Duration, err error) {
	f := c.net
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		flt, dl := f.state(c.l)
		if flt == faultHoldReads && !read {
			flt = faultNone
		}
		switch flt {
		case faultRefuse:
			return false, 0, errCut
		case faultDrop:
			return true, 0, nil
		case faultHold, faultHoldReads:
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if !deadline.IsZero() {
				ctx, cancel = context.WithDeadline(ctx, deadline)
			}
			err := f.waitHeal(ctx, c.l)
			cancel()
			if err != nil {
				return false, 0, os.ErrDeadlineExceeded
			}
			continue
		}
		return false, dl, nil
	}
}

func (c *faultConn) Read(p []byte) (int, error) {
	for {
		if _, _, err := c.gate(c.readDeadline(), true); err != nil {
			if errors.Is(err, errCut) {
				c.Conn.Close()
			}
			return 0, err
		}
		n, err := c.Conn.Read(p)
		if n == 0 || err != nil {
			return n, err
		}
		drop, _, gerr := c.gate(c.readDeadline(), true)
		if errors.Is(gerr, errCut) {
			c.Conn.Close()
			return 0, gerr
		}
		if drop {
			continue // what arrives while the link is black-holed is lost
		}
		return n, nil // a hold that timed out still delivers what was read
	}
}

func (c *faultConn) Write(p []byte) (int, error) {
	drop, d, err := c.gate(c.writeDeadline(), false)
	if err != nil {
		if errors.Is(err, errCut) {
			c.Conn.Close()
		}
		return 0, err
	}
	if drop {
		return len(p), nil
	}
	if d > 0 {
		time.Sleep(d)
	}
	return c.Conn.Write(p)
}

func (c *faultConn) Close() error {
	c.net.mu.Lock()
	delete(c.net.conns, c)
	c.net.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite half-closes (Kado JSON requests).
func (c *faultConn) CloseWrite() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return nil
}
