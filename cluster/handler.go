package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

var _ transport.Handler = (*Node)(nil)

// errStarting is answered while the node imports its save file or waits for
// its first leader.
var errStarting = transport.Errorf(transport.CodeUnavailable, "node is starting: retry shortly")

// wireError classifies fsm validation errors for the wire.
func wireError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fsm.ErrSessionTooLarge), errors.Is(err, fsm.ErrTooManyKeys):
		return &transport.Error{Code: transport.CodeTooLarge, Message: err.Error()}
	case errors.Is(err, fsm.ErrBadSID), errors.Is(err, fsm.ErrBadData), errors.Is(err, fsm.ErrBadKey):
		return &transport.Error{Code: transport.CodeBadRequest, Message: err.Error()}
	}
	return err
}

// awaitLeader waits, within ctx, until the node is ready and some leader is
// known, so that a request arriving during an election or at start-up is
// served when it ends instead of failing at once.
func (n *Node) awaitLeader(ctx context.Context) error {
	if n.leaderKnown() {
		return nil
	}
	if n.ready.Load() && n.removed() {
		// Removed: no leader will come. Waiting out the request's deadline
		// and then saying "retry shortly" sent clients round in circles.
		return errNotMember
	}
	// A single node whose log appends keep failing will not lead (it
	// steps down at its first append): waiting out the request's deadline
	// only hid the cause behind a timeout (the Go client's 5 s is shorter
	// than the node's 10 s). The error says it (explain). Where another
	// voter may win the election, or after a single failure, requests wait
	// as they always do.
	if n.failingAlone() {
		return notLeader(n.raft)
	}
	// Without a leader for many election timeouts, the cluster has lost
	// its quorum (or this node is cut off from it): a client waiting out
	// its deadline here learnt nothing in 5 s, and one with other nodes to
	// try was kept from them. Fail at once; an election that ends
	// meanwhile serves the client's next try.
	if err := n.noLeaderFor(); err != nil {
		return err
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if !n.ready.Load() {
				return errStarting
			}
			return notLeader(n.raft)
		case <-n.stop:
			return errCommitterStopped
		case <-t.C:
		}
		if n.leaderKnown() {
			return nil
		}
		if n.failingAlone() {
			return notLeader(n.raft)
		}
		if err := n.noLeaderFor(); err != nil {
			return err
		}
	}
}

// noLeaderFor returns an error saying how long this node has known no
// leader when that is longer than leaderlessBound, and nil otherwise (also
// before its first leader: start-up waits as before).
func (n *Node) noLeaderFor() error {
	lost := n.leaderLostAt.Load()
	if lost == 0 || !n.ready.Load() {
		return nil
	}
	since := time.Since(time.Unix(0, lost))
	if since < n.leaderlessBound() {
		return nil
	}
	return transport.Errorf(transport.CodeUnavailable,
		"no leader for %s: this node cannot reach a quorum of the cluster's voters, or they cannot elect one (see kadosession status); requests fail at once until a leader is elected",
		since.Round(100*time.Millisecond))
}

// leaderlessBound is how long a node goes without a leader before requests
// stop waiting for one: many election timeouts (an election on a busy
// machine ends well within it).
func (n *Node) leaderlessBound() time.Duration {
	return max(3*time.Second, 10*n.cfg.ElectionTimeout)
}

// failingAlone reports whether this node is its cluster's only voter and
// its log appends have failed more than once lately.
func (n *Node) failingAlone() bool {
	f := n.logHealth.recent()
	return f != nil && f.appends >= 2 && n.voters() <= 1
}

// errNotMember answers requests on a node removed from the cluster.
var errNotMember = transport.Errorf(transport.CodeUnavailable,
	"this node is not a member of the cluster (it was removed): send requests to a member, or re-admit it with kadosession join")

// leaderKnown reports whether the node is ready and knows a leader (itself
// or another).
func (n *Node) leaderKnown() bool {
	return n.ready.Load() && n.hearsALeader()
}

