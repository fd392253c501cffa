package fsm

import (
	"bytes"
	"fmt"
	"io"

	"github.com/hashicorp/raft"
)

// FSM adapts a State to raft. Raft calls Apply, ApplyBatch, Snapshot and
// Restore from its one FSM goroutine; the State stays readable from any
// goroutine meanwhile.
type FSM struct {
	State *State
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// NewFSM returns an FSM over an empty State.
func NewFSM() *FSM { return &FSM{State: NewState()} }

// Apply applies one log entry. It returns a Result for a single command and
// a []Result for an OpBatch. An entry that does not decode is a bug in the
// writer or a corrupt log: it panics with the index rather than let replicas
// diverge.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, err := DecodeCommand(l.Data)
	if err != nil {
		panic(fmt.Sprintf("fsm: log entry %d (term %d): %v", l.Index, l.Term, err))
	}
	ownData(&c)
	if c.Op == OpBatch {
		return f.State.ApplyBatch(c.Batch)
	}
	return f.State.Apply(&c)
}

// ApplyBatch applies consecutive log entries; raft hands it every entry it
// has committed at once.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	for i, l := range logs {
		out[i] = f.Apply(l)
	}
	return out
}

// Snapshot captures the state (cheaply: see State.Capture); the document is
// written later by Persist, while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{view: f.State.Capture()}, nil
}

// Restore replaces the state with a snapshot, which is a save-file document.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.State.Restore(rc); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	return nil
}

type snapshot struct{ view *View }

// Persist writes the save-file document to the snapshot sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.view.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release does nothing: the view is garbage once unreferenced.
func (s *snapshot) Release() {}

// ownData copies the data of c's saves out of the log entry they were
// decoded from: an entry carries a batch of up to 64 saves, and one record
// still pointing into it kept all of it alive after the others were
// overwritten. (Patches build new data; other stores, such as
// middleware.MemoryStore, hand State fresh data and need no copy.)
func ownData(c *Command) {
	if c.Op == OpSave {
		c.Data = bytes.Clone(c.Data)
	}
	for i := range c.Batch {
		ownData(&c.Batch[i])
	}
}
