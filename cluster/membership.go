package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

const clusterIDFile = "cluster-id"

// adminRequest is the JSON body of a transport.OpAdmin request.
type adminRequest struct {
	Op        string `json:"op"`
	User      string `json:"user,omitempty"`
	ID        string `json:"id,omitempty"`
	Address   string `json:"address,omitempty"`
	ClusterID string `json:"cluster_id,omitempty"`
	Term      uint64 `json:"term,omitempty"`  // read_index: the asking follower's term
	By        string `json:"by,omitempty"`    // removed: the leader that removed the node
	Index     uint64 `json:"index,omitempty"` // removed: the log index of the configuration without it
	Nonce     string `json:"nonce,omitempty"` // revoke_user: the same for every retry of one call (revokeID)
}

// termReply answers {"op":"term"}: the node's current raft term, which
// a leader's read confirmation round asks every voter for (readIndex).
type termReply struct {
	Term       uint64 `json:"term"`
	ID         string `json:"id"`
	LogVersion int    `json:"log_version,omitempty"` // logversion.go
}

// askTerm asks the member id at addr for its current raft term. An answer
// from another node (an address reused, a member replaced) is an error.
func (n *Node) askTerm(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) (uint64, error) {
	r, err := n.termOf(ctx, id, addr)
	if err != nil {
		return 0, err
	}
	n.contacts.seen(addr, time.Now())
	return r.Term, nil
}

// termOf asks the member id at addr for its term reply, and notes the log
// version it reports (logversion.go). An answer from another node is an
// error.
func (n *Node) termOf(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) (termReply, error) {
	var r termReply
	body, err := n.adminCall(ctx, string(addr), []byte(`{"op":"term"}`))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("term reply from %s: %w", addr, err)
	}
	if r.ID != string(id) {
		return r, fmt.Errorf("term asked of %s at %s, answered by %q", id, addr, r.ID)
	}
	n.versions.seen(id, addr, r.LogVersion)
	return r, nil
}

// JoinReply answers a join.
type JoinReply struct {
	ClusterID string `json:"cluster_id"`
	LeaderID  string `json:"leader_id"`
	Changed   bool   `json:"changed"` // false: the node was already a member as asked
}

// NodeStatus is one member as the cluster status reports it.
type NodeStatus struct {
	ID          string `json:"id"`
	Address     string `json:"address"`
	State       string `json:"state"` // leader, follower, candidate or unreachable
	Voter       bool   `json:"voter"`
	LastContact string `json:"last_contact,omitempty"`
	// Applied, Term and Sessions are the member's own figures: zero for a
	// member that did not answer (State "unreachable", Error says why).
	Applied  uint64 `json:"applied_index"`
	Term     uint64 `json:"term"`
	Sessions int    `json:"sessions"`
	// Lag is how many log entries the leader has applied that this member
	// has not (a member falling behind, or catching up); absent when the
	// member or the leader did not answer.
	Lag   *uint64 `json:"lag,omitempty"`
	Error string  `json:"error,omitempty"`
	// LogFailure: the member answers but cannot write its raft log (a
	// full disk), so it cannot help commit; it counts as a failure in
	// ClusterStatus.FailuresLeft.
	LogFailure string `json:"log_failure,omitempty"`
	// LogVersion is the newest raft log version the member applies (its
	// build's; 0: a build that does not say, or it did not answer).
	LogVersion int `json:"log_version,omitempty"`
	// AppliedEarlier is the member's Status.AppliedEarlier: what it had
	// applied 10 s ago (the leader's says who is Behind).
	AppliedEarlier uint64 `json:"applied_index_10s_ago,omitempty"`
	// Behind: the member answers, but has not applied what the leader had
	// applied 10 s ago (stuck, or catching up slowly), so it cannot help
	// commit; it counts as a failure in ClusterStatus.FailuresLeft.
	Behind string `json:"behind,omitempty"`
}

// ClusterStatus is the whole cluster as one node sees it.
type ClusterStatus struct {
	ClusterID string       `json:"cluster_id"`
	LeaderID  string       `json:"leader_id"`
	Leader    string       `json:"leader_address"`
	Nodes     []NodeStatus `json:"nodes"`
	// Voters, how many of them answered, the quorum, and how many more may
	// fail before it is lost (negative: how many must come back), for
	// scripts and alerts (the table of kadosession status shows them).
	Voters          int `json:"voters"`
	VotersReachable int `json:"voters_reachable"`
	Quorum          int `json:"quorum"`
	FailuresLeft    int `json:"failures_tolerated"`
	// NotMember is set when the node asked knows it is not a member (its
	// readiness says so too): removed, maybe before the configuration
	// admitting it ever reached it (Nodes is then empty), or not in the
	// configuration it knows. Nodes is then this node's view, not the
	// cluster's.
	NotMember bool `json:"not_member,omitempty"`
}