// hearsALeader reports whether raft on this node leads or knows a leader,
// ready or not.
func (n *Node) hearsALeader() bool {
	if n.raft.State() == raft.Leader {
		return true
	}
	addr, _ := n.raft.LeaderWithID()
	return addr != ""
}

// write validates nothing further: it submits cmd through the group
// committer on the leader.
func (n *Node) write(ctx context.Context, cmd fsm.Command, req *transport.Request) (fsm.Result, error) {
	if cmd.ID == (fsm.RequestID{}) {
		// One id for this write across every retry: the client's nonce, or
		// one made here for the retries this node makes itself.
		nonce, ok := transport.RequestNonce(ctx)
		if !ok {
			nonce = newNonce()
		}
		cmd.ID, req.Nonce = fsm.RequestID(nonce), nonce
	}
	if err := n.awaitLeader(ctx); err != nil {
		return fsm.Result{}, err
	}
	if n.raft.State() != raft.Leader {
		if transport.FromPeer(ctx) {
			// A peer forwarded this thinking we lead: answer, do not forward
			// again (two nodes with stale views must not bounce a request).
			return fsm.Result{}, notLeader(n.raft)
		}
		if _, forwarded, err := n.forward(ctx, req); forwarded {
			return fsm.Result{}, err
		}
	}
	// A new leader first applies what earlier leaders committed, so that a
	// retry of a write they applied is recognised (State.Applied).
	if err := n.reads.barrier(ctx, n.raft.CurrentTerm()); err != nil {
		if n.retryElsewhere(ctx, err) {
			return n.write(ctx, cmd, req)
		}
		return fsm.Result{}, err
	}
	sent := cmd
	if sent.IfExists {
		if v, _ := n.cachedLogVersion(ctx); v < 1 {
			// Mid-upgrade, with a member whose build predates it, a patch
			// may create the session again, as it did in that build
			// (logversion.go).
			sent.IfExists = false
		}
	}
	r, err := n.commit.submit(ctx, sent)
	if err != nil && n.retryElsewhere(ctx, err) {
		// Deposed while committing: the outcome is unknown, and every
		// command is idempotent, so send it again to whoever leads now.
		return n.write(ctx, cmd, req)
	}
	if err == nil && sent.Op == fsm.OpPatch && sent.IfExists && r.Count == 0 {
		// Answered here, so that a follower forwarding it passes it on.
		return r, transport.Errorf(transport.CodeNotFound, "patch of a session that does not exist (deleted or expired): nothing changed")
	}
	return r, wireError(err)
}

// nonceSeq and nonceBase make the nonces a node invents for writes that
// came without one (Kado JSON): a random per-process base and a counter.
var (
	nonceBase = func() (b [8]byte) { _, _ = rand.Read(b[:]); return }()
	nonceSeq  atomic.Uint64
)

func newNonce() transport.Nonce {
	var n transport.Nonce
	copy(n[:8], nonceBase[:])
	binary.BigEndian.PutUint64(n[8:], nonceSeq.Add(1))
	return n
}

// retryElsewhere reports whether a request that failed with err because
// this node lost its leadership should go again (through the new leader):
// not for peers (they ask us once), not past the deadline. It pauses a
// moment so a node still stepping down does not spin.
func (n *Node) retryElsewhere(ctx context.Context, err error) bool {
	if !errors.Is(err, transport.ErrNotLeader) || transport.FromPeer(ctx) {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-n.stop:
		return false
	case <-time.After(10 * time.Millisecond):
		return true
	}
}

