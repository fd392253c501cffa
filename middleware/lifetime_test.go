package middleware

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// lifetimeHandler serves /set?v=… (sets "v"), /get (answers "v" and the
// keys), /regen (Regenerate) and /meta (tries to set the reserved key).
func lifetimeHandler(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		switch r.URL.Path {
		case "/set":
			s.Set("v", r.URL.Query().Get("v"))
		case "/regen":
			if err := s.Regenerate(r.Context()); err != nil {
				t.Errorf("Regenerate: %v", err)
			}
		case "/meta":
			s.Set(MetaKey, "forged")
		}
		var v string
		_ = s.GetInto("v", &v)
		fmt.Fprintf(w, "%s %s", v, strings.Join(s.Keys(), ","))
	})
}

// storedMeta returns the timestamps the store holds for sid.
func storedMeta(t *testing.T, st Store, sid string) (sessionMeta, bool) {
	t.Helper()
	data, found, err := st.Restore(context.Background(), sid)
	if err != nil || !found {
		t.Fatalf("Restore(%.8s…) = found %v, err %v; want the session", sid, found, err)
	}
	raw, ok := data[MetaKey]
	if !ok {
		return sessionMeta{}, false
	}
	var m sessionMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s = %s: %v", MetaKey, raw, err)
	}
	return m, true
}

func TestIdleTimeout(t *testing.T) {
	clk := newFakeClock()
	mem := NewMemoryStore(MemoryOptions{PruneFrequency: -1, Now: clk.Now})
	t.Cleanup(func() { _ = mem.Close() })
	store := &countingStore{Store: mem}
	const idle = 20 * time.Minute
	srv := newServer(t, Options{Store: store, IdleTimeout: idle, now: clk.Now}, lifetimeHandler(t))

	if _, body := srv.get(t, "/set?v=a"); body != "a v" {
		t.Fatalf("/set: %q (the reserved key must not show in Keys)", body)
	}
	sid := srv.sid(t, "session")
	t0 := clk.Now().UnixMilli()
	if m, ok := storedMeta(t, mem, sid); !ok || m.Created != t0 || m.Seen != t0 {
		t.Fatalf("after creation: meta %+v (present %v), want created = seen = %d", m, ok, t0)
	}

	// A read within IdleTimeout/4 of the last use writes nothing.
	clk.Advance(idle/4 - time.Second)
	writes := store.writes()
	if _, body := srv.get(t, "/get"); body != "a v" {
		t.Fatalf("/get: %q", body)
	}
	if store.writes() != writes {
		t.Fatalf("a read-only request %s after the last use wrote to the store", idle/4-time.Second)
	}
	// A read later than that renews "seen" (one write), keeping the session.
	clk.Advance(idle / 2)
	if _, body := srv.get(t, "/get"); body != "a v" {
		t.Fatalf("/get: %q", body)
	}
	if got := store.writes() - writes; got != 1 {
		t.Fatalf("renewing seen took %d writes, want 1", got)
	}
	if m, _ := storedMeta(t, mem, sid); m.Created != t0 || m.Seen != clk.Now().UnixMilli() {
		t.Fatalf("after a late read: meta %+v, want created %d, seen %d", m, t0, clk.Now().UnixMilli())
	}
	// Active every idle-1s: the session lives well past IdleTimeout from
	// its creation.
	for range 3 {
		clk.Advance(idle - time.Second)
		if _, body := srv.get(t, "/get"); body != "a v" {
			t.Fatalf("/get while active: %q", body)
		}
	}
	if srv.sid(t, "session") != sid {
		t.Fatal("the id changed while the session was active")
	}

	// Idle for IdleTimeout: ended, deleted, replaced.
	clk.Advance(idle)
	if _, body := srv.get(t, "/get"); body != " " {
		t.Fatalf("/get after the idle timeout: %q, want an empty session", body)
	}
	if _, found, _ := mem.Restore(context.Background(), sid); found {
		t.Fatal("the idle session is still in the store")
	}
	srv.get(t, "/set?v=b")
	if nsid := srv.sid(t, "session"); nsid == sid || nsid == "" {
		t.Fatalf("after the idle timeout the session id is %q, want a new one", nsid)
	}
	if m, ok := storedMeta(t, mem, srv.sid(t, "session")); !ok || m.Created != clk.Now().UnixMilli() {
		t.Fatalf("the new session's meta %+v, want created now", m)
	}
}

func TestAbsoluteLifetime(t *testing.T) {
	clk := newFakeClock()
	mem := NewMemoryStore(MemoryOptions{PruneFrequency: -1, Now: clk.Now})
	t.Cleanup(func() { _ = mem.Close() })
	const life = time.Hour
	srv := newServer(t, Options{Store: mem, AbsoluteLifetime: life, IdleTimeout: 30 * time.Minute, now: clk.Now}, lifetimeHandler(t))

	srv.get(t, "/set?v=a")
	first := srv.sid(t, "session")
	created := clk.Now().UnixMilli()
	// Active every 10 minutes, and regenerated on the way: still ends an
	// hour after it was created.
	for i := range 5 {
		clk.Advance(10 * time.Minute)
		path := "/set?v=a"
		if i == 2 {
			path = "/regen"
		}
		if _, body := srv.get(t, path); body != "a v" {
			t.Fatalf("%s at %d min: %q", path, 10*(i+1), body)
		}
	}
	sid := srv.sid(t, "session")
	if sid == first {
		t.Fatal("Regenerate did not change the id")
	}
	if m, _ := storedMeta(t, mem, sid); m.Created != created {
		t.Fatalf("after Regenerate: created %d, want %d (regenerating must not extend the lifetime)", m.Created, created)
	}
	clk.Advance(10*time.Minute - time.Millisecond)
	if _, body := srv.get(t, "/get"); body != "a v" {
		t.Fatalf("just before the lifetime ends: %q", body)
	}
	clk.Advance(time.Millisecond)
	if _, body := srv.get(t, "/get"); body != " " {
		t.Fatalf("at the end of the lifetime: %q, want an empty session", body)
	}
	if _, found, _ := mem.Restore(context.Background(), sid); found {
		t.Fatal("the session past its lifetime is still in the store")
	}
}

