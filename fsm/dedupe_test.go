package fsm

import "testing"

// TestAppliedRemembersWrites: the state machine remembers the ids of the
// writes it applied (within the window) and the result of each, which the
// leader checks before proposing a retry; Apply itself never skips.
func TestAppliedRemembersWrites(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, Time: 900, SID: "s1", Data: []byte(`{"b":1}`)})
	if r := s.Apply(&Command{Op: OpDelete, Time: 1000, ID: RequestID{7}, SID: "s1"}); r.Count != 1 {
		t.Fatalf("delete removed %d", r.Count)
	}
	if count, ok := s.Applied(RequestID{7}, 1001); !ok || count != 1 {
		t.Fatalf("Applied = %d, %v", count, ok)
	}
	if _, ok := s.Applied(RequestID{8}, 1001); ok {
		t.Fatal("an id never applied is reported applied")
	}
	if _, ok := s.Applied(RequestID{7}, 1000+DedupeWindow); ok {
		t.Fatal("an id past the window is still remembered")
	}
	if n := s.applied.Len(); n != 0 {
		t.Fatalf("dedupe table holds %d ids after the window", n)
	}
}

// TestAppliedForgetsWithoutChecks: a follower applies writes but never asks
// Applied (only a leader does, before proposing); its table must still
// forget ids past the window instead of growing with every write.
func TestAppliedForgetsWithoutChecks(t *testing.T) {
	s := NewState()
	for i := 0; i < 100_000; i++ {
		var id RequestID
		id[0], id[1], id[2] = byte(i), byte(i>>8), byte(i>>16)
		s.Apply(&Command{Op: OpSave, ID: id, SID: "s", Data: []byte(`{}`), Time: int64(i)}) // 1 ms apart
	}
	if n := s.applied.Len(); n > DedupeWindow+1 {
		t.Fatalf("after 100000 writes 1 ms apart the table holds %d ids; the window is %d ms", n, DedupeWindow)
	}
	if len(s.applied.order)-s.applied.head > DedupeWindow+1 {
		t.Fatalf("the order list holds %d live entries", len(s.applied.order)-s.applied.head)
	}
}

// TestRememberAppliedSkipsPatches: the ids refilled at start (from log
// entries before the snapshot) come without results; a patch may have
// failed in Apply, so its retry must not be answered as done.
func TestRememberAppliedSkipsPatches(t *testing.T) {
	s := NewState()
	s.RememberApplied(&Command{Op: OpBatch, Time: 1000, Batch: []Command{
		{Op: OpSave, ID: RequestID{1}, SID: "a", Data: []byte(`{}`), Time: 1000},
		{Op: OpPatch, ID: RequestID{2}, SID: "a", Time: 1000},
		{Op: OpDelete, ID: RequestID{3}, SID: "a", Time: 1000},
	}})
	for id, want := range map[byte]bool{1: true, 2: false, 3: true} {
		if _, ok := s.Applied(RequestID{id}, 1001); ok != want {
			t.Errorf("Applied(%d) = %v, want %v", id, ok, want)
		}
	}
	if _, ok := s.Get("a", 1001, 0); ok {
		t.Error("RememberApplied changed the sessions")
	}
}