// loadClusterID returns the id of the cluster this data directory belongs
// to, or "" when it belongs to none yet.
func loadClusterID(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, clusterIDFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read cluster id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func saveClusterID(dir, id string) error {
	return writeFileAtomic(filepath.Join(dir, clusterIDFile), []byte(id+"\n"))
}

// ClusterID returns the id of the cluster this node belongs to ("" while a
// joining node has not learnt it yet).
func (n *Node) ClusterID() string {
	if p := n.clusterID.Load(); p != nil {
		return *p
	}
	return ""
}

func (n *Node) setClusterID(id string) { n.clusterID.Store(&id) }

func newClusterID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// adminOnly refuses op (a membership change, a backup or a restore) to a
// client that presented the client token where a peer token sets admin
// requests apart (transport.AdminAllowed).
func adminOnly(ctx context.Context, op string) error {
	if transport.AdminAllowed(ctx) {
		return nil
	}
	return transport.Errorf(transport.CodeUnauthorized, "unauthorized: %s is an admin request, and this node's client token does not admit those: give the admin command the peer token (the file of the nodes' --peer-token-file)", op)
}

// adminJSON answers cluster administration requests: status (this node),
// cluster (every member), join and remove (on the leader; a follower
// forwards them).
func (n *Node) adminJSON(ctx context.Context, body []byte) ([]byte, error) {
	var req adminRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, transport.Errorf(transport.CodeBadRequest, "admin request is not a JSON object with an \"op\": %v", err)
	}
	switch req.Op {
	case "status":
		return json.Marshal(n.Status())
	case "ready":
		return json.Marshal(n.Readiness()) // /readyz's answer, for kadosession health
	case "cluster":
		return json.Marshal(n.ClusterStatus(ctx))
	case "term":
		return json.Marshal(termReply{Term: n.raft.CurrentTerm(), ID: n.id, LogVersion: n.ownLogVersion()})
	case "removed":
		return n.adminRemoved(ctx, req)
	case "read_index":
		return n.adminReadIndex(ctx, req) // cluster/follower_read.go
	case "list":
		return n.adminList(ctx, body) // cluster/list.go
	case "join", "remove", "user_sessions", "revoke_user":
		if req.Op == "join" || req.Op == "remove" {
			if err := adminOnly(ctx, req.Op); err != nil {
				return nil, err
			}
		}
		if err := n.awaitLeader(ctx); err != nil {
			return nil, err
		}
		if n.raft.State() != raft.Leader {
			if transport.FromPeer(ctx) {
				return nil, notLeader(n.raft)
			}
			if resp, forwarded, err := n.forward(ctx, &transport.Request{Op: transport.OpAdmin, Data: body}); forwarded {
				return resp.Data, err
			}
		}
		switch req.Op {
		case "user_sessions":
			sids, err := n.UserSessions(ctx, req.User)
			if err != nil {
				return nil, err
			}
			return json.Marshal(map[string]any{"user": req.User, "sessions": sids})
		case "revoke_user":
			id, err := revokeID(req.Nonce, req.User)
			if err != nil {
				return nil, err
			}
			count, err := n.revokeUser(ctx, req.User, id)
			if err != nil {
				return nil, err
			}
			return json.Marshal(map[string]any{"user": req.User, "revoked": count})
		}
		if req.Op == "join" {
			reply, err := n.Join(ctx, req.ID, req.Address, req.ClusterID)
			if err != nil {
				return nil, err
			}
			return json.Marshal(reply)
		}
		// A repeated remove needs no nonce: Remove answers one of a node
		// it removed lately as done (noteRemoved).
		if err := n.Remove(ctx, req.ID); err != nil {
			return nil, err
		}
		return []byte(`{"removed":` + quote(req.ID) + `}`), nil
	}
	return nil, transport.Errorf(transport.CodeBadRequest, "unknown admin op %q (want status, ready, cluster, join, remove, user_sessions, revoke_user or list)", req.Op)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Join adds a voter, idempotently: the same id at the same address is a
// no-op; a known id at a new address, or a known address under a new id,
// replaces the old entry. A node that holds another cluster's data
// (clusterID set and different) is refused. Leader only.
func (n *Node) Join(ctx context.Context, id, addr, clusterID string) (JoinReply, error) {
	reply := JoinReply{ClusterID: n.ClusterID(), LeaderID: n.id}
	if err := validateID(id); err != nil {
		return reply, transport.Errorf(transport.CodeBadRequest, "join refused: %v", err)
	}
	if err := checkPeerAddr(addr); err != nil {
		return reply, transport.Errorf(transport.CodeBadRequest, "join refused: %v", err)
	}
	if err := n.sameCluster(id, clusterID); err != nil {
		return reply, err
	}
	n.memberMu.Lock()
	defer n.memberMu.Unlock()
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return reply, applyError(err, n.raft)
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id && string(s.Address) == addr {
			return reply, nil
		}
	}
	version, err := n.checkJoiner(ctx, id, addr)
	if err != nil {
		return reply, err
	}
	for _, s := range f.Configuration().Servers {
		sameID, sameAddr := string(s.ID) == id, string(s.Address) == addr
		switch {
		case sameID || sameAddr:
			if s.ID == raft.ServerID(n.id) {
				return reply, transport.Errorf(transport.CodeBadRequest,
					"join refused: %s is the leader's own %s; pick another", map[bool]string{true: id, false: addr}[sameID], map[bool]string{true: "id", false: "address"}[sameID])
			}
			if sameID {
				if err := n.checkReplaced(ctx, id, string(s.Address)); err != nil {
					return reply, err
				}
			}
			n.log.Info("replacing member before join", "old_id", s.ID, "old_address", s.Address, "id", id, "address", addr)
			if err := n.raft.RemoveServer(s.ID, 0, remaining(ctx)).Error(); err != nil {
				return reply, applyError(err, n.raft)
			}
		}
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, remaining(ctx)).Error(); err != nil {
		return reply, applyError(err, n.raft)
	}
	n.log.Info("node joined", "id", id, "address", addr)
	n.versions.seen(raft.ServerID(id), raft.ServerAddress(addr), version)
	reply.Changed = true
	return reply, nil
}

