package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

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
}

// logFailure is a run of failed appends: since the first, and the latest
// error.
type logFailure struct {
	since time.Time
	err   string
}

// note records the outcome of one append.
func (h *logHealth) note(err error) {
	switch cur := h.failing.Load(); {
	case err == nil && cur != nil:
		h.failing.Store(nil)
	case err != nil:
		since := time.Now()
		if cur != nil {
			since = cur.since
		}
		h.failing.Store(&logFailure{since: since, err: err.Error()})
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
