package fsm

import (
	"bytes"
	"slices"
	"testing"
)

func TestUserIndex(t *testing.T) {
	s := NewState()
	apply := func(c Command) Result { t.Helper(); return s.Apply(&c) }
	apply(Command{Op: OpSave, Time: 100, SID: "a1", Data: []byte(`{"_user":"alice","n":1}`)})
	apply(Command{Op: OpSave, Time: 100, SID: "a2", Data: []byte(`{"_user":"alice"}`)})
	apply(Command{Op: OpSave, Time: 100, SID: "b1", Data: []byte(`{"_user":"bob"}`)})
	apply(Command{Op: OpSave, Time: 100, SID: "anon", Data: []byte(`{"x":1}`)})
	if got := s.UserSessions("alice", 100, 0); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Fatalf("alice: %v", got)
	}
	// A patch that sets the user moves the session; one that removes it, drops it.
	apply(Command{Op: OpPatch, Time: 101, SID: "anon", Set: []Field{{Key: UserKey, Value: []byte(`"bob"`)}}})
	apply(Command{Op: OpPatch, Time: 101, SID: "a2", Del: []string{UserKey}})
	if got := s.UserSessions("bob", 101, 0); !slices.Equal(got, []string{"anon", "b1"}) {
		t.Fatalf("bob after patches: %v", got)
	}
	if got := s.UserSessions("alice", 101, 0); !slices.Equal(got, []string{"a1"}) {
		t.Fatalf("alice after patches: %v", got)
	}
	// The index survives a snapshot (the save-file document) and restore.
	var doc bytes.Buffer
	s.Capture().WriteTo(&doc)
	r := NewFSM()
	m, err := ReadDocument(&doc, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.State.Replace(m)
	if got := r.State.UserSessions("bob", 101, 0); !slices.Equal(got, []string{"anon", "b1"}) {
		t.Fatalf("bob after restore: %v", got)
	}
	// Revoking a user deletes exactly their sessions, replicated as a command.
	if res := apply(Command{Op: OpDeleteUser, Time: 102, SID: "bob"}); res.Count != 2 {
		t.Fatalf("delete bob removed %d", res.Count)
	}
	if _, ok := s.Get("b1", 102, 0); ok || s.Len() != 2 || len(s.UserSessions("bob", 102, 0)) != 0 {
		t.Fatalf("after revoking bob: %d sessions, bob has %v", s.Len(), s.UserSessions("bob", 102, 0))
	}
	// Expired sessions are not listed, and the prune drops them from the index.
	if got := s.UserSessions("alice", 1000, 500); len(got) != 0 {
		t.Fatalf("expired alice sessions listed: %v", got)
	}
	apply(Command{Op: OpPrune, Time: 1000, Duration: 500})
	if len(s.users.list("alice")) != 0 {
		t.Fatal("pruned session left in the user index")
	}
	// Round trip of the command's encoding.
	c := Command{Op: OpDeleteUser, Time: 5, SID: "carol"}
	if d, err := DecodeCommand(c.Encode(nil)); err != nil || d.SID != "carol" || d.Op != OpDeleteUser {
		t.Fatalf("decode: %+v %v", d, err)
	}
}

// TestDeleteUserWithID: a revoke without an id encodes as it did before
// ids (entries already in logs decode unchanged); with one it has a byte of
// its own, round-trips its id, and Apply remembers it with its count, so a
// retry is answered (State.Applied) instead of run again.
func TestDeleteUserWithID(t *testing.T) {
	plain := Command{Op: OpDeleteUser, Time: 5, SID: "carol"}
	want := append([]byte{byte(OpDeleteUser), 10}, append([]byte{5}, "carol"...)...)
	if got := plain.Encode(nil); string(got) != string(want) {
		t.Fatalf("a revoke without an id encodes as %x, want %x (as before ids)", got, want)
	}
	withID := plain
	withID.ID = RequestID{1, 2, 3}
	enc := withID.Encode(nil)
	if enc[0] != byte(opDeleteUserOnce) {
		t.Fatalf("a revoke with an id has op byte %d, want %d", enc[0], opDeleteUserOnce)
	}
	d, err := DecodeCommand(enc)
	if err != nil || d.Op != OpDeleteUser || d.ID != withID.ID || d.SID != "carol" || d.Time != 5 {
		t.Fatalf("decode: %+v %v", d, err)
	}

	s := NewState()
	for _, sid := range []string{"a", "b"} {
		s.Apply(&Command{Op: OpSave, Time: 1, SID: sid, Data: []byte(`{"_user":"carol"}`)})
	}
	if r := s.Apply(&d); r.Count != 2 {
		t.Fatalf("revoke removed %d, want 2", r.Count)
	}
	if n, ok := s.Applied(d.ID, 6); !ok || n != 2 {
		t.Fatalf("Applied(revoke's id) = %d, %v; want 2, true", n, ok)
	}
	if _, ok := s.Applied(RequestID{}, 6); ok {
		t.Fatal("the zero id counts as applied")
	}
	restarted := NewState()
	restarted.RememberApplied(&d)
	if n, ok := restarted.Applied(d.ID, 6); !ok || n != 0 {
		t.Fatalf("after a restart Applied(revoke's id) = %d, %v; want 0, true (the count is not known)", n, ok)
	}
}

// TestCommandLogVersion: a command needs log version 1 exactly when its
// encoding (or a command's of its batch) uses a byte past OpDeleteUser,
// which builds that report no version cannot apply.
func TestCommandLogVersion(t *testing.T) {
	id := RequestID{1}
	cmds := []Command{
		{Op: OpSave, SID: "a", Data: []byte(`{}`), ID: id},
		{Op: OpPatch, SID: "a", ID: id},
		{Op: OpPatch, SID: "a", ID: id, IfExists: true},
		{Op: OpDelete, SID: "a", ID: id},
		{Op: OpTouch, SID: "a", ID: id},
		{Op: OpPrune, Duration: 1},
		{Op: OpDeleteUser, SID: "u"},
		{Op: OpDeleteUser, SID: "u", ID: id},
		{Op: OpExpire, Duration: 1, Del: []string{"a"}},
	}
	for _, c := range cmds {
		b := c.Encode(nil)
		want := 0
		if Op(b[0]) > OpDeleteUser {
			want = 1
		}
		if got := c.LogVersion(); got != want {
			t.Errorf("%v (log byte %d): log version %d, want %d", c.Op, b[0], got, want)
		}
		batch := Command{Op: OpBatch, Batch: []Command{cmds[0], c}}
		if got := batch.LogVersion(); got != want {
			t.Errorf("a batch holding %v (log byte %d): log version %d, want %d", c.Op, b[0], got, want)
		}
	}
	if LogVersion != 1 {
		t.Errorf("LogVersion %d: a new version needs its row in LogVersion's table and here", LogVersion)
	}
}