// checkJoiner asks the node joining as id at addr who it is, and the log
// version it applies, before it becomes a voter: a voter nobody can reach
// counts against the quorum, so a mistyped address given to 'kadosession
// join' took a three-node cluster's fault tolerance to zero. An address
// that does not answer is CodeUnavailable (a joining node retries); one
// that answers with another id, or an older build, is refused.
func (n *Node) checkJoiner(ctx context.Context, id, addr string) (version int, err error) {
	cctx, cancel := context.WithTimeout(ctx, n.peerWait(3*time.Second))
	defer cancel()
	st, err := n.peerStatus(cctx, addr)
	if errors.Is(err, transport.ErrHTTPPort) {
		// A wrong address, not a node still starting: refused at once.
		return 0, transport.Errorf(transport.CodeBadRequest, "join refused: %v", err)
	}
	if err != nil {
		return 0, transport.Errorf(transport.CodeUnavailable, "join refused: no node answers at %s (%v): start the node first (a node started with --join joins by itself), or check the address", addr, err)
	}
	if st.ID != id {
		return 0, transport.Errorf(transport.CodeBadRequest, "join refused: the node at %s is %q, not %q", addr, st.ID, id)
	}
	// It would stop at the first entry of a newer version it applies, and
	// the log or snapshot it is sent may hold one (logversion.go).
	if st.LogVersion < n.ownLogVersion() {
		return 0, transport.Errorf(transport.CodeBadRequest, "join refused: node %s runs an older build (raft log version %d; this cluster's leader applies version %d): start it from the leader's build", id, st.LogVersion, n.ownLogVersion())
	}
	// What the node says of itself, for 'kadosession join', whose request
	// carries no cluster id: added, a node leading a cluster of its own
	// took this cluster's snapshot over its sessions.
	return st.LogVersion, n.sameCluster(id, st.ClusterID)
}

// checkReplaced refuses to move member id away from oldAddr while a node
// still serves there as that id, advertising oldAddr: two processes would
// share the id (a second node started with a member's --id, or with a copy
// of its data directory), and the running member would be dropped from the
// cluster without a word. A member restarted on a new port no longer
// answers at the old one (or answers there with its new address, when only
// its --advertise changed), and is moved as before.
func (n *Node) checkReplaced(ctx context.Context, id, oldAddr string) error {
	cctx, cancel := context.WithTimeout(ctx, n.peerWait(time.Second))
	defer cancel()
	st, err := n.peerStatus(cctx, oldAddr)
	if err != nil || st.ID != id || st.Address != oldAddr {
		return nil
	}
	return transport.Errorf(transport.CodeBadRequest,
		"join refused: node %s is a member at %s, and it is still running there: two nodes cannot share an id; start the new node with another --id (and an empty --data: a copied data directory carries its node's id), or stop the node at %s first to move %s to the new address",
		id, oldAddr, oldAddr, id)
}

// sameCluster refuses a joining node id that holds the data of another
// cluster (clusterID set and not this one's).
func (n *Node) sameCluster(id, clusterID string) error {
	if clusterID == "" || clusterID == n.ClusterID() {
		return nil
	}
	return transport.Errorf(transport.CodeBadRequest,
		"join refused: node %s holds the data of cluster %s, and this is cluster %s; to join it, stop it and start it with an empty --data directory (its sessions will come from this cluster)",
		id, clusterID, n.ClusterID())
}

