package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// peerContacts records when each peer last answered this node while it led:
// the answers to read confirmation rounds (readIndex) and to probePeers.
// Peers share the node's one port with raft, so an answering peer is one
// raft can reach too.
type peerContacts struct {
	mu   sync.Mutex
	last map[raft.ServerAddress]time.Time
}

func newPeerContacts() *peerContacts {
	return &peerContacts{last: map[raft.ServerAddress]time.Time{}}
}

func (p *peerContacts) seen(addr raft.ServerAddress, at time.Time) {
	p.mu.Lock()
	if at.After(p.last[addr]) {
		p.last[addr] = at
	}
	p.mu.Unlock()
}

func (p *peerContacts) get(addr raft.ServerAddress) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.last[addr]
	return t, ok
}

// peerProbeInterval is how often a leader asks each member that has not
// answered it meanwhile for its term, so that last contact per peer stays
// current when no reads are confirming leadership.
const peerProbeInterval = time.Second

// probePeers runs for the node's life: while the node leads, every member
// not heard from for a probe interval is asked for its term.
func (n *Node) probePeers() {
	defer n.bg.Done()
	t := time.NewTicker(peerProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if n.raft.State() != raft.Leader {
			continue
		}
		f := n.raft.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		var wg sync.WaitGroup
		for _, s := range f.Configuration().Servers {
			if s.ID == raft.ServerID(n.id) {
				continue
			}
			if last, ok := n.contacts.get(s.Address); ok && time.Since(last) < peerProbeInterval {
				continue
			}
			wg.Add(1)
			go func(id raft.ServerID, addr raft.ServerAddress) {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(peerProbeInterval))
				defer cancel()
				// askTerm records the contact; a peer in a later term is
				// for raft itself to act on.
				_, _ = n.askTerm(ctx, id, addr)
			}(s.ID, s.Address)
		}
		wg.Wait()
	}
}
