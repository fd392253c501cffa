package cluster

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// followerReads serves linearizable reads on a follower from its own state,
// as etcd does: the follower asks the leader for a read index (the leader
// confirms its leadership with a quorum, readIndex.index), waits until its
// own state machine has applied that index, and reads locally. One request
// to the leader is shared by every read that arrived before it was sent, so
// a busy follower asks once per round trip, not once per read; and the
// session data never crosses the network twice, as a forwarded read's does.
type followerReads struct {
	n      *Node
	rounds rounds // read-index requests to the leader (ask)
}

// readIndexReply answers {"op":"read_index"}.
type readIndexReply struct {
	Index uint64 `json:"index"`
}

// index returns a read index for a read that arrived before the call:
// once this node has applied it, its state answers the read linearizably.
// On an error the caller forwards the read to the leader instead.
func (fr *followerReads) index(ctx context.Context) (uint64, error) {
	index, err := fr.rounds.join(ctx, transport.Arrived(ctx))
	if err != nil && ctx.Err() != nil && err == ctx.Err() {
		return 0, transport.Errorf(transport.CodeTimeout, "read timed out asking the leader for a read index: %v", err)
	}
	return index, err
}

// ask asks the leader raft names for a read index.
func (fr *followerReads) ask() (uint64, error) {
	n := fr.n
	addr, _ := n.raft.LeaderWithID()
	if addr == "" || string(addr) == n.cfg.Advertise {
		return 0, notLeader(n.raft)
	}
	// Our term, read now (after every read of this round arrived), is our
	// answer to the leader's confirmation round (readIndex.indexFor).
	body, err := json.Marshal(adminRequest{Op: "read_index", ID: n.id, Term: n.raft.CurrentTerm()})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(confirmTimeout))
	defer cancel()
	answer, err := n.adminCall(ctx, string(addr), body)
	if err != nil {
		return 0, err
	}
	var r readIndexReply
	if err := json.Unmarshal(answer, &r); err != nil {
		return 0, fmt.Errorf("read index reply from %s: %w", addr, err)
	}
	return r.Index, nil
}

// adminReadIndex answers a follower's {"op":"read_index","id":ID,"term":T}
// on the leader: the asking follower's id and its current term when it
// sent the request.
func (n *Node) adminReadIndex(ctx context.Context, req adminRequest) ([]byte, error) {
	if !n.ready.Load() {
		return nil, errStarting // still importing its save file
	}
	if n.raft.State() != raft.Leader {
		return nil, notLeader(n.raft)
	}
	index, err := n.reads.indexFor(ctx, raft.ServerID(req.ID), req.Term)
	if err != nil {
		return nil, err
	}
	return json.Marshal(readIndexReply{Index: index})
}
