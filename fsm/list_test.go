package fsm

import (
	"fmt"
	"slices"
	"testing"
)

func TestStateList(t *testing.T) {
	s := NewState()
	const duration = 1000
	var live []string
	for i := range 300 {
		sid := fmt.Sprintf("a:%03d", i)
		written := int64(5000)
		if i%7 == 0 {
			written = 100 // expired at now=5000
		} else {
			live = append(live, sid)
		}
		s.Apply(&Command{Op: OpSave, Time: written, SID: sid, Data: []byte(`{"i":` + fmt.Sprint(i) + `}`)})
	}
	s.Apply(&Command{Op: OpSave, Time: 5000, SID: "b:1", Data: []byte(`{}`)})
	s.Apply(&Command{Op: OpSave, Time: 5000, SID: "a", Data: []byte(`{}`)}) // sorts before "a:"

	ids := func(page []ListEntry) []string {
		var out []string
		for _, e := range page {
			out = append(out, e.SID)
		}
		return out
	}
	tests := []struct {
		name, prefix, after string
		limit               int
		want                []string
		more                bool
	}{
		{name: "all of a prefix, no limit", prefix: "a:", want: live},
		{name: "first page", prefix: "a:", limit: 10, want: live[:10], more: true},
		{name: "after a cursor", prefix: "a:", after: live[9], limit: 10, want: live[10:20], more: true},
		{name: "last page exactly", prefix: "a:", after: live[len(live)-6], limit: 5, want: live[len(live)-5:]},
		{name: "cursor past the end", prefix: "a:", after: "a:~", limit: 5},
		{name: "cursor before the prefix", prefix: "b:", after: "a:500", limit: 5, want: []string{"b:1"}},
		{name: "no prefix", after: "a:298", limit: 3, want: []string{"a:299", "b:1"}},
		{name: "no match", prefix: "zz", limit: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, more := s.List(tt.prefix, tt.after, tt.limit, 5000, duration)
			if got := ids(page); !slices.Equal(got, tt.want) || more != tt.more {
				t.Fatalf("List(%q, %q, %d) = %v, more=%v; want %v, more=%v", tt.prefix, tt.after, tt.limit, got, more, tt.want, tt.more)
			}
		})
	}
	// Expiry as Get judges it: duration <= 0 never expires.
	if page, _ := s.List("a:", "", 0, 5000, 0); len(page) != 300 {
		t.Fatalf("List with no lifetime returned %d sessions, want 300", len(page))
	}
	page, _ := s.List("a:001", "", 1, 5000, duration)
	if len(page) != 1 || string(page[0].Record.Data) != `{"i":1}` {
		t.Fatalf("record of a:001 = %+v", page)
	}
}
