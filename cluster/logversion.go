package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
)

// A rolling upgrade runs members of two builds side by side. A build stops
// at the first log entry it cannot apply (an op byte from a newer build),
// and in a cluster every member applies every entry, so a leader writes a
// command of a newer log version (fsm.LogVersion, fsm.Command.LogVersion)
// only once every member has reported that it applies it; until then the
// commands that have an older form use it (cachedLogVersion's callers),
// and any other is refused (committer.logVersion). Each member reports its
// version in its answers to {"op":"term"} and {"op":"status"}; a build
// that reports none is version 0.

// logVersionFresh is how long a member's reported version is trusted
// before it is asked again (a member restarted with another build in the
// meantime). One that does not answer then keeps the version it reported
// last: a member down for a while is not taken for an older build.
const logVersionFresh = 30 * time.Second

// logVersions is what each member last reported of its log version, by
// id and address: a node that takes over a member's id at another address
// (a join) is another build until it answers there.
type logVersions struct {
	mu sync.Mutex
	of map[raft.ServerID]reportedVersion
}

type reportedVersion struct {
	addr raft.ServerAddress
	v    int
	at   time.Time
}

func (l *logVersions) seen(id raft.ServerID, addr raft.ServerAddress, v int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.of == nil {
		l.of = map[raft.ServerID]reportedVersion{}
	}
	l.of[id] = reportedVersion{addr, v, time.Now()}
}

// known returns the version member id at addr reported last (0 when
// none), and whether it did lately.
func (l *logVersions) known(id raft.ServerID, addr raft.ServerAddress) (v int, fresh bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.of[id]
	if !ok || r.addr != addr {
		return 0, false
	}
	return r.v, time.Since(r.at) < logVersionFresh
}

// ownLogVersion is the version this node reports: fsm.LogVersion, or a test's
// stand-in for another build (Config.logVersion; -1: none, as a build from
// before versions).
func (n *Node) ownLogVersion() int {
	switch v := n.cfg.logVersion; {
	case v < 0:
		return 0
	case v > 0:
		return v
	}
	return fsm.LogVersion
}

// watchLogVersions runs for the node's life: every second, and as soon as
// a leader is known, it finds the log version all members apply again
// (clusterLogVersion). It is a loop of its own so that a member that does
// not answer does not hold up probePeers.
func (n *Node) watchLogVersions() {
	defer n.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		n.leaderMu.Lock()
		changed := n.leaderCh
		n.leaderMu.Unlock()
		select {
		case <-n.stop:
			return
		case <-t.C:
		case <-changed:
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(time.Second))
		n.clusterLogVersion(ctx)
		cancel()
	}
}

// clusterLogVersion finds the newest log version every member applies
// (and when it is older than this build's, a member that applies only
// that one), and keeps it for the request path (cachedLogVersion). Every
// node runs it every second (watchLogVersions), so that a new leader knows
// it at once. Members whose report is not fresh, or older than this build's,
// are asked (at most a second; peerWait: longer with longer raft timeouts). Once every member's fresh report is at
// least v, v is the node's floor (versionFloor, kept in the raft log's
// store), which stands in for the members that have not answered lately:
// without it, a crashed leader took the new format with it for as long as
// it was down (a review's drill). A member that answers with an older
// version than the floor is believed: it would stop at a newer entry.
func (n *Node) clusterLogVersion(ctx context.Context) (int, raft.ServerID) {
	commit := n.raft.CommitIndex()
	servers := n.raft.GetConfiguration().Configuration().Servers
	ctx, cancel := context.WithTimeout(ctx, n.peerWait(time.Second))
	defer cancel()
	own := n.ownLogVersion()
	var wg sync.WaitGroup
	for _, s := range servers {
		if v, fresh := n.versions.known(s.ID, s.Address); s.ID == raft.ServerID(n.id) || (fresh && v >= own) {
			continue
		}
		wg.Add(1)
		go func(id raft.ServerID, addr raft.ServerAddress) {
			defer wg.Done()
			_, _ = n.termOf(ctx, id, addr) // notes the version it reports
		}(s.ID, s.Address)
	}
	wg.Wait()
	floor := int(n.versionFloor.Load())
	least, behind, reported, member := own, raft.ServerID(""), own, false
	for _, s := range servers {
		if s.ID == raft.ServerID(n.id) {
			member = true
			continue
		}
		v, fresh := n.versions.known(s.ID, s.Address)
		if fresh {
			reported = min(reported, v)
			if v < floor {
				n.warnOlder(fmt.Sprintf("member %s answers that it applies raft log version %d, older than the %d every member applied before: was it started from an older build?", s.ID, v, floor))
			}
		} else {
			reported, v = -1, max(v, floor)
		}
		if v < least {
			least, behind = v, s.ID
		}
	}
	// A node not (yet) in its configuration knows too little to raise
	// its floor: a joining node's is empty. Nor does one whose
	// configuration is not committed.
	if member && reported > floor && n.configurationCommitted(commit, servers) {
		n.raiseVersionFloor(reported)
	}
	n.clusterVersion.Store(&foundVersion{least, behind})
	return least, behind
}