// Remove takes a member out of the cluster. Leader only.
func (n *Node) Remove(ctx context.Context, id string) error {
	n.memberMu.Lock()
	defer n.memberMu.Unlock()
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return applyError(err, n.raft)
	}
	if id == n.id && n.raft.State() == raft.Leader && votersIn(f.Configuration()) > 1 {
		return n.removeSelf(ctx)
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			if s.Suffrage == raft.Voter && votersIn(f.Configuration()) == 1 {
				return transport.Errorf(transport.CodeBadRequest, "%s is the cluster's only voter: a cluster cannot lose its last one; stop the node instead", id)
			}
			f := n.raft.RemoveServer(s.ID, 0, remaining(ctx))
			if err := f.Error(); err != nil {
				return applyError(err, n.raft)
			}
			n.log.Info("node removed", "id", id)
			n.noteRemoved(id)
			go n.tellRemoved(s.ID, s.Address, f.Index())
			return nil
		}
		ids = append(ids, string(s.ID))
	}
	if at, ok := n.removedAt[id]; ok && time.Since(at) < removedMemory {
		// This node removed it moments ago: the request is a resend of
		// that remove (a follower forwarding a remove of the leader sends
		// it again to the successor, which the removed leader had asked
		// to remove it; a client retries one whose answer was lost).
		return nil
	}
	return transport.Errorf(transport.CodeBadRequest, "no node %q in the cluster (members: %s)", id, strings.Join(ids, ", "))
}

// removedMemory is how long a node answers a remove of a node it removed
// as done, not as "no node".
const removedMemory = time.Minute

// noteRemoved records that this node removed id now; memberMu is held.
func (n *Node) noteRemoved(id string) {
	now := time.Now()
	for k, at := range n.removedAt {
		if now.Sub(at) >= removedMemory {
			delete(n.removedAt, k)
		}
	}
	if n.removedAt == nil {
		n.removedAt = map[string]time.Time{}
	}
	n.removedAt[id] = now
}

// tellRemoved tells the node id at addr, just removed, that it was (best
// effort: it may be down): raft does not, and a removed node otherwise
// only logs, over and over, that it hears from no leader. It ends within
// seconds, or when the node stops (its closed forwarder fails the call).
func (n *Node) tellRemoved(id raft.ServerID, addr raft.ServerAddress, index uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(3*time.Second))
	defer cancel()
	body, _ := json.Marshal(adminRequest{Op: "removed", ID: string(id), By: n.id, Address: n.cfg.Advertise, ClusterID: n.ClusterID(), Index: index})
	if _, err := n.adminCall(ctx, string(addr), body); err != nil {
		n.log.Debug("could not tell the removed node", "id", id, "address", addr, "error", err)
	}
}

// strayNoticeEvery is how often a leader tells a node that asks for votes
// but is not in its configuration that it was removed.
const strayNoticeEvery = 10 * time.Second

// tellStrayVoters has the leader tell a node that asks for votes (raft's
// pre-vote or vote requests, observed on votes) without being in its
// configuration that it was removed. A member removed while it was down
// never heard the leader's notice (tellRemoved): restarted, it still
// listed itself, stood in elections for ever, and its readiness and
// health said an election was under way.
func (n *Node) tellStrayVoters(votes chan raft.Observation) {
	defer n.bg.Done()
	told := map[raft.ServerID]time.Time{}
	for {
		var o raft.Observation
		select {
		case <-n.stop:
			return
		case o = <-votes:
		}
		var h raft.RPCHeader
		switch r := o.Data.(type) {
		case raft.RequestVoteRequest:
			h = r.RPCHeader
		case raft.RequestPreVoteRequest:
			h = r.RPCHeader
		}
		id, addr := raft.ServerID(h.ID), raft.ServerAddress(h.Addr)
		if id == "" || addr == "" || n.raft.State() != raft.Leader || time.Since(told[id]) < strayNoticeEvery {
			continue
		}
		f := n.raft.GetConfiguration()
		if f.Error() != nil || slices.ContainsFunc(f.Configuration().Servers, func(s raft.Server) bool { return s.ID == id }) {
			continue
		}
		now := time.Now()
		for k, at := range told {
			if now.Sub(at) >= strayNoticeEvery {
				delete(told, k)
			}
		}
		told[id] = now
		n.log.Info("a node that is not a member asks for votes: telling it it was removed", "id", id, "address", addr)
		n.bg.Add(1)
		go func() {
			defer n.bg.Done()
			n.tellRemoved(id, addr, f.Index())
		}()
	}
}

