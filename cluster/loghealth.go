package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/internal/bytesize"
	"github.com/kadosession/kadosession/transport"
)

// logHealth remembers whether this node can write its raft log: the first
// failure of the latest run of failed appends, until an append succeeds.
// A node whose disk is full only timed out, or found no leader (a leader
// that cannot append steps down), and said nothing of the cause: clients
// got "timed out after 5s", /readyz "no leader known", and status pointed
// at the network. Readiness and the errors of client requests now name it.
type logHealth struct {
	failing atomic.Pointer[logFailure]
	// changed is signalled, without blocking, after every failed append
	// and when an append succeeds after failures (watchLogHealth).
	changed chan struct{}
}

// logFailure is a run of failed appends: since the first, the latest, how
// many, and the latest error.
type logFailure struct {
	since, last time.Time
	appends     int
	err         string
}

// note records the outcome of one append.
func (h *logHealth) note(err error) {
	switch cur := h.failing.Load(); {
	case err == nil && cur != nil:
		h.failing.Store(nil)
	case err != nil:
		now := time.Now()
		f := &logFailure{since: now, last: now, appends: 1, err: err.Error()}
		if cur != nil {
			f.since, f.appends = cur.since, cur.appends+1
		}
		h.failing.Store(f)
	default:
		return
	}
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// recent returns the run of failed appends when its latest failure is
// recent enough that the node is still failing, not merely idle since
// (a node retries at least every 2×logFailHeartbeatMax while it fails).
func (h *logHealth) recent() *logFailure {
	if f := h.failing.Load(); f != nil && time.Since(f.last) < 3*logFailHeartbeatMax {
		return f
	}
	return nil
}

// logFailHeartbeatMax bounds the heartbeat and election timeouts of a node
// whose log appends fail (watchLogHealth).
const logFailHeartbeatMax = 2 * time.Second

// watchLogHealth runs for the node's life and acts on log failures. A
// single node whose disk was full won an election, failed to append its
// first entry, stepped down and stood again every 300 ms, six log lines a
// round: its term went from 2 to 614 in three minutes (a disk-full drill).
// While appends fail, its heartbeat and election timeouts double with
// each failed append, up to logFailHeartbeatMax, so it tries again every
// few seconds; raft's messages of those rounds are logged at debug
// (quietRaft), and this logs the failure once, then once a minute, and
// its end once appends have succeeded for logRecoverySettle. The timeouts
// are restored by the first append that succeeds.
// A single node that fails again and again also refuses requests at once
// (failingAlone).
func (n *Node) watchLogHealth() {
	defer n.bg.Done()
	tick := time.NewTicker(logProbeInterval)
	defer tick.Stop()
	var (
		run       *logFailure // the latest run of the failure being reported
		first     time.Time   // when the reported failure began
		earlier   int         // failed appends of its runs before run
		warned    time.Time
		recovered time.Time        // when an append last succeeded after run
		settled   <-chan time.Time // fires logRecoverySettle after recovered
	)
	for {
		select {
		case <-n.stop:
			return
		case <-n.logHealth.changed:
		case <-tick.C:
		case <-settled:
		}
		f := n.logHealth.failing.Load()
		if f != nil && time.Since(f.last) >= logProbeInterval && n.probeLog() {
			// Nothing appended lately (an idle follower, one that caught
			// up by a snapshot): the probe says the log can be written.
			n.logHealth.note(nil)
			f = nil
		}
		switch {
		case f == nil && run != nil && settled == nil:
			// Restore the timeouts at once; say so once it holds.
			n.setElectionTimeouts(n.cfg.HeartbeatTimeout, n.cfg.ElectionTimeout)
			recovered, settled = time.Now(), time.After(logRecoverySettle)
		case f == nil && run != nil && time.Since(recovered) >= logRecoverySettle:
			if d, err := freeSpace(n.cfg.DataDir); err == nil && d.free < logLowSpace {
				// Appends that fit in the log file's free pages prove little
				// on a disk with no room left (a drill's node said it could
				// write again with 0 bytes free, then failed at the next
				// save): wait for room, or the next failure.
				if time.Since(warned) >= time.Minute {
					n.log.Warn("this node's raft log appends succeed again, but its disk is full", "free", bytesize.Text(d.free))
					warned = time.Now()
				}
				settled = time.After(logRecoverySettle)
				break
			}
			// raft's election messages of the round that recovered were
			// logged at debug: say where the node stands.
			leader, _ := n.raft.LeaderWithID()
			n.log.Info("this node can write its raft log again", "failed_for", recovered.Sub(first).Round(time.Millisecond), "failed_appends", earlier+run.appends,
				"state", n.raft.State().String(), "leader", leader)
			run, settled = nil, nil
		case f != nil:
			switch {
			case run == nil:
				n.log.Error("this node cannot write its raft log; it retries every few seconds, and requests it cannot have served by another node fail with this error", "error", f.err)
				first, earlier, warned = f.since, 0, time.Now()
			case !f.since.Equal(run.since):
				// It failed again before its recovery was reported (within
				// logRecoverySettle of an append that succeeded, or with
				// the disk still full: a full disk takes a small append
				// now and then): the same failure, not news.
				earlier += run.appends
				fallthrough
			default:
				if time.Since(warned) >= time.Minute {
					n.log.Warn(fmt.Sprintf("this node cannot write its raft log (for %s): %s", time.Since(first).Round(time.Second), f.err), "failed_appends", earlier+f.appends)
					warned = time.Now()
				}
			}
			run, settled = f, nil
			hb := n.cfg.HeartbeatTimeout << min(f.appends, 10)
			hb = max(min(hb, logFailHeartbeatMax), n.cfg.HeartbeatTimeout)
			n.setElectionTimeouts(hb, max(hb, n.cfg.ElectionTimeout))
		}
	}
}

// logRecoverySettle is how long appends must go on succeeding before a
// node whose log failed says it recovered. A full disk took a small append
// now and then: the drill's nodes logged the error, that they could write
// again 0.3-1 s later, then the error again, every time.
const logRecoverySettle = 3 * time.Second

// logLowSpace is the free space under which appends that succeed after a
// failure are not yet taken as its end (watchLogHealth).
const logLowSpace = 1 << 20

// logProbeInterval is how long a node whose log appends failed waits for
// another append before it probes the log store itself (probeLog).
const logProbeInterval = 5 * time.Second

// logProbeKey is the raft log store's stable-store key that probeLog
// writes; nothing reads it.
var logProbeKey = []byte("kadosession-log-probe")

// probeLog reports whether the raft log's store can be written now: it
// writes, then clears, a value the size of a large log entry under a key
// of its own. Only an append cleared a node's log failure, and a follower
// of an idle cluster, or one that caught up by installing a snapshot,
// appends nothing: it stayed "cannot write its raft log", not ready and
// with slowed elections, for minutes after its disk had room again (a
// disk-full drill).
func (n *Node) probeLog() bool {
	if err := n.bolt.Set(logProbeKey, make([]byte, 64<<10)); err != nil {
		return false
	}
	return n.bolt.Set(logProbeKey, nil) == nil
}

// setElectionTimeouts sets raft's heartbeat and election timeouts, when
// they differ (raft's own configuration is the only record of them).
func (n *Node) setElectionTimeouts(hb, election time.Duration) {
	n.changeRaftConfig("election timeouts", func(rc *raft.ReloadableConfig) {
		rc.HeartbeatTimeout, rc.ElectionTimeout = hb, election
	})
}

// changeRaftConfig applies change to raft's reloadable configuration, one
// change at a time (each reads the whole of it and writes it back), and
// only when it changes something; what names it in the warning a refused
// change logs.
func (n *Node) changeRaftConfig(what string, change func(*raft.ReloadableConfig)) {
	n.raftConfMu.Lock()
	defer n.raftConfMu.Unlock()
	rc := n.raft.ReloadableConfig()
	was := rc
	change(&rc)
	if rc == was {
		return
	}
	if err := n.raft.ReloadConfig(rc); err != nil {
		n.log.Warn("cannot change raft's "+what, "config", fmt.Sprintf("%+v", rc), "error", err)
	}
}

// String says what fails and for how long, for messages.
func (f *logFailure) String() string {
	return fmt.Sprintf("this node cannot write its raft log (for %s): %s", time.Since(f.since).Round(time.Second), f.err)
}

// healthLog is the raft log store with its appends noted in a logHealth.
type healthLog struct {
	raft.LogStore
	health *logHealth
}

func (s healthLog) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s healthLog) StoreLogs(logs []*raft.Log) error {
	err := s.LogStore.StoreLogs(logs)
	s.health.note(err)
	return err
}

// explain adds to err, a client request's failure to be served in time or
// at all, that this node cannot write its raft log, when that is so.
func (n *Node) explain(err error) error {
	if err == nil {
		return nil
	}
	f := n.logHealth.failing.Load()
	if f == nil {
		return err
	}
	var te *transport.Error
	switch {
	case errors.As(err, &te) && (te.Code == transport.CodeTimeout || te.Code == transport.CodeUnavailable):
		return &transport.Error{Code: te.Code, Message: te.Message + "; " + f.String(), Leader: te.Leader}
	case errors.Is(err, context.DeadlineExceeded):
		return &transport.Error{Code: transport.CodeTimeout, Message: err.Error() + "; " + f.String()}
	}
	return err
}
