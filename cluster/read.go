package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// readIndex makes default reads linearizable without writing to the log:
// once per term a barrier proves the leader has applied everything earlier
// leaders committed; then each read notes the commit index, joins a
// confirmation round (one round is shared by every read that arrived before
// it started), checks the term did not change, and waits until the state
// machine has applied the noted index.
//
// The round asks every voter for its current term with a request sent
// after the round started, and needs a quorum (this node included) at or
// below the leader's term. raft.VerifyLeader is not used: it counts any
// successful AppendEntries answer that arrives while it waits, including
// one to a heartbeat sent before the read arrived, so a leader frozen
// (SIGSTOP, a long GC or VM pause) just after sending a heartbeat could,
// on waking, confirm itself with its followers' pre-pause answers and
// serve a read from before a write its successor has since committed.
// That happened in CI (TestProcessPausedLeaderNeverServesStaleRead).
type readIndex struct {
	raft    *raft.Raft
	logs    raft.LogStore
	applied *appliedIndex
	self    raft.ServerID
	// askTerm asks the member id at addr for its current raft term.
	askTerm func(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) (uint64, error)
	// confirmWait bounds one confirmation round (confirmTimeout when
	// zero; the node's peerWait of it).
	confirmWait time.Duration

	barrierTerm atomic.Uint64
	barrierSem  chan struct{}   // one barrier at a time (capacity 1)
	pending     *pendingBarrier // the last barrier asked of raft (barrierSem)

	// lastFSMIndex caches fsmIndex's last answer from the log: every read
	// asked it for the same commit index, and each GetLog took the log
	// cache's one lock (5% of a single node's CPU under 64 readers).
	lastFSMIndex atomic.Pointer[fsmIndexAt]

	rounds rounds // confirmation rounds (confirmRound), shared by the reads waiting

	// peerTimes holds each peer's recent time to answer a term request (a
	// moving average; hedgeMax after a failure), which orders the peers a
	// confirmation round asks first (confirm).
	peerMu    sync.Mutex
	peerTimes map[raft.ServerID]time.Duration
	lastFirst raft.ServerID // the peer the last round asked first

	steppingDown atomic.Bool
}

// confirmTimeout bounds one confirmation round with the default raft
// timeouts (peerWait stretches it with longer ones).
const confirmTimeout = 2 * time.Second

// wait returns nil once a read made now would be linearizable, or an error
// (CodeNotLeader with a hint when this node is not the leader).
func (ri *readIndex) wait(ctx context.Context) error {
	index, err := ri.index(ctx)
	if err != nil {
		return err
	}
	return ri.applied.waitFor(ctx, index)
}

// caughtUp returns nil once this leader's state machine holds everything
// committed before its term began (raft's barrier for the term, once per
// term): what a Leader read needs, without a confirmation round. A node
// just elected may not have applied its log yet, and a Leader read served
// from it then missed sessions earlier reads had found (a fault schedule
// caught it after the leader was restarted and elected again).
func (ri *readIndex) caughtUp(ctx context.Context) error {
	if ri.raft.State() != raft.Leader {
		return notLeader(ri.raft)
	}
	return ri.barrier(ctx, ri.raft.CurrentTerm())
}

// index returns a read index for a read that arrived before the call: once
// the state machine has applied it (here or on a follower), reading the
// state is linearizable.
func (ri *readIndex) index(ctx context.Context) (uint64, error) {
	return ri.indexFor(ctx, "", 0)
}

// indexFor is index for reads that arrived at the voter asker before it
// sent, in its term askerTerm, the request being served ("" for reads made
// here). The asker's term is an answer to a confirmation round sent after
// those reads arrived: when it is at most ours and the asker and this node
// make a quorum (three voters), no round is needed at all.
func (ri *readIndex) indexFor(ctx context.Context, asker raft.ServerID, askerTerm uint64) (uint64, error) {
	if ri.raft.State() != raft.Leader {
		return 0, notLeader(ri.raft)
	}
	term := ri.raft.CurrentTerm()
	if err := ri.barrier(ctx, term); err != nil {
		return 0, err
	}
	index := ri.raft.CommitIndex()
	if asker != "" && askerTerm > term {
		ri.stepDown()
		return 0, &transport.Error{Code: transport.CodeNotLeader, Message: fmt.Sprintf("this node leads in term %d, but %s is already in term %d", term, asker, askerTerm)}
	}
	var vouching raft.ServerID
	if asker != "" && askerTerm > 0 {
		vouching = asker
	}
	if ri.quorumOf(vouching) {
		// No round: the asker's term already answered one, or this node
		// is the only voter, where the round would confirm at once and
		// its machinery cost a tenth of a single node's CPU under 64
		// readers.
		if ri.raft.State() != raft.Leader || ri.raft.CurrentTerm() != term {
			return 0, notLeader(ri.raft)
		}
		return ri.fsmIndex(index), nil
	}
	confirmed, err := ri.verify(ctx)
	if err != nil {
		return 0, err
	}
	if confirmed != term || ri.raft.CurrentTerm() != term {
		return 0, notLeader(ri.raft)
	}
	return ri.fsmIndex(index), nil
}

