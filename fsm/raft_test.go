package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// memSink is a raft.SnapshotSink that keeps the snapshot in memory.
type memSink struct {
	bytes.Buffer
	failWrite error
	closed    bool
	cancelled bool
}

var _ raft.SnapshotSink = (*memSink)(nil)

func (s *memSink) Write(p []byte) (int, error) {
	if s.failWrite != nil {
		return 0, s.failWrite
	}
	return s.Buffer.Write(p)
}
func (s *memSink) ID() string    { return "test-snapshot" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func TestFSMApply(t *testing.T) {
	f := NewFSM()
	cases := []struct {
		name  string
		cmd   Command
		check func(t *testing.T, got any)
	}{
		{
			name: "single save returns a Result",
			cmd:  Command{Op: OpSave, Time: 10, SID: "a", Data: []byte(`{"a":1}`)},
			check: func(t *testing.T, got any) {
				if r, ok := got.(Result); !ok || r.Err != nil {
					t.Fatalf("Apply = %#v, want a Result without error", got)
				}
			},
		},
		{
			name: "patch error travels in the Result",
			cmd:  Command{Op: OpPatch, Time: 11, SID: "a", MaxSize: 2, Set: []Field{{Key: "b", Value: []byte(`2`)}}},
			check: func(t *testing.T, got any) {
				if r, ok := got.(Result); !ok || !errors.Is(r.Err, ErrSessionTooLarge) {
					t.Fatalf("Apply = %#v, want ErrSessionTooLarge", got)
				}
			},
		},
		{
			name: "batch returns one Result per command",
			cmd: Command{Op: OpBatch, Time: 12, Batch: []Command{
				{Op: OpSave, Time: 12, SID: "b", Data: []byte(`{}`)},
				{Op: OpDelete, Time: 12, SID: "a"},
				{Op: OpPatch, Time: 12, SID: "c", MaxSize: 1, Set: []Field{{Key: "k", Value: []byte(`1`)}}},
				{Op: OpDelete, Time: 12, SID: "missing"},
			}},
			check: func(t *testing.T, got any) {
				rs, ok := got.([]Result)
				if !ok || len(rs) != 4 {
					t.Fatalf("Apply = %#v, want 4 Results", got)
				}
				if rs[0].Err != nil || rs[1].Count != 1 || !errors.Is(rs[2].Err, ErrSessionTooLarge) || rs[3].Count != 0 {
					t.Fatalf("batch results = %+v", rs)
				}
			},
		},
		{
			name: "prune count",
			cmd:  Command{Op: OpPrune, Time: 1000, Duration: 500},
			check: func(t *testing.T, got any) {
				if r, ok := got.(Result); !ok || r.Count != 1 {
					t.Fatalf("Apply = %#v, want Count 1 (b)", got)
				}
			},
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, applyLog(t, f, uint64(i+1), tc.cmd.Encode(nil)))
		})
	}
	if f.State.Len() != 0 {
		t.Fatalf("%d sessions left, want 0", f.State.Len())
	}
}

func TestFSMApplyIgnoresNonCommands(t *testing.T) {
	f := NewFSM()
	for _, typ := range []raft.LogType{raft.LogNoop, raft.LogBarrier, raft.LogConfiguration} {
		if got := f.Apply(&raft.Log{Index: 1, Type: typ, Data: []byte("garbage")}); got != nil {
			t.Errorf("Apply(%v) = %v, want nil", typ, got)
		}
	}
}

func TestFSMApplyPanicsOnCorruptEntry(t *testing.T) {
	cases := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown op", []byte{0xee, 0}},
		{"truncated", []byte{byte(OpSave), 0, 5, 'a'}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				p := recover()
				if p == nil {
					t.Fatal("Apply of an undecodable entry did not panic")
				}
				msg := fmt.Sprint(p)
				if !strings.Contains(msg, "log entry 12345") || !strings.Contains(msg, "term 6") {
					t.Fatalf("panic %q does not name the index and term", msg)
				}
			}()
			NewFSM().Apply(&raft.Log{Index: 12345, Term: 6, Type: raft.LogCommand, Data: tc.data})
		})
	}
}