// Save replaces a session. data must be a JSON object.
func (n *Node) Save(ctx context.Context, sid string, data []byte) error {
	if err := fsm.ValidateSID(sid); err != nil {
		return wireError(err)
	}
	// A native client is held to the key rules its patches and MemoryStore
	// follow; a Kado save (also one a follower forwards) keeps Kado's.
	normalize := fsm.NormalizeObjectKeys
	if transport.RequestProtocol(ctx) == transport.ProtocolNative {
		normalize = fsm.NormalizeObjectStrict
	}
	norm, keys, err := normalize(data)
	if err != nil {
		return wireError(err)
	}
	if len(norm) > n.cfg.MaxSessionSize {
		return transport.Errorf(transport.CodeTooLarge, "session data is %d bytes, the limit is %d", len(norm), n.cfg.MaxSessionSize)
	}
	if keys > n.cfg.MaxKeys {
		return transport.Errorf(transport.CodeTooLarge, "session data has %d keys, the limit is %d", keys, n.cfg.MaxKeys)
	}
	_, err = n.write(ctx, fsm.Command{Op: fsm.OpSave, SID: sid, Data: norm},
		&transport.Request{Op: transport.OpSave, SID: sid, Data: norm})
	return err
}

// Patch sets and deletes keys of one session atomically, creating it when
// absent; with ifExists it changes only a live session, and answers
// CodeNotFound otherwise.
func (n *Node) Patch(ctx context.Context, sid string, set []transport.KV, del []string, ifExists bool) error {
	if err := fsm.ValidateSID(sid); err != nil {
		return wireError(err)
	}
	// A session holds at most MaxKeys keys, so a patch naming more cannot
	// be meant; refused here, it never reaches the log (150k keys in one
	// patch once held the state machine for minutes, and again at every
	// restart that replayed it). The transport's decoder refuses such a
	// frame first, by its counts (Server.MaxKeys); this holds for callers
	// that hand the node a patch directly.
	if len(set) > n.cfg.MaxKeys || len(del) > n.cfg.MaxKeys {
		return transport.Errorf(transport.CodeTooLarge, "the patch sets %d and deletes %d keys; a session holds at most %d", len(set), len(del), n.cfg.MaxKeys)
	}
	cmd := fsm.Command{Op: fsm.OpPatch, SID: sid, Duration: n.cfg.Duration.Milliseconds(), MaxSize: int64(n.cfg.MaxSessionSize), MaxKeys: int64(n.cfg.MaxKeys), IfExists: ifExists}
	for _, kv := range set {
		if err := fsm.ValidateKey(kv.Key); err != nil {
			return wireError(err)
		}
		v, err := compactJSON(kv.Value)
		if err != nil {
			return transport.Errorf(transport.CodeBadRequest, "value of key %q: %v", kv.Key, err)
		}
		cmd.Set = append(cmd.Set, fsm.Field{Key: kv.Key, Value: v})
	}
	for _, k := range del {
		if err := fsm.ValidateKey(k); err != nil {
			return wireError(err)
		}
	}
	cmd.Del = del
	// The keys it sets stay in the session, so their size alone over the
	// limit cannot be meant either: refused here, it is not written to
	// every member's log and fsynced first (a 2 MiB patch took 0.2 to 0.5 s
	// to be refused by one node on a 2-core machine, 0.7 s beside two busy
	// loops, and timed out in CI's TestREADMEApp).
	if size := patchOverSize(cmd.Set, del, n.cfg.MaxSessionSize); size > 0 {
		return transport.Errorf(transport.CodeTooLarge, "the patch makes session data at least %d bytes, the limit is %d", size, n.cfg.MaxSessionSize)
	}
	req := &transport.Request{Op: transport.OpPatch, SID: sid, Del: del, IfExists: ifExists}
	for _, f := range cmd.Set {
		req.Set = append(req.Set, transport.KV{Key: f.Key, Value: f.Value})
	}
	_, err := n.write(ctx, cmd, req)
	return err
}