// fsmIndex returns the index of the last log entry at or before i that the
// state machine sees (a command or a configuration change; raft keeps
// barriers and no-ops to itself), so that "the state machine applied it"
// is what a read waits for. Raft's own applied index is no substitute: it
// moves when entries are handed to the state machine, before they are
// applied, and another node may already have served a read of them.
func (ri *readIndex) fsmIndex(i uint64) uint64 {
	if c := ri.lastFSMIndex.Load(); c != nil && c.commit == i {
		return c.fsm
	}
	for j := i; j > 0; j-- {
		var l raft.Log
		if err := ri.logs.GetLog(j, &l); err != nil {
			// Compacted into a snapshot (never so close to the commit
			// index with trailing logs kept): every state machine entry
			// up to j is in it, so this node's applied index covers them
			// all when it is below j; j itself may be an entry the state
			// machine never sees.
			return min(j, ri.applied.get())
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			// Committed entries never change, so the answer for i is
			// final (not so the compacted case above, which follows the
			// applied index).
			ri.lastFSMIndex.Store(&fsmIndexAt{commit: i, fsm: j})
			return j
		}
	}
	return 0
}

// fsmIndexAt is fsmIndex's answer fsm for commit index commit.
type fsmIndexAt struct{ commit, fsm uint64 }

func (ri *readIndex) barrier(ctx context.Context, term uint64) error {
	if ri.barrierTerm.Load() == term {
		return nil
	}
	// One barrier at a time; waiting for it, like the barrier itself, ends
	// with the caller's context (raft's Barrier timeout bounds only its
	// getting into raft's queue, not its commit).
	select {
	case ri.barrierSem <- struct{}{}:
	case <-ctx.Done():
		return transport.Errorf(transport.CodeTimeout, "timed out waiting for the leader's first entry of term %d to commit: %v", term, ctx.Err())
	}
	defer func() { <-ri.barrierSem }()
	if ri.barrierTerm.Load() == term {
		return nil
	}
	// A barrier whose caller gave up may still be in raft's queue or log:
	// the next caller of the term waits for it rather than add another
	// (the leader tries one a second while it cannot commit: watchCatchUp).
	// One that has already failed is not waited on again: raft may be
	// well again (a review: an enqueue timeout from seconds before failed
	// a read at once).
	p := ri.pending
	if p == nil || p.term != term || p.failed() {
		p = &pendingBarrier{term: term, done: make(chan struct{})}
		ri.pending = p
		go func() { p.err = ri.raft.Barrier(5 * time.Second).Error(); close(p.done) }()
	}
	select {
	case <-p.done:
		if p.err != nil {
			return applyError(p.err, ri.raft)
		}
	case <-ctx.Done():
		return transport.Errorf(transport.CodeTimeout, "timed out waiting for the leader's first entry of term %d to commit: %v", term, ctx.Err())
	}
	ri.barrierTerm.Store(term)
	return nil
}

// pendingBarrier is a raft barrier asked in term: err is its answer once
// done is closed.
type pendingBarrier struct {
	term uint64
	done chan struct{}
	err  error
}

// failed reports whether the barrier has answered with an error.
func (p *pendingBarrier) failed() bool {
	select {
	case <-p.done:
		return p.err != nil
	default:
		return false
	}
}

