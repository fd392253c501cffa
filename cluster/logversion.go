package cluster

import (
	"context"
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

// clusterLogVersion returns the newest log version every member applies,
// and when it is older than this build's, a member that applies only that
// one. Members that have not reported theirs lately, or reported an older
// one, are asked now (at most a second); one that never answered counts as
// version 0.
func (n *Node) clusterLogVersion(ctx context.Context) (int, raft.ServerID) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0, ""
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range f.Configuration().Servers {
		if v, fresh := n.versions.known(s.ID); s.ID == raft.ServerID(n.id) || (fresh && v >= n.ownLogVersion()) {
			continue
		}
		wg.Add(1)
		go func(id raft.ServerID, addr raft.ServerAddress) {
			defer wg.Done()
			_, _ = n.askTerm(ctx, id, addr) // notes the version it reports
		}(s.ID, s.Address)
	}
	wg.Wait()
	least, behind := n.ownLogVersion(), raft.ServerID("")
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(n.id) {
			continue
		}
		if v, _ := n.versions.known(s.ID); v < least {
			least, behind = v, s.ID
		}
	}
	n.clusterVersion.Store(int32(least))
	return least, behind
}

// olderMember says, for messages, that member id runs an older build.
func olderMember(id raft.ServerID, v int) string {
	return fmt.Sprintf("member %s applies raft log version %d only (an older build, or it did not answer), and this build writes version %d; upgrade every member", id, v, fsm.LogVersion)
}

// cachedLogVersion is clusterLogVersion as last found, for the request
// path; found now when not yet since the node started.
func (n *Node) cachedLogVersion(ctx context.Context) int {
	if v := n.clusterVersion.Load(); v >= 0 {
		return int(v)
	}
	v, _ := n.clusterLogVersion(ctx)
	return v
}
