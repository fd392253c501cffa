package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// listPages pages through {"op":"list"} on n until done and returns every
// page's answer, failing on an error or a page over the byte budget.
func listPages(t *testing.T, n *Node, prefix string, limit int) []listReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var pages []listReply
	after := ""
	for len(pages) < 100 {
		req := map[string]any{"op": "list", "prefix": prefix, "after": after}
		if limit != 0 {
			req["limit"] = limit
		}
		body, _ := json.Marshal(req)
		out, err := n.Admin(ctx, body)
		if err != nil {
			t.Fatalf("list %s via %s: %v", body, n.ID(), err)
		}
		if len(out) > listPageBytes {
			t.Fatalf("list page of %d bytes, over the %d-byte budget", len(out), listPageBytes)
		}
		var page listReply
		if err := json.Unmarshal(out, &page); err != nil {
			t.Fatalf("list answer %.200s: %v", out, err)
		}
		pages = append(pages, page)
		if page.Done {
			return pages
		}
		if page.Next <= after {
			t.Fatalf("list page after %q moved the cursor to %q", after, page.Next)
		}
		after = page.Next
	}
	t.Fatal("list did not finish within 100 pages")
	return nil
}

func pageSIDs(p listReply) []string {
	var out []string
	for _, s := range p.Sessions {
		out = append(out, s.SID)
	}
	return out
}