// patchOverSize reports the least size the session data a patch leaves
// can have, when that is over limit, and 0 otherwise. It counts the fields
// the patch sets and does not delete, each key once with its last value,
// as the state machine applies them, as fsm.EncodeObject writes them (a
// key escaped is at least as long as itself).
func patchOverSize(set []fsm.Field, del []string, limit int) int {
	size := func(n, fields int) int { return n + 2 + max(fields-1, 0) }
	sum := 0
	for _, f := range set {
		sum += len(f.Key) + 3 + len(f.Value)
	}
	if size(sum, len(set)) <= limit {
		return 0 // the usual patch: all its sets together fit
	}
	last := make(map[string]int, len(set))
	for _, f := range set {
		last[f.Key] = len(f.Value)
	}
	for _, k := range del {
		delete(last, k)
	}
	sum = 0
	for k, v := range last {
		sum += len(k) + 3 + v
	}
	if n := size(sum, len(last)); n > limit {
		return n
	}
	return 0
}

// Delete removes a session; deleting an unknown session succeeds.
func (n *Node) Delete(ctx context.Context, sid string) error {
	if err := fsm.ValidateSID(sid); err != nil {
		return wireError(err)
	}
	_, err := n.write(ctx, fsm.Command{Op: fsm.OpDelete, SID: sid},
		&transport.Request{Op: transport.OpDelete, SID: sid})
	return err
}

// Touch renews a session; touching an unknown session succeeds.
func (n *Node) Touch(ctx context.Context, sid string) error {
	if err := fsm.ValidateSID(sid); err != nil {
		return wireError(err)
	}
	_, err := n.write(ctx, fsm.Command{Op: fsm.OpTouch, SID: sid, Duration: n.cfg.Duration.Milliseconds()},
		&transport.Request{Op: transport.OpTouch, SID: sid})
	return err
}

// Restore returns a session's data with the requested consistency
// (transport.Default means the node's --consistency, linearizable unless
// set otherwise). A follower serves linearizable reads itself once it has
// applied the leader's read index, and forwards them to the leader, to be
// served at that index, when it has not; it forwards leader reads, and
// serves stale reads itself, refusing them when it has not heard from a
// leader within the staleness bound.
func (n *Node) Restore(ctx context.Context, sid string, c transport.Consistency) ([]byte, bool, error) {
	if err := fsm.ValidateSID(sid); err != nil {
		if transport.FromKado(ctx) {
			// Kado answers a restore of an id it does not hold with a blank
			// session, whatever the id (a Kado app restores any cookie's
			// value), and no session has this one: an error here failed
			// the app's request where Kado's server let it go on.
			return nil, false, nil
		}
		return nil, false, wireError(err)
	}
	if c == transport.Default {
		c = n.cfg.Consistency
	}
	switch c {
	case transport.Default, transport.Linearizable, transport.Leader:
		for {
			if err := n.awaitLeader(ctx); err != nil {
				return nil, false, err
			}
			if n.raft.State() != raft.Leader {
				if transport.FromPeer(ctx) {
					return nil, false, notLeader(n.raft)
				}
				fc, at := c, uint64(0) // how the read is forwarded, if it is
				if c != transport.Leader {
					if index, err := n.freads.index(ctx); err == nil {
						if n.fsm.applied.get() >= index {
							break // linearizable here (follower_read.go)
						}
						// Behind the index: raft tells a follower of commits
						// only with the leader's next append, which may be a
						// --commit-timeout away. The leader has applied them,
						// or is about to: it serves the read at the index,
						// without a round of its own.
						fc, at = transport.AtIndex, index
					}
				}
				req := &transport.Request{Op: transport.OpRestore, Consistency: fc, Index: at, SID: sid}
				resp, forwarded, err := n.forward(ctx, req)
				if forwarded && req.Consistency == transport.AtIndex && errors.Is(err, transport.ErrBadRequest) {
					// A leader from before at-index reads (a rolling
					// upgrade): it serves the read the old way.
					req.Consistency, req.Index = c, 0
					resp, forwarded, err = n.forward(ctx, req)
				}
				if forwarded {
					n.obs.observeForward("restore")
					return resp.Data, resp.Found, err
				}
			}
			var err error
			if c == transport.Leader {
				err = n.reads.caughtUp(ctx)
			} else {
				err = n.reads.wait(ctx)
			}
			if err == nil {
				break
			}
			if !n.retryElsewhere(ctx, err) {
				return nil, false, err
			}
		}
	case transport.AtIndex:
		// Any node that has applied the index answers linearizably: the
		// index is at least the commit index when the read arrived.
		index, ok := transport.ReadIndex(ctx)
		if n.refuseAtIndex.Load() {
			return nil, false, transport.Errorf(transport.CodeBadRequest, "unknown consistency %d", byte(c))
		}
		if !ok || !transport.FromPeer(ctx) {
			return nil, false, transport.Errorf(transport.CodeBadRequest, "at-index reads are sent by the nodes of a cluster to each other, not by clients")
		}
		if !n.ready.Load() {
			return nil, false, errStarting
		}
		// A leader's read index is in the log of whichever node leads
		// next, and a follower asks only the leader: an index beyond this
		// node's log is not one (each such read waited out its deadline,
		// and a peer sending 2^62 held a goroutine per read).
		if last := n.raft.LastIndex(); index > last {
			return nil, false, transport.Errorf(transport.CodeBadRequest, "at-index read at %d, past this node's last log entry %d", index, last)
		}
		// The index is committed, so it will be applied here: wait as long
		// as the request may (like the leader's own reads), not less.
		if err := n.fsm.applied.waitFor(ctx, index); err != nil {
			return nil, false, err
		}
	case transport.Stale:
		if !n.ready.Load() {
			return nil, false, errStarting
		}
		if err := n.checkStaleness(ctx); err != nil {
			return nil, false, err
		}
	default:
		return nil, false, transport.Errorf(transport.CodeBadRequest, "unknown consistency %d", byte(c))
	}
	r, ok := n.fsm.State.Get(sid, time.Now().UnixMilli(), n.cfg.Duration.Milliseconds())
	if !ok {
		return nil, false, nil
	}
	return r.Data, true, nil
}