// verify joins a confirmation round (see rounds) and returns the term it
// confirmed.
func (ri *readIndex) verify(ctx context.Context) (uint64, error) {
	term, err := ri.rounds.join(ctx, transport.Arrived(ctx))
	if ctx.Err() != nil && err == ctx.Err() {
		return 0, transport.Errorf(transport.CodeTimeout, "read timed out confirming leadership: %v", err)
	}
	return term, err
}

// confirmRound is one confirmation round: the current term, confirmed.
func (ri *readIndex) confirmRound() (uint64, error) {
	term := ri.raft.CurrentTerm()
	return term, ri.confirm(term)
}

// quorumOf reports whether this node, with voter when not "", is a quorum
// of the latest configuration's voters.
func (ri *readIndex) quorumOf(voter raft.ServerID) bool {
	f := ri.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	voters, acks, self := 0, 0, false
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		switch {
		case s.ID == ri.self:
			self = true
			acks++
		case voter != "" && s.ID == voter:
			acks++
		}
	}
	return self && acks >= voters/2+1
}

// confirm returns nil once a quorum of voters, asked after it was called,
// answered with a term no later than term: no leader of a later term can
// then have committed anything before the call (its quorum would overlap
// ours, and terms never go back).
func (ri *readIndex) confirm(term uint64) error {
	if ri.raft.State() != raft.Leader {
		return notLeader(ri.raft)
	}
	f := ri.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return applyError(err, ri.raft)
	}
	voters, acks := 0, 0
	var peers []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if s.ID == ri.self {
			acks++
		} else {
			peers = append(peers, s)
		}
	}
	need := voters/2 + 1
	if acks >= need {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(ri.confirmWait, confirmTimeout))
	defer cancel()
	// Only as many peers as the quorum lacks are asked at first, the
	// quickest to answer lately first: with three voters, one peer. Asking
	// every peer cost a round's work twice over (a fifth of a leader's CPU
	// under 64 readers went to these requests, and as much again on each
	// follower). The others are asked when one asked fails or the answers
	// are late (hedgeAfter): a paused or unreachable peer then costs one
	// late round, after which it is asked last.
	first := need - acks
	hedgeAt := ri.rankPeers(peers, first)
	type answer struct {
		i    int
		term uint64
		err  error
	}
	answers := make(chan answer, len(peers))
	answered := make([]bool, len(peers))
	asked := 0
	ask := func(upTo int) {
		for ; asked < upTo && asked < len(peers); asked++ {
			i, p := asked, peers[asked]
			go func() {
				start := time.Now()
				t, err := ri.askTerm(ctx, p.ID, p.Address)
				ri.notePeer(p.ID, time.Since(start), err)
				answers <- answer{i, t, err}
			}()
		}
	}
	// late ranks the peers asked that have not answered last, at once: the
	// next round may start before their requests end.
	late := func() {
		for i := range asked {
			if !answered[i] {
				ri.notePeer(peers[i].ID, 0, errLate)
			}
		}
	}
	ask(first)
	hedge := time.NewTimer(hedgeAt)
	defer hedge.Stop()
	var lastErr error
	for n := 0; n < asked; {
		var a answer
		select {
		case a = <-answers:
			n++
			answered[a.i] = true
		case <-hedge.C:
			late()
			ask(len(peers))
			continue
		}
		switch {
		case a.err != nil:
			lastErr = a.err
			ask(len(peers))
		case a.term > term:
			ri.stepDown()
			return &transport.Error{Code: transport.CodeNotLeader, Message: fmt.Sprintf("this node was leader in term %d, but a peer is already in term %d", term, a.term)}
		default:
			if acks++; acks >= need {
				late()
				return nil
			}
		}
	}
	return transport.Errorf(transport.CodeUnavailable, "leadership not confirmed: %d of %d voters answered in term %d (last error: %v)", acks, voters, term, lastErr)
}