// adminRemoved answers a leader's {"op":"removed"}: this node is no longer
// a member. It logs so, with how to bring it back.
func (n *Node) adminRemoved(ctx context.Context, req adminRequest) ([]byte, error) {
	if !transport.FromPeer(ctx) {
		return nil, transport.Errorf(transport.CodeBadRequest, "removed is sent by the leader to the node it removed")
	}
	if req.ID != n.id {
		return nil, transport.Errorf(transport.CodeBadRequest, "removed names %q, but this node is %q", req.ID, n.id)
	}
	if ours := n.ClusterID(); ours != "" && req.ClusterID != ours {
		// A node now at the removed one's address, or the same id in
		// another cluster: not the node that was removed. (One that has
		// not stored its cluster's id yet, its join's answer still on
		// the way, may well be: a node added and removed at once.)
		return nil, transport.Errorf(transport.CodeBadRequest, "removed comes from cluster %q, but this node is of cluster %q", req.ClusterID, ours)
	}
	last := n.raft.LastIndex()
	if req.Index != 0 && last > req.Index {
		// A notice that arrives late, after a join re-admitted the node:
		// the leader sent it nothing past its removal until then.
		return nil, transport.Errorf(transport.CodeBadRequest, "removed at log index %d, but this node holds entries up to %d, past it: re-admitted since", req.Index, last)
	}
	n.log.Warn(fmt.Sprintf("this node was removed from the cluster: it serves no requests until it is a member again "+
		"(kadosession join --cluster %s --id %s --address %s re-admits it; a node removed for good should be stopped, "+
		"and not restarted with --join, which asks to be admitted again)", req.Address, n.id, n.cfg.Advertise),
		"by", req.By, "leader", req.Address, "id", n.id)
	if req.Index == 0 { // a leader that does not say: what this node holds now
		req.Index = last
	}
	n.removedUntil.Store(req.Index + 1)
	return []byte(`{}`), nil
}

// removeSelf removes this node, the leader, from the cluster: it hands
// leadership to another voter and has the new leader remove it. A leader
// that removed itself had raft shut down (raft.Config.ShutdownOnRemove): the
// process went on running with nothing to serve, and a later join could not
// bring it back without a restart. Removed this way it stays a running
// follower outside the cluster, which join can re-admit. memberMu is held.
func (n *Node) removeSelf(ctx context.Context) error {
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		return applyError(err, n.raft)
	}
	if _, err := n.awaitNewLeader(ctx, raft.ServerAddress(n.cfg.Advertise)); err != nil {
		return transport.Errorf(transport.CodeTimeout, "removing the leader %s: leadership was handed over, but no new leader was known in time (%v); run remove again", n.id, err)
	}
	body, _ := json.Marshal(adminRequest{Op: "remove", ID: n.id})
	resp, _, err := n.forward(ctx, &transport.Request{Op: transport.OpAdmin, Data: body})
	if err == nil && resp.Err != nil {
		err = resp.Err
	}
	if err != nil {
		return err
	}
	n.log.Info("this node was removed from the cluster after handing leadership over; stop it, or re-admit it with kadosession join", "id", n.id)
	return nil
}

func checkPeerAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v (want HOST:PORT)", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() || port == "0" {
		return fmt.Errorf("address %q is not one peers can reach", addr)
	}
	return nil
}

func remaining(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return time.Until(d)
	}
	return 10 * time.Second
}

