package cluster

import (
	"context"
	"encoding/json"
	"fmt"
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
// commands that have an older form use it (clusterLogVersion's callers),
// and any other is refused (committer.logVersion). Each member reports its
// version in its answers to {"op":"term"} and {"op":"status"}; a build
// that reports none is version 0.

// logVersionFresh is how long a member's reported version is trusted
// before it is asked again (a member restarted with another build in the
// meantime). One that does not answer then keeps the version it reported
// last: a member down for a while is not taken for an older build.
const logVersionFresh = 30 * time.Second

// logVersions is what each member last reported of its log version.
type logVersions struct {
	mu sync.Mutex
	of map[raft.ServerID]reportedVersion
}

type reportedVersion struct {
	v  int
	at time.Time
}

func (l *logVersions) seen(id raft.ServerID, v int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.of == nil {
		l.of = map[raft.ServerID]reportedVersion{}
	}
	l.of[id] = reportedVersion{v, time.Now()}
}

// known returns the version member id reported last (0 when none), and
// whether it did lately.
func (l *logVersions) known(id raft.ServerID) (v int, fresh bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.of[id]
	return r.v, ok && time.Since(r.at) < logVersionFresh
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

// clusterLogVersion finds the newest log version every member applies
// (and when it is older than this build's, a member that applies only
// that one), and keeps it for the request path (cachedLogVersion). Every
// node runs it every second (probePeers), so that a new leader knows it
// at once. Members whose report is not fresh, or older than this build's,
// are asked (at most a second). Once every member's fresh report is at
// least v, v is the node's floor (versionFloor, kept in the raft log's
// store): the version never goes back because a member is down or has not
// answered a new leader yet; without it, a crashed leader took the new
// format with it for as long as it was down (a review's drill).
func (n *Node) clusterLogVersion(ctx context.Context) (int, raft.ServerID) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return int(n.clusterVersion.Load()), ""
	}
	servers := f.Configuration().Servers
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	own := n.ownLogVersion()
	var wg sync.WaitGroup
	for _, s := range servers {
		if v, fresh := n.versions.known(s.ID); s.ID == raft.ServerID(n.id) || (fresh && v >= own) {
			continue
		}
		wg.Add(1)
		go func(id raft.ServerID, addr raft.ServerAddress) {
			defer wg.Done()
			n.askLogVersion(ctx, id, addr)
		}(s.ID, s.Address)
	}
	wg.Wait()
	least, behind, member, allFresh := own, raft.ServerID(""), false, true
	for _, s := range servers {
		if s.ID == raft.ServerID(n.id) {
			member = true
			continue
		}
		v, fresh := n.versions.known(s.ID)
		allFresh = allFresh && fresh
		if v < least {
			least, behind = v, s.ID
		}
	}
	// A node not (yet) in its configuration knows too little to raise
	// its floor: a joining node's is empty.
	if member && allFresh && least > int(n.versionFloor.Load()) {
		n.raiseVersionFloor(least)
	}
	if floor := int(n.versionFloor.Load()); floor > least {
		least, behind = floor, ""
	}
	n.clusterVersion.Store(int32(least))
	return least, behind
}

// versionFloorKey is where the raft log's store keeps the node's floor.
var versionFloorKey = []byte("kadosession-log-version-floor")

// raiseVersionFloor makes v the node's floor, on disk first.
func (n *Node) raiseVersionFloor(v int) {
	if err := n.bolt.SetUint64(versionFloorKey, uint64(v)); err != nil {
		n.log.Warn("cannot record that every member applies a raft log version", "log_version", v, "error", err)
		return
	}
	n.versionFloor.Store(int32(v))
	n.log.Info("every member applies this raft log version; a leader writes it from now on", "log_version", v)
}

// askLogVersion asks member id for its log version and notes the answer.
func (n *Node) askLogVersion(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) {
	body, err := n.adminCall(ctx, string(addr), []byte(`{"op":"term"}`))
	if err != nil {
		return
	}
	var r termReply
	if json.Unmarshal(body, &r) == nil && r.ID == string(id) {
		n.versions.seen(id, r.LogVersion)
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
	if v := n.clusterVersion.Load(); v >= 0 {
		return int(v), n.behind()
	}
	return n.clusterLogVersion(ctx)
}

// behind names, for messages, a member whose last report is the oldest.
func (n *Node) behind() raft.ServerID {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return ""
	}
	least, who := n.ownLogVersion(), raft.ServerID("")
	for _, s := range f.Configuration().Servers {
		if v, _ := n.versions.known(s.ID); s.ID != raft.ServerID(n.id) && v < least {
			least, who = v, s.ID
		}
	}
	return who
}
