package cluster

import (
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
)

// rememberBeforeSnapshot refills the state machine's table of applied
// request ids (fsm.State.Applied) after raft restored snapshot index
// snapIndex at start: the snapshot does not carry the table, but the log
// still holds the entries before snapIndex that the snapshot left behind
// (Config.TrailingLogs: the last minute's, unless a small disk cannot hold
// them; trailingFor). Entries older than the dedupe window are skipped:
// the walk goes backwards from snapIndex and stops at the first one older
// than the window, or at the first entry the log still has. It reports how
// many entries it read.
func rememberBeforeSnapshot(logs raft.LogStore, snapIndex, snapTerm uint64, st *fsm.State, now time.Time) (int, error) {
	first, err := logs.FirstIndex()
	if err != nil || first == 0 || snapIndex < first {
		return 0, err
	}
	// Only a log whose entry at snapIndex has the snapshot's term holds the
	// committed entries before it: after installing a leader's snapshot, a
	// node may keep an old tail of entries that were never committed.
	var at raft.Log
	if err := logs.GetLog(snapIndex, &at); err != nil || at.Term != snapTerm {
		return 0, nil
	}
	horizon := now.UnixMilli() - fsm.DedupeWindow
	var cmds []fsm.Command
	read := 0
	for i := snapIndex; i >= first; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			if err == raft.ErrLogNotFound {
				break
			}
			return read, err
		}
		read++
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := fsm.DecodeCommand(l.Data)
		if err != nil {
			return read, err
		}
		if latestTime(&c) < horizon {
			break
		}
		cmds = append(cmds, c)
		if i == first {
			break
		}
	}
	for i := len(cmds) - 1; i >= 0; i-- { // in log order
		st.RememberApplied(&cmds[i])
	}
	return read, nil
}

// latestTime is the latest leader time stamped on c or, for a batch, on
// any of its commands.
func latestTime(c *fsm.Command) int64 {
	t := c.Time
	for i := range c.Batch {
		t = max(t, c.Batch[i].Time)
	}
	return t
}