// caughtUpSinceStart refuses stale reads on a follower that has not yet
// applied what the leader had committed when this node first asked it
// after starting: until then it would serve the state it reloaded at
// start, and a client reading from it could see time go backwards.
func (n *Node) caughtUpSinceStart() error {
	if n.isCaughtUp(true) {
		return nil
	}
	return transport.Errorf(transport.CodeUnavailable, "stale read refused: %s", n.catchingUp())
}

// isCaughtUp reports whether this node has caught up since its start: it
// leads, or it has applied what the leader had committed when this node
// first asked it (Raft's own commit index is no target: a follower's moves
// with the leader's appends, not with heartbeats, and a restarted follower
// heard heartbeats for seconds, its commit index 0, while the leader's
// replication to it backed off). With ask, it asks the leader now if it
// has not yet; without, it leaves that to watchCatchUp.
func (n *Node) isCaughtUp(ask bool) bool {
	if n.caughtUp.Load() {
		return true
	}
	if n.raft.State() == raft.Leader {
		// A leader holds everything committed once a barrier of its has
		// committed (watchCatchUp runs one): just elected, after a restart,
		// it may not have applied its own log yet. Taken as caught up on
		// election, a restarted single node whose first append failed (a
		// full disk) served stale reads from an empty state, and wrote that
		// state over its save file, once it had room (a drill).
		if n.reads.barrierTerm.Load() == 0 {
			return false
		}
		n.caughtUp.Store(true)
		return true
	}
	target := n.catchUpTarget.Load()
	if target == 0 && ask {
		target = n.learnCatchUpTarget()
	}
	if target == 0 || n.appliedIndex() < target {
		return false
	}
	// raft's applied index moves when entries are handed to the state
	// machine, before they are applied: a node ready by it alone served a
	// stale read without an entry it was handed (CI). The state machine
	// must have applied the last entry it sees at or before the target.
	if n.fsm.applied.get() < n.reads.fsmIndex(target) {
		return false
	}
	n.caughtUp.Store(true)
	return true
}

