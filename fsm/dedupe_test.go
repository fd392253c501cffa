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