func TestFSMApplyBatch(t *testing.T) {
	f := NewFSM()
	logs := []*raft.Log{
		{Index: 1, Type: raft.LogCommand, Data: (&Command{Op: OpSave, SID: "a", Data: []byte(`{}`)}).Encode(nil)},
		{Index: 2, Type: raft.LogNoop},
		{Index: 3, Type: raft.LogCommand, Data: (&Command{Op: OpBatch, Batch: []Command{{Op: OpDelete, SID: "a"}}}).Encode(nil)},
	}
	out := f.ApplyBatch(logs)
	if len(out) != 3 {
		t.Fatalf("%d results, want 3", len(out))
	}
	if _, ok := out[0].(Result); !ok {
		t.Errorf("out[0] = %#v, want a Result", out[0])
	}
	if out[1] != nil {
		t.Errorf("out[1] = %#v, want nil", out[1])
	}
	if rs, ok := out[2].([]Result); !ok || len(rs) != 1 || rs[0].Count != 1 {
		t.Errorf("out[2] = %#v, want []Result{{Count:1}}", out[2])
	}
}

func TestFSMSnapshotRestore(t *testing.T) {
	f := NewFSM()
	for i, sid := range awkwardSIDs {
		applyLog(t, f, uint64(i+1), (&Command{Op: OpSave, Time: int64(1000 + i), SID: sid,
			Data: []byte(fmt.Sprintf(`{"i":%d,"s":"x\"y"}`, i))}).Encode(nil))
	}
	want := f.State.Capture().Hash()

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Changes after Snapshot are not in it.
	applyLog(t, f, 100, (&Command{Op: OpDelete, SID: "sid1"}).Encode(nil))
	applyLog(t, f, 101, (&Command{Op: OpSave, SID: "later", Data: []byte(`{}`)}).Encode(nil))

	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed = %v, cancelled = %v; want closed only", sink.closed, sink.cancelled)
	}

	g := NewFSM()
	applyLog(t, g, 1, (&Command{Op: OpSave, SID: "stale", Data: []byte(`{}`)}).Encode(nil))
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := g.State.Capture().Hash(); got != want {
		t.Fatalf("restored hash %s, want %s", got, want)
	}
	if _, ok := g.State.Get("stale", 0, 0); ok {
		t.Fatal("Restore kept a session that was not in the snapshot")
	}
	if _, ok := g.State.Get("later", 0, 0); ok {
		t.Fatal("the snapshot holds a session saved after Snapshot")
	}
}

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

func TestFSMRestoreCorrupt(t *testing.T) {
	f := NewFSM()
	applyLog(t, f, 1, (&Command{Op: OpSave, SID: "keep", Data: []byte(`{}`)}).Encode(nil))
	before := f.State.Capture().Hash()
	rc := &closeRecorder{Reader: strings.NewReader(`{"a":[1]}`)}
	err := f.Restore(rc)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "restore snapshot") {
		t.Fatalf("Restore = %v, want a restore snapshot ErrCorrupt", err)
	}
	if !rc.closed {
		t.Error("Restore did not close the snapshot reader")
	}
	if f.State.Capture().Hash() != before {
		t.Fatal("a failed Restore changed the state")
	}
}

func TestSnapshotPersistError(t *testing.T) {
	f := NewFSM()
	applyLog(t, f, 1, (&Command{Op: OpSave, SID: "a", Data: []byte(`{}`)}).Encode(nil))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	sink := &memSink{failWrite: boom}
	if err := snap.Persist(sink); !errors.Is(err, boom) {
		t.Fatalf("Persist = %v, want %v", err, boom)
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("sink closed = %v, cancelled = %v; want cancelled only", sink.closed, sink.cancelled)
	}
}

// TestAppliedSaveOwnsItsData: a saved record must not point into the log
// entry it came in. An entry holds a batch of saves, and a record sharing
// its bytes kept the whole entry alive after the batch's other sessions
// were overwritten. Checked by writing over the entry after it was applied.
func TestAppliedSaveOwnsItsData(t *testing.T) {
	f := NewFSM()
	entry := (&Command{Op: OpBatch, Time: 5, Batch: []Command{
		{Op: OpSave, Time: 5, SID: "a", Data: []byte(`{"n":"aaaa"}`)},
		{Op: OpSave, Time: 5, SID: "b", Data: []byte(`{"n":"bbbb"}`)},
	}}).Encode(nil)
	f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: entry})
	for i := range entry {
		entry[i] = 'x'
	}
	for sid, want := range map[string]string{"a": `{"n":"aaaa"}`, "b": `{"n":"bbbb"}`} {
		r, ok := f.State.Get(sid, 5, 0)
		if !ok || string(r.Data) != want {
			t.Fatalf("session %s after its log entry was overwritten: %q (found %v), want %s", sid, r.Data, ok, want)
		}
	}
}
