package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/transport"
)

// TestListRealNode: List against a real node returns the live sessions
// under a prefix as Restore returns them, across several pages (sessions
// large enough that only two fit the node's page), and an empty non-nil
// map when none matches.
func TestListRealNode(t *testing.T) {
	node, err := cluster.Open(cluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatalf("open node: %v", err)
	}
	t.Cleanup(func() { _ = node.Close() })
	poll(t, node.Ready, 10*time.Second)
	s := newStore(t, client.Config{Addrs: []string{node.Addr()}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if all, err := s.List(ctx, ""); err != nil || all == nil || len(all) != 0 {
		t.Fatalf("List on an empty node = %v, %v; want an empty non-nil map", all, err)
	}
	want := map[string]map[string]json.RawMessage{}
	blob := raw(`"` + strings.Repeat("y", 200<<10) + `"`)
	for i := range 7 {
		sid := fmt.Sprintf("p:%d", i)
		data := map[string]json.RawMessage{"blob": blob, "i": raw(fmt.Sprint(i))}
		if err := s.Save(ctx, sid, data); err != nil {
			t.Fatalf("Save %s: %v", sid, err)
		}
		want[sid] = data
	}
	for _, sid := range []string{"q:1", "p"} {
		if err := s.Save(ctx, sid, map[string]json.RawMessage{"n": raw(`1`)}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List(ctx, "p:")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List(p:) returned %d sessions, want %d (the 7 of 200 KiB, over 4 pages)", len(got), len(want))
	}
	restored, _, err := s.Restore(ctx, "p:3")
	if err != nil || !reflect.DeepEqual(got["p:3"], restored) {
		t.Fatalf("listed p:3 differs from Restore's (%v)", err)
	}
	if got, err := s.List(ctx, ""); err != nil || len(got) != 9 {
		t.Fatalf("List(\"\") = %d sessions, %v; want 9", len(got), err)
	}
	if got, err := s.List(ctx, "none:"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("List(none:) = %v, %v; want an empty non-nil map", got, err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if got, err := s.List(cctx, "p:"); !errors.Is(err, context.Canceled) || got != nil {
		t.Fatalf("List with a cancelled context = %v, %v; want context.Canceled", got, err)
	}
}

// pagingHandler answers the list admin op from a script of pages and
// records the requests it got.
type pagingHandler struct {
	*memHandler
	answer func(call int, req map[string]any) ([]byte, error)

	mu   sync.Mutex
	reqs []map[string]any
}

func (h *pagingHandler) Admin(_ context.Context, body []byte) ([]byte, error) {
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.reqs = append(h.reqs, req)
	call, answer := len(h.reqs), h.answer
	h.mu.Unlock()
	return answer(call, req)
}

func (h *pagingHandler) setAnswer(f func(call int, req map[string]any) ([]byte, error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.answer = f
}

// TestListPaging: List follows the node's cursor page by page, sends the
// prefix and a bounded limit each time, and refuses answers that would
// loop forever or are not sessions.
func TestListPaging(t *testing.T) {
	ctx := context.Background()
	pages := []string{
		`{"sessions":[{"sid":"a:1","data":{"k":1}},{"sid":"a:2","data":{}}],"next":"a:2","done":false}`,
		`{"sessions":[{"sid":"a:3","data":{"k":[3]}}],"next":"a:3","done":false}`,
		`{"sessions":[],"next":"a:3","done":true}`,
	}
	h := &pagingHandler{memHandler: newMemHandler(), answer: func(call int, _ map[string]any) ([]byte, error) {
		return []byte(pages[call-1]), nil
	}}
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}})
	got, err := s.List(ctx, "a:")
	want := map[string]map[string]json.RawMessage{"a:1": {"k": raw(`1`)}, "a:2": {}, "a:3": {"k": raw(`[3]`)}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %v, %v; want %v", got, err, want)
	}
	h.mu.Lock()
	reqs := h.reqs
	h.mu.Unlock()
	if len(reqs) != 3 {
		t.Fatalf("List made %d requests for 3 pages", len(reqs))
	}
	for i, after := range []string{"", "a:2", "a:3"} {
		r := reqs[i]
		limit, _ := r["limit"].(float64)
		if r["op"] != "list" || r["prefix"] != "a:" || r["after"] != after || limit < 1 || limit > cluster.MaxListLimit {
			t.Fatalf("request %d = %v; want op list, prefix a:, after %q, a limit in 1..%d", i, r, after, cluster.MaxListLimit)
		}
	}

	bad := []struct {
		name, page, want string
	}{
		{"cursor does not move", `{"sessions":[{"sid":"a","data":{}}],"next":"","done":false}`, "neither done nor past"},
		{"empty page not done", `{"sessions":[],"next":"z","done":false}`, "neither done nor past"},
		{"data not an object", `{"sessions":[{"sid":"a","data":[1]}],"next":"a","done":true}`, "not a JSON object"},
		{"data null", `{"sessions":[{"sid":"a","data":null}],"next":"a","done":true}`, "not a JSON object"},
		{"not a page", `[1,2]`, "not a list page"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			h.setAnswer(func(int, map[string]any) ([]byte, error) { return []byte(tt.page), nil })
			if got, err := s.List(ctx, "a"); err == nil || got != nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("List over %s = %v, %v; want an error saying %q", tt.page, got, err, tt.want)
			}
		})
	}

	// A node's error is wrapped, keeping its code for errors.Is.
	h.setAnswer(func(int, map[string]any) ([]byte, error) {
		return nil, transport.Errorf(transport.CodeBadRequest, "list: limit 0 is out of range")
	})
	if _, err := s.List(ctx, "a"); !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), "list") {
		t.Fatalf("List over a refusing node = %v; want ErrBadRequest", err)
	}
}