// ClusterStatus asks every member for its status, in parallel, each within
// a second (peerWait: longer with longer raft timeouts); a member that does
// not answer is "unreachable".
func (n *Node) ClusterStatus(ctx context.Context) ClusterStatus {
	addr, id := n.raft.LeaderWithID()
	out := ClusterStatus{ClusterID: n.ClusterID(), LeaderID: string(id), Leader: string(addr), NotMember: n.notMember()}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return out
	}
	servers := f.Configuration().Servers
	out.Nodes = make([]NodeStatus, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		out.Nodes[i] = NodeStatus{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter, State: "unreachable"}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st Status
			if s.ID == raft.ServerID(n.id) {
				st = n.Status()
			} else {
				cctx, cancel := context.WithTimeout(ctx, n.peerWait(time.Second))
				defer cancel()
				var err error
				if st, err = n.peerStatus(cctx, string(s.Address)); err != nil {
					out.Nodes[i].Error = err.Error()
					return
				}
				if st.ID != string(s.ID) {
					out.Nodes[i].Error = fmt.Sprintf("the node at %s is %q, not %q", s.Address, st.ID, s.ID)
					return
				}
				if st.ClusterID != "" && out.ClusterID != "" && st.ClusterID != out.ClusterID {
					// Recovered without this node (peers.json), say: its
					// state, a leader's above all, is another cluster's.
					out.Nodes[i].Error = fmt.Sprintf("the node at %s belongs to cluster %s, not %s", s.Address, st.ClusterID, out.ClusterID)
					return
				}
			}
			out.Nodes[i].State = st.State
			out.Nodes[i].LastContact = st.LastContact
			out.Nodes[i].Applied = st.Applied
			out.Nodes[i].Term = st.Term
			out.Nodes[i].Sessions = st.Sessions
			out.Nodes[i].LogFailure = st.LogFailure
			out.Nodes[i].LogVersion = st.LogVersion
			out.Nodes[i].AppliedEarlier = st.AppliedEarlier
		}()
	}
	wg.Wait()
	sort.Slice(out.Nodes, func(a, b int) bool { return out.Nodes[a].ID < out.Nodes[b].ID })
	out.SetLags()
	for _, s := range out.Nodes {
		if s.Voter {
			out.Voters++
			if s.State != "unreachable" {
				out.VotersReachable++
			}
		}
	}
	out.Quorum = out.Voters/2 + 1
	out.FailuresLeft = out.VotersReachable - out.Quorum
	for _, s := range out.Nodes {
		if s.Voter && s.State != "unreachable" && (s.LogFailure != "" || s.Behind != "") {
			out.FailuresLeft-- // it answers, but cannot store or apply what it is sent
		}
	}
	return out
}

// SetLags sets each answering member's Lag from the leader's applied
// index, and Behind from what the leader had applied 10 s ago: the leader
// LeaderID names, or, when the node asked knows none (removed, or cut
// off), a member that reports leading. ClusterStatus calls it; kadosession
// status calls it again for an answer from a node that predates Lag.
func (cs *ClusterStatus) SetLags() {
	var leader *NodeStatus
	for i := range cs.Nodes {
		if cs.Nodes[i].State == "leader" && (leader == nil || cs.Nodes[i].ID == cs.LeaderID) {
			leader = &cs.Nodes[i]
		}
	}
	if leader == nil {
		return
	}
	for i := range cs.Nodes {
		if cs.Nodes[i].State != "unreachable" {
			lag := leader.Applied - min(cs.Nodes[i].Applied, leader.Applied)
			cs.Nodes[i].Lag = &lag
			cs.Nodes[i].Behind = behind(cs.Nodes[i].Applied, leader.AppliedEarlier, leader.Applied)
		}
	}
}

