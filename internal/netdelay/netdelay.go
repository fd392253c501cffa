// Package netdelay is a userspace TCP proxy that delays what it forwards, for
// trying a cluster over WAN-like links where the kernel has no netem: every
// chunk read from one side is written to the other a one-way delay (plus a
// random jitter) later, in order, both directions independently, so a
// request and its answer cost a round trip and pipelined traffic is not
// serialised behind the delay (unlike sleeping before each write). A
// bandwidth cap and stalls (the link holds everything for a while) are
// optional. Tests and cmd/delayproxy use it; kadosession itself does not.
package netdelay

import (
	"errors"
	"io"
	"math/rand"
	"net"
	"sync"
	"time"
)

// Link is how a Proxy treats the bytes it forwards. The zero Link forwards
// at once.
type Link struct {
	// Delay is the one-way delay added to each direction (half the added
	// round trip).
	Delay time.Duration
	// Jitter adds a uniformly random 0..Jitter to each chunk's delay; order
	// is kept (a chunk never overtakes the one before it, as on TCP).
	Jitter time.Duration
	// BytesPerSec, when positive, caps each direction's throughput.
	BytesPerSec int
	// StallEvery and StallFor, when both positive, hold each direction for
	// StallFor about every StallEvery (a link losing packets and waiting for
	// retransmits).
	StallEvery, StallFor time.Duration
	// ConnectDelay holds each new connection this long (beyond the round
	// trip of its handshake) before anything passes: a lost SYN, which TCP
	// sends again after a second.
	ConnectDelay time.Duration
}

// Proxy forwards connections accepted on its listener to Target through a
// Link. It is safe for concurrent use; SetLink changes the link of the
// chunks read from then on.
type Proxy struct {
	Target string

	ln    net.Listener
	mu    sync.Mutex
	link  Link
	rng   *rand.Rand
	conns map[net.Conn]struct{}
	done  bool
	wg    sync.WaitGroup
}

// Listen starts a proxy on addr (e.g. "127.0.0.1:0") forwarding to target
// through link, seeded for its jitter and stalls.
func Listen(addr, target string, link Link, seed int64) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Proxy{Target: target, ln: ln, link: link, rng: rand.New(rand.NewSource(seed)), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLink changes the link for data read from now on.
func (p *Proxy) SetLink(l Link) {
	p.mu.Lock()
	p.link = l
	p.mu.Unlock()
}

// Close stops accepting and closes every forwarded connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.done = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(in) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(in)
			// The dial itself crosses the link: a SYN and its answer.
			p.mu.Lock()
			l := p.link
			p.mu.Unlock()
			p.sleepUntil(time.Now().Add(2*l.Delay + l.ConnectDelay))
			out, err := net.DialTimeout("tcp", p.Target, 10*time.Second)
			if err != nil {
				return
			}
			if !p.track(out) {
				return
			}
			defer p.untrack(out)
			var both sync.WaitGroup
			both.Add(2)
			go func() { defer both.Done(); p.pipe(out, in) }()
			go func() { defer both.Done(); p.pipe(in, out) }()
			both.Wait()
		}()
	}
}

func (p *Proxy) sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

type chunk struct {
	b   []byte
	at  time.Time
	eof bool
}

// pipe copies src to dst, each chunk released at its due time.
func (p *Proxy) pipe(dst, src net.Conn) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		var last time.Time // due time of the previous chunk (order is kept)
		var stallEnd time.Time
		nextStall := time.Time{}
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			now := time.Now()
			p.mu.Lock()
			l := p.link
			due := now.Add(l.Delay)
			if l.Jitter > 0 {
				due = due.Add(time.Duration(p.rng.Int63n(int64(l.Jitter) + 1)))
			}
			if l.StallEvery > 0 && l.StallFor > 0 {
				if nextStall.IsZero() {
					nextStall = now.Add(time.Duration(p.rng.Int63n(int64(2 * l.StallEvery))))
				}
				if !now.Before(nextStall) {
					stallEnd = now.Add(l.StallFor)
					nextStall = now.Add(time.Duration(p.rng.Int63n(int64(2*l.StallEvery)) + 1))
				}
			}
			p.mu.Unlock()
			if due.Before(stallEnd) {
				due = stallEnd
			}
			if due.Before(last) {
				due = last
			}
			if l.BytesPerSec > 0 && n > 0 {
				due = due.Add(time.Duration(int64(n) * int64(time.Second) / int64(l.BytesPerSec)))
			}
			last = due
			if n > 0 {
				q <- chunk{b: buf[:n], at: due}
			}
			if err != nil {
				q <- chunk{at: due, eof: errors.Is(err, io.EOF)}
				return
			}
		}
	}()
	for c := range q {
		p.sleepUntil(c.at)
		if c.b == nil {
			if tc, ok := dst.(*net.TCPConn); ok && c.eof {
				_ = tc.CloseWrite() // pass a half-close on (Kado JSON requests)
			} else {
				dst.Close()
				src.Close()
			}
			break
		}
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			break
		}
	}
	for range q { // let the reader finish
	}
}