// configurationCommitted tells whether servers, the configuration read
// after commit was the commit index, is committed: whether no
// configuration entry follows commit in the log, and the configuration is
// still the one read. raft keeps the index of neither configuration where
// we can read it (GetConfiguration's Index is always 0). The last index is
// the log store's: a follower publishes a configuration after storing it
// and before raft's last index moves. Reading the configuration again
// catches a follower's uncommitted tail replaced meanwhile by a new
// leader's entries. A tail of more than 16 entries counts as not
// committed: the next round looks again.
func (n *Node) configurationCommitted(commit uint64, servers []raft.Server) bool {
	last, err := n.bolt.LastIndex()
	if err != nil || last > commit+16 {
		return false
	}
	for i := commit + 1; i <= last; i++ {
		var e raft.Log
		if err := n.bolt.GetLog(i, &e); err != nil || e.Type == raft.LogConfiguration {
			return false
		}
	}
	return slices.Equal(n.raft.GetConfiguration().Configuration().Servers, servers)
}

// foundVersion is what clusterLogVersion found: the version, and a member
// that applies only that one when it is older than this build's.
type foundVersion struct {
	v      int
	behind raft.ServerID
}

// foundLogVersion is clusterLogVersion's version as last found, -1 when
// not yet (the committer's check).
func (n *Node) foundLogVersion() int {
	if f := n.clusterVersion.Load(); f != nil {
		return f.v
	}
	return -1
}

// loadVersionFloor reads the node's floor at start (Open, before anything
// asks for the version): when it is this build's version, that is what
// every member applies until found otherwise.
func (n *Node) loadVersionFloor() {
	floor, err := n.bolt.GetUint64(versionFloorKey)
	if err != nil {
		return
	}
	v := min(int(floor), n.ownLogVersion())
	n.versionFloor.Store(int32(v))
	if v == n.ownLogVersion() {
		n.clusterVersion.Store(&foundVersion{v: v})
	}
}

// versionFloorKey is where the raft log's store keeps the node's floor.
var versionFloorKey = []byte("kadosession-log-version-floor")

// raiseVersionFloor makes v the node's floor, on disk first, if it is
// higher; one raise at a time.
func (n *Node) raiseVersionFloor(v int) {
	n.floorMu.Lock()
	defer n.floorMu.Unlock()
	if v <= int(n.versionFloor.Load()) {
		return
	}
	if err := n.bolt.SetUint64(versionFloorKey, uint64(v)); err != nil {
		n.log.Warn("cannot record that every member applies a raft log version", "log_version", v, "error", err)
		return
	}
	n.versionFloor.Store(int32(v))
	n.log.Info("every member applies this raft log version; a leader writes it from now on", "log_version", v)
}

// warnOlder logs msg as a warning, once a minute at most.
func (n *Node) warnOlder(msg string) {
	if last := n.olderWarned.Load(); time.Since(time.Unix(0, last)) > time.Minute && n.olderWarned.CompareAndSwap(last, time.Now().UnixNano()) {
		n.log.Warn(msg + " (logged once a minute)")
	}
}

// olderMember says, for messages, that member id runs an older build.
func olderMember(id raft.ServerID, v int) string {
	return fmt.Sprintf("member %s applies raft log version %d only (an older build, or it did not answer), and this build writes version %d; upgrade every member", id, v, fsm.LogVersion)
}

// cachedLogVersion is clusterLogVersion as last found, for the request
// path (a member that does not answer must not slow requests); found now
// only when not yet since the node started.
func (n *Node) cachedLogVersion(ctx context.Context) (int, raft.ServerID) {
	if f := n.clusterVersion.Load(); f != nil {
		return f.v, f.behind
	}
	return n.clusterLogVersion(ctx)
}