// joinLoop asks the nodes in Config.Join to admit this node until one does.
// A refusal that retrying cannot fix (another cluster's data) is fatal.
func (n *Node) joinLoop() error {
	backoff := 100 * time.Millisecond
	for {
		if n.isMember() {
			// A restarted member (maybe elected leader meanwhile): the
			// configuration it holds names it already. But it must be the
			// cluster --join names (checkJoinCluster), and it may have
			// been removed while it was down (rejoinUntilLed).
			n.log.Debug("already a member of the cluster; no join needed")
			if _, err := n.checkJoinCluster(0); err != nil {
				return err
			}
			return n.rejoinUntilLed()
		}
		if joined, err := n.askToJoin(func(addr string, err error) {
			hint := "will retry"
			if te := (*transport.Error)(nil); errors.As(err, &te) && te.Code == transport.CodeUnavailable {
				hint = "will retry; check that --join names a running member of the cluster"
			}
			n.log.Warn("join attempt failed; "+hint, "via", addr, "error", err)
		}); joined || err != nil {
			return err
		}
		select {
		case <-n.stop:
			return errors.New("stopped before joining")
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// rejoinUntilLed asks --join's nodes to admit this node, as a new node
// does, until one does, or, while they cannot be reached, until it hears
// from a leader (or leads). A member removed while it was down, or one
// that missed the entry removing it, still finds itself in its own log, and
// waited for a leader that never came: the leader sends a node outside its
// configuration nothing. For a member in good standing the join is a
// no-op. The join is asked before a leader is taken for an answer: a
// heartbeat the leader's replication sent just before removing the node
// could arrive after its restart, and it then never asked (CI, about 1
// run in 8 with -race).
func (n *Node) rejoinUntilLed() error {
	backoff := 500 * time.Millisecond
	for {
		if joined, err := n.askToJoin(func(addr string, err error) {
			n.log.Debug("asking to be admitted failed, will retry unless a leader is heard from", "via", addr, "error", err)
		}); joined || err != nil {
			return err
		}
		if n.hearsALeader() {
			return nil
		}
		select {
		case <-n.stop:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// askToJoin asks --join's nodes in turn to admit this node. joined is true
// once one did (or answered that it is a member already); err is a refusal
// retrying cannot fix. Other failures go to failed, and are retried by the
// caller.
func (n *Node) askToJoin(failed func(addr string, err error)) (joined bool, err error) {
	for _, addr := range n.cfg.Join {
		if addr == n.cfg.Advertise {
			continue
		}
		err := n.joinVia(addr)
		var te *transport.Error
		if errors.As(err, &te) && te.Code == transport.CodeNotLeader && te.Leader != "" && te.Leader != n.cfg.Advertise {
			err = n.joinVia(te.Leader) // peers do not forward for peers: go to the leader
		}
		if err == nil {
			return true, nil
		}
		if errors.As(err, &te) && te.Code == transport.CodeBadRequest {
			return false, err
		}
		failed(addr, err)
	}
	return false, nil
}

// member returns this node's entry in the latest configuration it knows,
// or an error when it cannot read it.
func (n *Node) member() (raft.Server, bool, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Server{}, false, err
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == n.id {
			return s, true, nil
		}
	}
	return raft.Server{}, false, nil
}

// memberList names the members of the latest configuration this node
// knows, for its log ("n1 (HOST:PORT), …"); empty when it cannot read it.
func (n *Node) memberList() string {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return ""
	}
	var out []string
	for _, s := range f.Configuration().Servers {
		out = append(out, fmt.Sprintf("%s (%s)", s.ID, s.Address))
	}
	return strings.Join(out, ", ")
}

// removed reports whether the latest configuration this node knows lacks
// its id altogether (a member under another address, after a restart on a
// new port, is not removed), or whether a leader told it it was removed
// and it holds no log entry past its removal (a join that re-admits it
// sends some). A configuration it cannot read says nothing.
func (n *Node) removed() bool {
	if n.toldRemoved() {
		return true
	}
	_, ok, err := n.member()
	return err == nil && !ok
}

// notMember reports whether this node knows it is not a member of the
// cluster: a leader told it it was removed, or, once it is ready, the
// configuration it knows lacks it. (One not yet admitted knows no
// configuration, and is not taken for removed before it is ready.)
// Readiness and ClusterStatus.NotMember say it alike.
func (n *Node) notMember() bool {
	return n.toldRemoved() || n.ready.Load() && n.removed()
}

// toldRemoved reports whether a leader told this node it was removed and it
// holds no log entry past its removal.
func (n *Node) toldRemoved() bool {
	until := n.removedUntil.Load()
	return until != 0 && n.raft.LastIndex() < until
}

// isMember reports whether the latest configuration this node knows names
// it at its advertised address.
func (n *Node) isMember() bool {
	s, ok, _ := n.member()
	return ok && string(s.Address) == n.cfg.Advertise
}

// checkJoinCluster asks the nodes in Config.Join which cluster they belong
// to until one answers, and returns an error (fatal to the node) when it is
// not this node's. A node started once without --join bootstraps a cluster
// of its own; started again with --join, it is a member of that one, and
// without this check it went on serving it alone, and the writes it took
// never reached the cluster --join named. confirmed is true when a node
// of --join answered that it is this node's cluster. With limit > 0 it
// gives up asking after limit: nobody answered, nothing was wrong.
func (n *Node) checkJoinCluster(limit time.Duration) (confirmed bool, err error) {
	backoff := 100 * time.Millisecond
	start := time.Now()
	for {
		asked := false
		for _, addr := range n.cfg.Join {
			if addr == n.cfg.Advertise {
				continue
			}
			asked = true
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			theirs, err := n.clusterOf(ctx, addr)
			cancel()
			switch {
			case err != nil:
				n.log.Warn("cannot check which cluster --join names; will retry", "via", addr, "error", err)
			case theirs != n.ClusterID():
				return false, transport.Errorf(transport.CodeBadRequest,
					"--join names cluster %s (via %s), but this node's data directory %s holds cluster %s, which it is a member of "+
						"(it bootstrapped a cluster of its own, started once without --join; or %s was recovered from a quorum loss "+
						"without it, with peers.json): to serve its own cluster, start it "+
						"without --join; to join %s, stop it, move %s away (kadosession backup first if its sessions matter) and start it "+
						"again with --join", theirs, addr, n.cfg.DataDir, n.ClusterID(), theirs, theirs, n.cfg.DataDir)
			default:
				return true, nil
			}
		}
		if !asked || limit > 0 && time.Since(start) >= limit {
			return false, nil // --join names only this node, or none of them answers
		}
		select {
		case <-n.stop:
			return false, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// clusterOf asks the node at addr which cluster it belongs to.
func (n *Node) clusterOf(ctx context.Context, addr string) (string, error) {
	st, err := n.peerStatus(ctx, addr)
	var te *transport.Error
	switch {
	case errors.As(err, &te):
		return "", err // unreachable, or the node's own error
	case err != nil || st.ClusterID == "":
		return "", fmt.Errorf("node %s did not say which cluster it belongs to", addr)
	}
	return st.ClusterID, nil
}

// adminCall sends the admin request body to the node at addr and returns
// its answer; an error the node answered with is returned as the error.
func (n *Node) adminCall(ctx context.Context, addr string, body []byte) ([]byte, error) {
	return adminAnswer(n.fwd.call(ctx, addr, &transport.Request{Op: transport.OpAdmin, Data: body}))
}

// adminAnswer is an admin response's body, or the error the node answered
// with.
func adminAnswer(resp transport.Response, err error) ([]byte, error) {
	if err == nil && resp.Err != nil {
		err = resp.Err
	}
	return resp.Data, err
}

// verifyPeerCluster lets raft open a connection to addr only once the node
// there has said which cluster it belongs to, and it is this one (or none
// yet: a node joining): hashicorp/raft's messages name no cluster, and a
// node of another cluster found at a member's address (a data directory
// recovered, restored or started afresh there) took this cluster's log and
// snapshot over its own. A node that does not answer in time is not dialed
// (raft retries later, as after a failed dial): while a node starts, the
// port is bound before the node serves, and a connection made then reached
// it before it could be asked. Raft keeps its connections, so a peer is
// asked when raft connects, not for every message. It has the time raft
// gives the dial (timeout, the transport's 5 s): capped at 1 s, a link
// where a new connection takes longer (80 ms round trips and a SYN sent
// again after 1 s) never carried raft, and the cluster never formed.
func (n *Node) verifyPeerCluster(addr string, timeout time.Duration) error {
	ours := n.ClusterID()
	if ours == "" {
		return nil // joining: the cluster's id comes with the join
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := n.peerStatusOnce(ctx, addr)
	if err != nil {
		return fmt.Errorf("asking the node at %s which cluster it belongs to: %w", addr, err)
	}
	if st.ClusterID != "" && st.ClusterID != ours {
		if last, ok := n.peerClusterWarned.Load(addr); !ok || time.Since(last.(time.Time)) > time.Minute {
			n.peerClusterWarned.Store(addr, time.Now())
			n.log.Error("refusing raft traffic to a node of another cluster: remove it from this cluster (kadosession remove), or start it on this cluster's data",
				"address", addr, "id", st.ID, "its_cluster", st.ClusterID, "cluster", ours)
		}
		return fmt.Errorf("the node at %s (%s) belongs to cluster %s, and this is cluster %s: no raft traffic goes to it", addr, st.ID, st.ClusterID, ours)
	}
	return nil
}

// peerStatusOnce is peerStatus on a connection of its own (forwarder.callOnce):
// for the checks made as raft dials and as a node starts, which must not
// slow the requests on the pooled connections.
func (n *Node) peerStatusOnce(ctx context.Context, addr string) (Status, error) {
	return decodeStatus(adminAnswer(n.fwd.callOnce(ctx, addr, &transport.Request{Op: transport.OpAdmin, Data: statusRequest})))
}

// peerStatus asks the node at addr for its status.
func (n *Node) peerStatus(ctx context.Context, addr string) (Status, error) {
	return decodeStatus(n.adminCall(ctx, addr, statusRequest))
}

// statusRequest ends in a newline: asked of an address given to join,
// which may be a node's --http port, it has an HTTP server answer at once
// (transport.ErrHTTPPort).
var statusRequest = transport.AdminProbe(`{"op":"status"}`)

func decodeStatus(body []byte, err error) (Status, error) {
	var st Status
	if err == nil {
		err = json.Unmarshal(body, &st)
	}
	return st, err
}

func (n *Node) joinVia(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if n.ClusterID() == "" {
		// Learn and keep the cluster's id before asking to be added, so a
		// crash in between cannot leave data of an unknown cluster.
		id, err := n.clusterOf(ctx, addr)
		if err != nil {
			return err
		}
		if err := saveClusterID(n.cfg.DataDir, id); err != nil {
			return err
		}
		n.setClusterID(id)
	}
	req, _ := json.Marshal(adminRequest{Op: "join", ID: n.id, Address: n.cfg.Advertise, ClusterID: n.ClusterID()})
	body, err := n.adminCall(ctx, addr, req)
	if err != nil {
		return err
	}
	var reply JoinReply
	if err := json.Unmarshal(body, &reply); err != nil {
		return fmt.Errorf("join answer from %s: %v", addr, err)
	}
	if reply.Changed {
		n.log.Info("joined the cluster", "cluster_id", reply.ClusterID, "leader", reply.LeaderID, "via", addr)
	} else {
		n.log.Info("already a member of the cluster", "cluster_id", reply.ClusterID, "via", addr)
	}
	return nil
}