// TestListThroughFollower: the list op, sent to a follower of a three-node
// cluster, is answered by the leader page by page, in id order, limited by
// count and by bytes, filtered by prefix and by expiry; client.List, given
// only the follower, assembles the pages.
func TestListThroughFollower(t *testing.T) {
	// No prune during the test: expired sessions stay stored and only the
	// read must hide them.
	tc := newTestCluster(t, 3, func(c *Config) { c.PruneFrequency = time.Hour })
	f := tc.nodes[tc.follower()]
	c, err := client.New(client.Config{Addrs: []string{f.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	want := map[string]map[string]json.RawMessage{}
	save := func(sid string, data map[string]json.RawMessage) {
		t.Helper()
		if err := c.Save(ctx, sid, data); err != nil {
			t.Fatalf("save %s: %v", sid, err)
		}
		want[sid] = data
	}
	var app []string
	for i := range 25 {
		sid := fmt.Sprintf("app:%03d", i)
		app = append(app, sid)
		save(sid, map[string]json.RawMessage{"i": json.RawMessage(fmt.Sprint(i)), "s": json.RawMessage(`"é\u00e9"`)})
	}
	save("ap", map[string]json.RawMessage{})
	save("other:1", map[string]json.RawMessage{"o": json.RawMessage(`{"x":[1,2]}`)})
	// Six sessions of 200 KiB: no more than two fit a 512 KiB page.
	blob := json.RawMessage(`"` + strings.Repeat("x", 200<<10) + `"`)
	for i := range 6 {
		save(fmt.Sprintf("big:%d", i), map[string]json.RawMessage{"blob": blob, "i": json.RawMessage(fmt.Sprint(i))})
	}
	// Two sessions written 7 h ago (the duration is 6 h): stored, but
	// expired, so never listed.
	old := time.Now().Add(-7 * time.Hour).UnixMilli()
	doc := fmt.Sprintf(`{"op":"restore-batch","document":{"app:expired":{"n":1,"_written":%d},"big:expired":{"n":1,"_written":%d}}}`, old, old)
	if _, err := c.Admin(ctx, []byte(doc)); err != nil {
		t.Fatalf("restore-batch of expired sessions: %v", err)
	}
	l := tc.nodes[tc.leader()]
	if _, ok := l.State().Capture().Get("app:expired"); !ok {
		t.Fatal("the expired session is not stored on the leader; the test would prove nothing")
	}

	prefixed := func(prefix string) map[string]map[string]json.RawMessage {
		out := map[string]map[string]json.RawMessage{}
		for sid, d := range want {
			if strings.HasPrefix(sid, prefix) {
				out[sid] = d
			}
		}
		return out
	}
	for _, prefix := range []string{"app:", "big:", "", "ap", "other:", "none"} {
		got, err := c.List(ctx, prefix)
		if err != nil {
			t.Fatalf("client List(%q): %v", prefix, err)
		}
		if w := prefixed(prefix); got == nil || !reflect.DeepEqual(got, w) {
			t.Fatalf("client List(%q) = %d sessions %v, want %d %v", prefix, len(got), slices.Sorted(maps.Keys(got)), len(w), slices.Sorted(maps.Keys(w)))
		}
	}
	// Each listed map is what Restore returns.
	for _, sid := range []string{"app:007", "ap", "big:3"} {
		restored, found, err := c.Restore(ctx, sid)
		if err != nil || !found || !reflect.DeepEqual(restored, want[sid]) {
			t.Fatalf("Restore(%s) = %v %v, does not match what was saved and listed", sid, found, err)
		}
	}

	// Paging by count, through the follower's own Admin (it forwards).
	pages := listPages(t, f, "app:", 10)
	if len(pages) != 3 {
		t.Fatalf("25 sessions at 10 a page came in %d pages, want 3", len(pages))
	}
	for i, w := range [][]string{app[:10], app[10:20], app[20:]} {
		p := pages[i]
		if got := pageSIDs(p); !slices.Equal(got, w) || p.Next != w[len(w)-1] || p.Done != (i == 2) {
			t.Fatalf("page %d = %v next=%q done=%v; want %v", i, got, p.Next, p.Done, w)
		}
	}
	// A page that ends exactly at the last session says done.
	if pages := listPages(t, f, "app:", 25); len(pages) != 1 || len(pages[0].Sessions) != 25 {
		t.Fatalf("limit 25 over 25 sessions: %d pages", len(pages))
	}

	// Paging by bytes: the default limit, but only two big sessions fit.
	pages = listPages(t, f, "big:", 0)
	var got []string
	for _, p := range pages {
		if len(p.Sessions) > 2 {
			t.Fatalf("a page held %d sessions of 200 KiB, over the byte budget", len(p.Sessions))
		}
		got = append(got, pageSIDs(p)...)
	}
	if len(pages) < 3 || !slices.Equal(got, []string{"big:0", "big:1", "big:2", "big:3", "big:4", "big:5"}) {
		t.Fatalf("big sessions came in %d pages: %v", len(pages), got)
	}

	// A cursor past everything, and a prefix nothing has: one empty, done page.
	for _, q := range []string{`{"op":"list","prefix":"app:","after":"app:~"}`, `{"op":"list","prefix":"zzz"}`} {
		out, err := f.Admin(ctx, []byte(q))
		if err != nil || !strings.HasPrefix(string(out), `{"sessions":[],`) || !strings.HasSuffix(string(out), `"done":true}`) {
			t.Fatalf("%s = %s, %v; want an empty, done page", q, out, err)
		}
	}

	// The expired sessions are still stored everywhere: only the read
	// hides them.
	tc.waitSame()
	for _, n := range tc.nodes {
		if _, ok := n.State().Capture().Get("big:expired"); !ok {
			t.Fatalf("node %s pruned the expired session; the expiry check went untested", n.ID())
		}
	}
}

// TestListBadRequest: malformed list requests are refused with
// CodeBadRequest and a message saying what was wrong, over the wire and on
// a follower too (before any forwarding).
func TestListBadRequest(t *testing.T) {
	n := startNode(t, Config{})
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	long := strings.Repeat("s", fsm.MaxSIDLen+1)
	tests := []struct {
		name, body, want string
	}{
		{"limit zero", `{"op":"list","limit":0}`, "limit 0 is out of range"},
		{"limit negative", `{"op":"list","limit":-5}`, "limit -5 is out of range"},
		{"limit over the maximum", fmt.Sprintf(`{"op":"list","limit":%d}`, MaxListLimit+1), "out of range"},
		{"limit huge", `{"op":"list","limit":100000000000000000000}`, "limit"},
		{"limit not an integer", `{"op":"list","limit":2.5}`, "limit"},
		{"limit a string", `{"op":"list","limit":"10"}`, "limit"},
		{"prefix not a string", `{"op":"list","prefix":5}`, "prefix"},
		{"misspelt member", `{"op":"list","prefx":"app:"}`, `unknown field "prefx"`},
		{"prefix too long", `{"op":"list","prefix":"` + long + `"}`, "prefix is 513 bytes"},
		{"after too long", `{"op":"list","after":"` + long + `"}`, "after is 513 bytes"},
		{"not JSON", `{"op":"list",`, "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.Admin(ctx, []byte(tt.body))
			if !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("list %s = %s, %v; want a bad request saying %q", tt.body, out, err, tt.want)
			}
			var te *transport.Error
			if _, err := n.Admin(ctx, []byte(tt.body)); !asError(err, &te) || te.Code != transport.CodeBadRequest {
				t.Fatalf("Node.Admin(%s) = %v; want CodeBadRequest", tt.body, err)
			}
		})
	}
	// A well-formed request on the same node works.
	if out, err := c.Admin(ctx, []byte(`{"op":"list","limit":1}`)); err != nil || string(out) != `{"sessions":[],"next":"","done":true}` {
		t.Fatalf("empty list = %s, %v", out, err)
	}
}

// TestListReplyBudget: appendListReply cuts a page where the body would
// pass its budget, never before the first session, and the result is the
// JSON listReply decodes.
func TestListReplyBudget(t *testing.T) {
	entry := func(sid, data string) fsm.ListEntry {
		return fsm.ListEntry{SID: sid, Record: &fsm.Record{Data: []byte(data)}}
	}
	page := []fsm.ListEntry{entry("a", `{"k":"`+strings.Repeat("x", 100)+`"}`), entry("b\"<", `{}`), entry("c", `{"k":1}`), entry("d", "")}
	full := appendListReply(nil, page, false, "", 1<<20)
	for budget := 1; budget <= len(full); budget++ {
		out := appendListReply(nil, page, false, "", budget)
		var r listReply
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("budget %d: %s: %v", budget, out, err)
		}
		if len(r.Sessions) == 0 || len(r.Sessions) > 1 && len(out) > budget {
			t.Fatalf("budget %d: %d sessions in %d bytes", budget, len(r.Sessions), len(out))
		}
		if r.Done != (len(r.Sessions) == len(page)) || r.Next != page[len(r.Sessions)-1].SID {
			t.Fatalf("budget %d: %d sessions, next %q, done %v", budget, len(r.Sessions), r.Next, r.Done)
		}
		if budget == len(full) && len(r.Sessions) != len(page) {
			t.Fatalf("a budget of the full size (%d) cut the page to %d sessions", budget, len(r.Sessions))
		}
	}
	var r listReply
	if err := json.Unmarshal(full, &r); err != nil || string(r.Sessions[3].Data) != "{}" || r.Sessions[1].SID != "b\"<" {
		t.Fatalf("full page %s: %+v %v", full, r, err)
	}
	if out := appendListReply(nil, nil, false, "cursor", 10); string(out) != `{"sessions":[],"next":"cursor","done":true}` {
		t.Fatalf("empty page = %s", out)
	}
}