// learnCatchUpTarget asks the leader for its commit index, once: the
// target of isCaughtUp (0: not learnt, the leader unknown or silent). A
// call waits for one asking already, and does not ask again within 100 ms
// of a failed try: reads queued behind a silent leader are not each held
// for its timeout.
func (n *Node) learnCatchUpTarget() uint64 {
	n.catchUpMu.Lock()
	defer n.catchUpMu.Unlock()
	if t := n.catchUpTarget.Load(); t != 0 || time.Since(n.catchUpTried) < 100*time.Millisecond {
		return t
	}
	addr, _ := n.raft.LeaderWithID()
	if addr == "" || string(addr) == n.cfg.Advertise {
		return 0
	}
	n.catchUpTried = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(time.Second))
	defer cancel()
	st, err := n.peerStatusOnce(ctx, string(addr))
	if err != nil || st.State != "leader" || (st.CaughtUp != nil && !*st.CaughtUp) {
		// A leader that has not committed an entry of its term may not
		// know what was committed before: after every node restarted, its
		// commit index is 0 (raft keeps none on disk), and a follower with
		// a snapshot called itself caught up on it at once. A leader of an
		// older build does not say (nil): its figure is taken as before.
		return 0
	}
	t := max(st.CommitIndex, 1)
	n.catchUpTarget.Store(t)
	return t
}

// catchingUp says how far a node that has not caught up since its start is.
func (n *Node) catchingUp() string {
	if n.raft.State() == raft.Leader {
		return "this node leads but has not yet applied its raft log since it started (its first entry as leader has not committed)"
	}
	target := n.catchUpTarget.Load()
	if target == 0 {
		return "this node has not yet learnt the leader's commit index since it started (no leader known, or the leader has not yet committed an entry of its term)"
	}
	return fmt.Sprintf("this node is catching up after its start (applied %d of the %d the leader had committed)", n.appliedIndex(), target)
}

// appliedIndex is the last index the state machine has applied (raft's
// own, for entries it keeps to itself).
func (n *Node) appliedIndex() uint64 { return max(n.fsm.applied.get(), n.raft.AppliedIndex()) }