func TestLifetimeOffWritesNoMeta(t *testing.T) {
	mem := newStore(t)
	srv := newServer(t, Options{Store: mem}, lifetimeHandler(t))
	srv.get(t, "/set?v=a")
	if m, ok := storedMeta(t, mem, srv.sid(t, "session")); ok {
		t.Fatalf("with the options off the store holds %s = %+v", MetaKey, m)
	}
}

func TestMetaKeyReserved(t *testing.T) {
	clk := newFakeClock()
	mem := newStore(t)
	srv := newServer(t, Options{Store: mem, IdleTimeout: time.Hour, Logger: testLogger(&lockedBuffer{}), now: clk.Now}, lifetimeHandler(t))
	srv.get(t, "/set?v=a")
	if resp, body := srv.get(t, "/meta"); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("setting %s: %d %q, want 500", MetaKey, resp.StatusCode, body)
	}
	// A session stored without timestamps (the option was off, or another
	// application wrote it) is adopted and stamped by its next request.
	legacy := GenerateID("", "")
	if err := mem.Save(context.Background(), legacy, map[string]json.RawMessage{"v": json.RawMessage(`"old"`)}); err != nil {
		t.Fatal(err)
	}
	srv.setSID(t, "session", legacy)
	if _, body := srv.get(t, "/get"); body != "old v" {
		t.Fatalf("legacy session: %q", body)
	}
	if m, ok := storedMeta(t, mem, legacy); !ok || m.Created != clk.Now().UnixMilli() {
		t.Fatalf("legacy session's meta %+v (present %v), want stamped now", m, ok)
	}
	if got := srv.sid(t, "session"); got != legacy {
		t.Fatal("the legacy session's id changed")
	}
}

func TestNewPanicsOnNegativeLifetime(t *testing.T) {
	for _, o := range []Options{{Store: newStore(t), IdleTimeout: -1}, {Store: newStore(t), AbsoluteLifetime: -1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%+v) did not panic", o)
				}
			}()
			New(o)
		}()
	}
}

// leakyStore fails writes with an error that quotes the session id, as a
// careless Store might.
type leakyStore struct {
	Store
	fail bool
}

func (l *leakyStore) err(sid string) error {
	return fmt.Errorf("session %s refused by the backend", sid)
}

func (l *leakyStore) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	if l.fail {
		return l.err(sid)
	}
	return l.Store.Patch(ctx, sid, set, del)
}

func (l *leakyStore) Delete(ctx context.Context, sid string) error {
	if l.fail {
		return l.err(sid)
	}
	return l.Store.Delete(ctx, sid)
}

// TestLogsNeverHoldSessionIDs drives every logging path of the middleware
// with a store whose errors quote the session id: the log names the session
// by its salted hash only.
func TestLogsNeverHoldSessionIDs(t *testing.T) {
	clk := newFakeClock()
	mem := NewMemoryStore(MemoryOptions{PruneFrequency: -1, Now: clk.Now})
	t.Cleanup(func() { _ = mem.Close() })
	store := &leakyStore{Store: mem}
	var logs lockedBuffer
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		switch r.URL.Path {
		case "/late": // written after the first byte: logged, not reported
			fmt.Fprint(w, "ok")
			s.Set("late", 1)
		default:
			s.Set("v", 1)
		}
	})
	srv := newServer(t, Options{Store: store, Logger: testLogger(&logs), IdleTimeout: time.Minute, now: clk.Now}, h)
	srv.get(t, "/set")
	sid := srv.sid(t, "session")
	store.fail = true
	if resp, _ := srv.get(t, "/set"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("failing patch: %d, want 503", resp.StatusCode)
	}
	srv.get(t, "/late")
	clk.Advance(2 * time.Minute) // idle: the delete of the ended session fails
	srv.get(t, "/late")

	out := logs.String()
	t.Logf("log:\n%s", out)
	for _, want := range []string{"answering with Options.ErrorFunc", "after the response headers were sent", "could not delete a session past its idle timeout", sidHash(sid)} {
		if !strings.Contains(out, want) {
			t.Errorf("the log does not mention %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, sid) {
		t.Errorf("the log holds the session id in clear:\n%s", out)
	}
	if n := strings.Count(out, "session="+sidHash(sid)); n < 3 {
		t.Errorf("the session's hash names %d log lines, want at least 3:\n%s", n, out)
	}
}

func TestSIDHash(t *testing.T) {
	a, b := GenerateID("", ""), GenerateID("", "")
	ha := sidHash(a)
	if len(ha) != 12 || ha != sidHash(a) || ha == sidHash(b) || strings.Contains(a, ha) {
		t.Fatalf("sidHash(%q) = %q, sidHash(%q) = %q", a, ha, b, sidHash(b))
	}
	if got := redact("x "+a+" y "+a, a); strings.Contains(got, a) || !strings.Contains(got, ha) {
		t.Fatalf("redact: %q", got)
	}
	if !slices.Equal([]string{sidHash("")}, []string{""}) {
		t.Fatal("the empty id has a hash")
	}
}