// rankPeers orders peers by their recent time to answer, quickest first
// (a peer not heard from yet first of all: it is tried), and returns how
// long a round waits for the first n before it asks the rest: four times
// the slowest of them, within [hedgeMin, hedgeMax].
func (ri *readIndex) rankPeers(peers []raft.Server, n int) time.Duration {
	ri.peerMu.Lock()
	defer ri.peerMu.Unlock()
	slices.SortStableFunc(peers, func(a, b raft.Server) int {
		return cmp.Compare(ri.peerTimes[a.ID], ri.peerTimes[b.ID])
	})
	// The peer asked first last time stays first unless another answers
	// in under half its time: two peers about as quick would otherwise
	// take turns as their averages cross, each round's noise deciding.
	if len(peers) > 1 && peers[0].ID != ri.lastFirst {
		if i := slices.IndexFunc(peers, func(p raft.Server) bool { return p.ID == ri.lastFirst }); i > 0 {
			if t := ri.peerTimes[ri.lastFirst]; t < hedgeMax && t <= 2*ri.peerTimes[peers[0].ID] {
				p := peers[i]
				copy(peers[1:i+1], peers[:i])
				peers[0] = p
			}
		}
	}
	ri.lastFirst = peers[0].ID
	var slowest time.Duration
	for _, p := range peers[:min(n, len(peers))] {
		slowest = max(slowest, ri.peerTimes[p.ID])
	}
	return min(max(4*slowest, hedgeMin), hedgeMax)
}

// notePeer folds the time peer id took to answer a term request into its
// moving average (the latest weighing an eighth); a failure, or an answer
// the round stopped waiting for, counts as hedgeMax until the next answer.
func (ri *readIndex) notePeer(id raft.ServerID, took time.Duration, err error) {
	if err != nil {
		took = hedgeMax
	}
	ri.peerMu.Lock()
	defer ri.peerMu.Unlock()
	if ri.peerTimes == nil {
		ri.peerTimes = map[raft.ServerID]time.Duration{}
	}
	old, ok := ri.peerTimes[id]
	if !ok || err != nil || old >= hedgeMax {
		// A first answer, a failure, or the first answer after one: it
		// stands alone, so a peer back from a pause is not ranked by it.
		ri.peerTimes[id] = took
		return
	}
	ri.peerTimes[id] = old + (took-old)/8
}

// errLate marks a peer a confirmation round stopped waiting for.
var errLate = errors.New("answered later than the round waited")

// Bounds of the time a confirmation round waits before asking more peers
// (readIndex.rankPeers).
const (
	hedgeMin = 5 * time.Millisecond
	hedgeMax = 50 * time.Millisecond
)

// stepDown makes raft notice, soon, that a peer is in a later term. Raft
// itself learns it only from a rejected log replication or a failed
// VerifyLeader (heartbeat rejections count as contact and keep its lease
// alive), so a leader with nothing to replicate whose successor cannot
// reach it would otherwise go on believing it leads. A VerifyLeader now
// fails on the peers' fresh rejections and steps it down.
func (ri *readIndex) stepDown() {
	if !ri.steppingDown.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer ri.steppingDown.Store(false)
		_ = ri.raft.VerifyLeader().Error()
	}()
}

func notLeader(r *raft.Raft) error {
	addr, id := r.LeaderWithID()
	if addr == "" {
		return transport.Errorf(transport.CodeUnavailable, "no leader is known at the moment: retry shortly")
	}
	return &transport.Error{Code: transport.CodeNotLeader, Message: fmt.Sprintf("this node is not the leader; the leader is %s at %s", id, addr), Leader: string(addr)}
}

// appliedIndex tracks the index the state machine has applied and lets
// readers wait for one. The index is kept in an atomic, so that a read
// that needs no waiting (the usual case) takes no lock.
type appliedIndex struct {
	index atomic.Uint64
	mu    sync.Mutex
	wake  chan struct{}
}

func newAppliedIndex() *appliedIndex { return &appliedIndex{wake: make(chan struct{})} }

func (a *appliedIndex) set(i uint64) {
	a.mu.Lock()
	if i > a.index.Load() {
		a.index.Store(i)
		close(a.wake)
		a.wake = make(chan struct{})
	}
	a.mu.Unlock()
}

func (a *appliedIndex) get() uint64 { return a.index.Load() }

// waitFor returns once the state machine has applied index i (an index
// readIndex.fsmIndex returned), or ctx ends. A read that needs no waiting,
// the usual case, takes no lock.
func (a *appliedIndex) waitFor(ctx context.Context, i uint64) error {
	for a.index.Load() < i {
		a.mu.Lock()
		if a.index.Load() >= i {
			a.mu.Unlock()
			return nil
		}
		wake := a.wake
		a.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return transport.Errorf(transport.CodeTimeout, "read timed out waiting for index %d to be applied: %v", i, ctx.Err())
		}
	}
	return nil
}