// watchCatchUp settles isCaughtUp after the start without waiting for a
// read to ask: readiness (/readyz) reads it too. It also runs a leader's
// barrier in each of its terms, which followers catching up after their
// start wait for (Status.CaughtUp): a leader serving only writes and stale
// reads runs none of its own.
func (n *Node) watchCatchUp() {
	defer n.bg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		changed := n.leaderChanges() // at once on election, not at the next tick
		n.leaderCatchUp()
		n.isCaughtUp(true)
		select {
		case <-n.stop:
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// leaderCatchUp runs, on a leader, the barrier after which it counts as
// caught up since its start (isCaughtUp), waiting for it a second at most.
func (n *Node) leaderCatchUp() {
	if n.raft.State() != raft.Leader {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(time.Second))
	defer cancel()
	_ = n.reads.caughtUp(ctx)
}

// staleCatchUpWait bounds how long a stale read on a leader waits for the
// leader to have applied its log since its start (checkStaleness).
const staleCatchUpWait = time.Second

// checkStaleness refuses a stale read on a follower that has not heard from
// its leader within Config.MaxStale (when set).
func (n *Node) checkStaleness(ctx context.Context) error {
	if n.raft.State() == raft.Leader {
		if n.caughtUp.Load() {
			return nil // since its start, as a follower or an earlier leader
		}
		// Just elected after a restart: what it committed before, applied
		// (a barrier of its term), within a bound: a stale read is asked
		// for an answer now, and one that waited out its deadline behind a
		// barrier that could not commit (a full disk) said only "timed out".
		bctx, cancel := context.WithTimeout(ctx, n.peerWait(staleCatchUpWait))
		defer cancel()
		err := n.reads.caughtUp(bctx)
		if err != nil && ctx.Err() == nil && bctx.Err() != nil {
			return n.explain(transport.Errorf(transport.CodeUnavailable, "stale read refused: %s", n.catchingUp()))
		}
		return err
	}
	if err := n.caughtUpSinceStart(); err != nil {
		return err
	}
	if n.cfg.MaxStale <= 0 {
		return nil
	}
	if since := time.Since(n.raft.LastContact()); since > n.cfg.MaxStale {
		return transport.Errorf(transport.CodeUnavailable, "stale read refused: this node last heard from a leader %s ago, more than the %s bound", since.Round(time.Millisecond), n.cfg.MaxStale)
	}
	return nil
}

// Status is a node's view of itself, answered to {"op":"status"}.
type Status struct {
	ClusterID   string `json:"cluster_id"`
	ID          string `json:"id"`
	Address     string `json:"address"`
	State       string `json:"state"`
	LeaderID    string `json:"leader_id"`
	LeaderAddr  string `json:"leader_address"`
	Term        uint64 `json:"term"`
	CommitIndex uint64 `json:"commit_index"`
	Applied     uint64 `json:"applied_index"`
	Sessions    int    `json:"sessions"`
	Ready       bool   `json:"ready"`
	LastContact string `json:"last_contact"` // since the leader was last heard from; "0s" on the leader
	// LogFailure says that the node cannot write its raft log, since when
	// and why (a full disk); empty when it can.
	LogFailure string `json:"log_failure,omitempty"`
	// LogVersion is the newest raft log version this build applies
	// (fsm.LogVersion; logversion.go).
	LogVersion int `json:"log_version,omitempty"`
	// AppliedEarlier is the index the node had applied behindAfter (10 s)
	// ago, from which status tells a member that is behind; 0 for a node
	// started since, or of a build that does not say.
	AppliedEarlier uint64 `json:"applied_index_10s_ago,omitempty"`
	// CaughtUp, on a leader, says that an entry of its term has committed,
	// so that its CommitIndex covers everything committed before it was
	// elected (a follower catching up after its start waits for it); nil
	// elsewhere, and from builds that do not say.
	CaughtUp *bool `json:"caught_up,omitempty"`
}

// Status returns the node's view of itself.
func (n *Node) Status() Status {
	addr, id := n.raft.LeaderWithID()
	// One reading of the state, for every field: a node that became leader
	// between two readings said "leader" without caught_up, which a
	// follower takes for an older build's leader (a review).
	state := n.raft.State()
	lastContact := "0s"
	if state != raft.Leader {
		if t := n.raft.LastContact(); t.IsZero() {
			lastContact = "never"
		} else {
			lastContact = time.Since(t).Round(time.Millisecond).String()
		}
	}
	var logFailure string
	if f := n.logHealth.failing.Load(); f != nil {
		logFailure = f.String()
	}
	// Read before the commit index, which it vouches for.
	var caughtUp *bool
	if state == raft.Leader {
		c := n.reads.barrierTerm.Load() == n.raft.CurrentTerm()
		caughtUp = &c
	}
	return Status{CaughtUp: caughtUp,
		ClusterID: n.ClusterID(), LastContact: lastContact, LogFailure: logFailure,
		ID: n.id, Address: n.cfg.Advertise, State: stateName(state),
		LeaderID: string(id), LeaderAddr: string(addr),
		Term: n.raft.CurrentTerm(), CommitIndex: n.raft.CommitIndex(), Applied: n.appliedIndex(),
		Sessions: n.fsm.State.Len(), Ready: n.ready.Load(), LogVersion: n.ownLogVersion(),
		AppliedEarlier: n.applied.asOf(time.Now(), behindAfter),
	}
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "shutdown"
}

// Admin serves cluster administration requests (see adminJSON).
func (n *Node) Admin(ctx context.Context, body []byte) ([]byte, error) {
	return n.adminJSON(ctx, body)
}

// compactJSON returns a compacted copy of v. The copy matters: Node.Patch is
// also called in process, and a write whose caller gave up may still wait
// in the committer's queue after the caller reused its buffer.
func compactJSON(v []byte) ([]byte, error) {
	c, err := fsm.CompactValue(v)
	if err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	return bytes.Clone(c), nil
}
