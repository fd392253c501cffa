package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// clientFrom is the "from" of connections no node made (the workload's).
const clientFrom = -1

// link is one direction of reachability: connections node from opens to
// node to's proxy.
type link struct{ from, to int }

type fault uint8

const (
	faultNone   fault = iota
	faultRefuse       // connections closed, new ones refused
	faultDrop         // connections black-holed: bytes vanish
)

func (f fault) String() string { return [...]string{"none", "refuse", "drop"}[f] }

// network is the proxies between the nodes: node i advertises its proxy's
// address, so every connection to it (peers' raft and forwarding, clients)
// passes through the proxy, which tells who opened it by finding, in
// /proc, the process owning the connection's other end.
type network struct {
	mu     sync.Mutex
	faults map[link]fault
	pids   map[int]int // pid -> node index
	conns  map[*pipe]struct{}
	seen   map[int]int // connections accepted, by "from"
	lns    []net.Listener
	wg     sync.WaitGroup
}

func newNetwork() *network {
	return &network{faults: map[link]fault{}, pids: map[int]int{}, conns: map[*pipe]struct{}{}, seen: map[int]int{}}
}

// setPid records that node i runs as pid (after each start).
func (n *network) setPid(i, pid int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for p, j := range n.pids {
		if j == i {
			delete(n.pids, p)
		}
	}
	n.pids[pid] = i
}

func (n *network) set(l link, f fault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f == faultNone {
		delete(n.faults, l)
		return
	}
	n.faults[l] = f
	if f == faultRefuse {
		for p := range n.conns {
			if p.l == l {
				p.close()
			}
		}
	}
}

// cut applies f in both directions between a and b.
func (n *network) cut(a, b int, f fault) {
	n.set(link{a, b}, f)
	n.set(link{b, a}, f)
}

func (n *network) healAll() {
	n.mu.Lock()
	n.faults = map[link]fault{}
	n.mu.Unlock()
}

func (n *network) fault(l link) fault {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.faults[l]
}

// serve runs node to's proxy on ln, forwarding to target.
func (n *network) serve(ln net.Listener, to int, target string) {
	n.mu.Lock()
	n.lns = append(n.lns, ln)
	n.mu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go n.handle(c, to, target)
		}
	}()
}

func (n *network) handle(c net.Conn, to int, target string) {
	from := n.owner(c)
	l := link{from, to}
	n.mu.Lock()
	n.seen[from]++
	n.mu.Unlock()
	if n.fault(l) == faultRefuse {
		c.Close()
		return
	}
	u, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p := &pipe{l: l, a: c, b: u}
	n.mu.Lock()
	n.conns[p] = struct{}{}
	n.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); n.copy(p, u, c) }()
	go func() { defer wg.Done(); n.copy(p, c, u) }()
	wg.Wait()
	p.close()
	n.mu.Lock()
	delete(n.conns, p)
	n.mu.Unlock()
}

// copy moves bytes src → dst while the link allows: refuse closes the
// pipe, drop discards.
func (n *network) copy(p *pipe, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			switch n.fault(p.l) {
			case faultRefuse:
				p.close()
				return
			case faultDrop:
			default:
				if _, werr := dst.Write(buf[:k]); werr != nil {
					p.close()
					return
				}
			}
		}
		if err != nil {
			if err == io.EOF {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite() // pass half-closes on (Kado JSON)
					return
				}
			}
			p.close()
			return
		}
	}
}

// accepted describes how many connections each node (and the clients)
// opened through the proxies: a check that the owners are found.
func (n *network) accepted() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("from n1: %d, n2: %d, n3: %d, clients: %d", n.seen[0], n.seen[1], n.seen[2], n.seen[clientFrom])
}

// close stops every proxy and connection.
func (n *network) close() {
	n.mu.Lock()
	for _, ln := range n.lns {
		ln.Close()
	}
	for p := range n.conns {
		p.close()
	}
	n.mu.Unlock()
	n.wg.Wait()
}

type pipe struct {
	l    link
	a, b net.Conn
	once sync.Once
}

func (p *pipe) close() {
	p.once.Do(func() {
		p.a.Close()
		p.b.Close()
	})
}

// owner returns the node whose process opened c (the peer end of an
// accepted loopback connection), or clientFrom.
func (n *network) owner(c net.Conn) int {
	remote, ok := c.RemoteAddr().(*net.TCPAddr)
	local, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok || !ok2 {
		return clientFrom
	}
	inode := socketInode(remote.Port, local.Port)
	if inode == "" {
		return clientFrom
	}
	n.mu.Lock()
	pids := make(map[int]int, len(n.pids))
	for p, i := range n.pids {
		pids[p] = i
	}
	n.mu.Unlock()
	want := "socket:[" + inode + "]"
	for pid, i := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && l == want {
				return i
			}
		}
	}
	return clientFrom
}

// socketInode finds in /proc/net/tcp the socket whose local port is
// localPort and remote port remotePort, and returns its inode.
func socketInode(localPort, remotePort int) string {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return ""
	}
	defer f.Close()
	lp := fmt.Sprintf(":%04X", localPort)
	rp := fmt.Sprintf(":%04X", remotePort)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || !strings.HasSuffix(fs[1], lp) || !strings.HasSuffix(fs[2], rp) {
			continue
		}
		if _, err := strconv.Atoi(fs[9]); err == nil {
			return fs[9]
		}
	}
	return ""
}
