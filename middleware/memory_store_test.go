package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kadosession/kadosession/fsm"
)

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func TestMemoryStoreOperations(t *testing.T) {
	ctx := context.Background()
	m := newStore(t)
	const sid = "sid1"

	if data, found, err := m.Restore(ctx, sid); err != nil || found || data != nil {
		t.Fatalf("Restore(unknown) = %v, %v, %v; want nil, false, nil", data, found, err)
	}
	if err := m.Save(ctx, sid, map[string]json.RawMessage{"a": raw(`1`), "b": raw(` { "x" : [1, 2] } `)}); err != nil {
		t.Fatal(err)
	}
	data, found, err := m.Restore(ctx, sid)
	if err != nil || !found || string(data["a"]) != "1" || string(data["b"]) != `{"x":[1,2]}` {
		t.Fatalf("Restore after Save = %s, %v, %v", data, found, err)
	}
	// The caller owns the returned map.
	data["a"] = raw(`99`)

	if err := m.Patch(ctx, sid, map[string]json.RawMessage{"c": raw(`"x"`)}, []string{"b", "absent"}); err != nil {
		t.Fatal(err)
	}
	data, _, _ = m.Restore(ctx, sid)
	if len(data) != 2 || string(data["a"]) != "1" || string(data["c"]) != `"x"` {
		t.Fatalf("after Patch: %s, want a=1 c=\"x\"", data)
	}

	if err := m.Patch(ctx, "sid2", map[string]json.RawMessage{"n": raw(`2`)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := m.Restore(ctx, "sid2"); !found || m.Len() != 2 {
		t.Fatalf("Patch did not create sid2 (found %v, Len %d)", found, m.Len())
	}

	for _, sid := range []string{sid, sid, "never"} { // absent is not an error
		if err := m.Delete(ctx, sid); err != nil {
			t.Fatal(err)
		}
		if err := m.Touch(ctx, sid); err != nil {
			t.Fatal(err)
		}
	}
	if _, found, _ := m.Restore(ctx, sid); found || m.Len() != 1 {
		t.Fatalf("after Delete: found %v, Len %d", found, m.Len())
	}
}

// TestMemoryStoreEmptyValueIsNull: an empty json.RawMessage is stored as
// null, by Save and Patch, as the client sends it to a node (it was
// refused here: switching stores changed what an app could save).
func TestMemoryStoreEmptyValueIsNull(t *testing.T) {
	ctx := context.Background()
	m := NewMemoryStore(MemoryOptions{PruneFrequency: -1})
	defer m.Close()
	if err := m.Save(ctx, "s", map[string]json.RawMessage{"a": nil}); err != nil {
		t.Fatal(err)
	}
	if err := m.Patch(ctx, "s", map[string]json.RawMessage{"b": {}}, nil); err != nil {
		t.Fatal(err)
	}
	data, _, _ := m.Restore(ctx, "s")
	if string(data["a"]) != "null" || string(data["b"]) != "null" {
		t.Fatalf("stored %s and %s, want null and null", data["a"], data["b"])
	}
}

func TestMemoryStoreRejects(t *testing.T) {
	ctx := context.Background()
	m := NewMemoryStore(MemoryOptions{PruneFrequency: -1, MaxSessionSize: 64, MaxKeys: 2})
	defer m.Close()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	big := raw(`"` + strings.Repeat("x", 64) + `"`)
	three := map[string]json.RawMessage{"a": raw(`1`), "b": raw(`2`), "c": raw(`3`)}

	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"empty sid", func() error { return m.Save(ctx, "", nil) }, fsm.ErrBadSID},
		{"reserved key", func() error { return m.Save(ctx, "s", map[string]json.RawMessage{"_written": raw(`1`)}) }, fsm.ErrBadKey},
		{"not JSON", func() error { return m.Save(ctx, "s", map[string]json.RawMessage{"a": raw(`{`)}) }, fsm.ErrBadData},
		{"bad delete key", func() error { return m.Patch(ctx, "s", nil, []string{""}) }, fsm.ErrBadKey},
		{"save too large", func() error { return m.Save(ctx, "s", map[string]json.RawMessage{"a": big}) }, fsm.ErrSessionTooLarge},
		{"patch too large", func() error { return m.Patch(ctx, "s", map[string]json.RawMessage{"a": big}, nil) }, fsm.ErrSessionTooLarge},
		{"save too many keys", func() error { return m.Save(ctx, "s", three) }, fsm.ErrTooManyKeys},
		{"patch too many keys", func() error { return m.Patch(ctx, "s", three, nil) }, fsm.ErrTooManyKeys},
		{"cancelled", func() error { _, _, err := m.Restore(cancelled, "s"); return err }, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if m.Len() != 0 {
				t.Fatalf("a rejected call stored a session")
			}
		})
	}
}

func TestMemoryStoreExpiry(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	m := NewMemoryStore(MemoryOptions{Duration: time.Hour, PruneFrequency: -1, Now: clock.Now})
	defer m.Close()
	for _, sid := range []string{"a", "b", "c"} {
		if err := m.Save(ctx, sid, map[string]json.RawMessage{"k": raw(`1`)}); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(30 * time.Minute)
	if err := m.Touch(ctx, "c"); err != nil { // c now lasts until 1h30
		t.Fatal(err)
	}
	if err := m.Patch(ctx, "b", map[string]json.RawMessage{"k": raw(`2`)}, nil); err != nil { // so does b
		t.Fatal(err)
	}

	clock.Advance(30*time.Minute - time.Millisecond)
	if _, found, _ := m.Restore(ctx, "a"); !found {
		t.Fatal("a expired a millisecond early")
	}
	clock.Advance(time.Millisecond) // exactly Written + Duration: expired (Kado's <=)
	if _, found, _ := m.Restore(ctx, "a"); found {
		t.Fatal("Restore returned an expired session")
	}
	if err := m.Touch(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := m.Restore(ctx, "a"); found {
		t.Fatal("Touch brought an expired session back")
	}
	if err := m.Patch(ctx, "a", map[string]json.RawMessage{"new": raw(`1`)}, nil); err != nil {
		t.Fatal(err)
	}
	if data, _, _ := m.Restore(ctx, "a"); len(data) != 1 || data["k"] != nil {
		t.Fatalf("Patch on an expired session kept its old data: %s", data)
	}
	if err := m.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}

	if m.Len() != 2 {
		t.Fatalf("Len = %d, want 2", m.Len())
	}
	if n := m.Prune(); n != 0 {
		t.Fatalf("Prune = %d before anything expired, want 0", n)
	}
	clock.Advance(30 * time.Minute)
	if n := m.Prune(); n != 2 {
		t.Fatalf("Prune = %d, want 2", n)
	}
	if m.Len() != 0 {
		t.Fatalf("Len after Prune = %d", m.Len())
	}
}

func TestMemoryStoreDefaults(t *testing.T) {
	m := NewMemoryStore(MemoryOptions{})
	defer m.Close()
	if m.duration != DefaultDuration.Milliseconds() || m.maxSize != fsm.DefaultMaxSessionSize {
		t.Fatalf("defaults: duration %d ms, max size %d", m.duration, m.maxSize)
	}
}

func TestMemoryStoreNeverExpires(t *testing.T) {
	clock := newFakeClock()
	m := NewMemoryStore(MemoryOptions{Duration: -1, PruneFrequency: -1, Now: clock.Now})
	defer m.Close()
	if err := m.Save(context.Background(), "s", nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(100 * 365 * 24 * time.Hour)
	if _, found, _ := m.Restore(context.Background(), "s"); !found || m.Prune() != 0 {
		t.Fatal("a store with a negative Duration expired a session")
	}
}

func TestMemoryStorePruneTickerAndClose(t *testing.T) {
	clock := newFakeClock()
	m := NewMemoryStore(MemoryOptions{Duration: time.Second, PruneFrequency: time.Millisecond, Now: clock.Now})
	if err := m.Save(context.Background(), "s", nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for m.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the prune ticker did not remove the expired session")
		}
		time.Sleep(time.Millisecond)
	}

	// Close is idempotent and safe from many goroutines at once.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := m.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	// After Close nothing prunes in the background, but reads still hide
	// expired sessions and Prune still works.
	if err := m.Save(context.Background(), "t", nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if m.Len() != 1 { // Close returned: the ticker goroutine has exited
		t.Fatal("something pruned after Close")
	}
	if _, found, _ := m.Restore(context.Background(), "t"); found {
		t.Fatal("an expired session was returned after Close")
	}
	if n := m.Prune(); n != 1 {
		t.Fatalf("Prune after Close = %d, want 1", n)
	}
}

func TestMemoryStoreConcurrentPatches(t *testing.T) {
	ctx := context.Background()
	m := newStore(t)
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			key := string(rune('a'+i%26)) + string(rune('a'+i/26))
			if err := m.Patch(ctx, "s", map[string]json.RawMessage{key: raw(`1`)}, nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if data, _, _ := m.Restore(ctx, "s"); len(data) != 32 {
		t.Fatalf("%d keys survived 32 concurrent patches", len(data))
	}
}

// TestMemoryStoreList: List returns the live sessions under a prefix, each
// as Restore returns it, judging expiry exactly as Restore does, and the
// maps it returns are the caller's.
func TestMemoryStoreList(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	m := NewMemoryStore(MemoryOptions{Duration: time.Hour, PruneFrequency: -1, Now: clock.Now})
	defer m.Close()

	if all, err := m.List(ctx, ""); err != nil || all == nil || len(all) != 0 {
		t.Fatalf("List on an empty store = %v, %v; want an empty non-nil map", all, err)
	}
	save := func(sid, data string) {
		t.Helper()
		var d map[string]json.RawMessage
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			t.Fatal(err)
		}
		if err := m.Save(ctx, sid, d); err != nil {
			t.Fatal(err)
		}
	}
	save("app:old", `{"n":0}`)
	clock.Advance(30 * time.Minute)
	save("app:1", `{"n":1,"o":{"x":[1,2]}}`)
	save("app:2", `{}`)
	save("other:1", `{"n":3}`)
	save("ap", `{"n":4}`)

	check := func(prefix string, want ...string) map[string]map[string]json.RawMessage {
		t.Helper()
		got, err := m.List(ctx, prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		if len(got) != len(want) {
			t.Fatalf("List(%q) = %v, want the sessions %v", prefix, got, want)
		}
		for _, sid := range want {
			data, ok := got[sid]
			restored, found, err := m.Restore(ctx, sid)
			if !ok || err != nil || !found || !reflect.DeepEqual(data, restored) {
				t.Fatalf("List(%q)[%q] = %s (listed %v); Restore = %s, %v, %v", prefix, sid, data, ok, restored, found, err)
			}
		}
		return got
	}
	check("app:", "app:old", "app:1", "app:2")
	check("", "app:old", "app:1", "app:2", "other:1", "ap")
	check("ap", "app:old", "app:1", "app:2", "ap")
	check("nothing")

	// The caller owns the maps and their values.
	got := check("app:1", "app:1")
	got["app:1"]["n"][0] = '9'
	got["app:1"]["new"] = raw(`true`)
	delete(got["app:1"], "o")
	check("app:1", "app:1")
	if data, _, _ := m.Restore(ctx, "app:1"); string(data["n"]) != "1" || len(data) != 2 {
		t.Fatalf("modifying List's answer changed the store: %s", data)
	}

	// Expiry exactly as Restore judges it: app:old was written 30 minutes
	// before the others and expires at Written + Duration, before any prune.
	clock.Advance(30*time.Minute - time.Millisecond)
	check("app:", "app:old", "app:1", "app:2")
	clock.Advance(time.Millisecond)
	check("app:", "app:1", "app:2")
	if m.Len() != 5 {
		t.Fatalf("Len = %d; the expired session should still be stored (not pruned)", m.Len())
	}
	clock.Advance(time.Hour)
	check("")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if all, err := m.List(cctx, ""); !errors.Is(err, context.Canceled) || all != nil {
		t.Fatalf("List with a cancelled context = %v, %v; want context.Canceled", all, err)
	}
}

// Restore's map is the caller's: changing the bytes of its values (which
// share one buffer) must not reach the stored session.
func TestMemoryStoreRestoreIsACopy(t *testing.T) {
	m := NewMemoryStore(MemoryOptions{})
	defer m.Close()
	ctx := context.Background()
	sid := strings.Repeat("a", 40)
	if err := m.Save(ctx, sid, map[string]json.RawMessage{"k": json.RawMessage(`"value"`), "n": json.RawMessage(`12`)}); err != nil {
		t.Fatal(err)
	}
	first, _, err := m.Restore(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range first {
		for i := range v {
			v[i] = 'X'
		}
	}
	first["k"] = json.RawMessage(`"other"`)
	again, _, err := m.Restore(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	if string(again["k"]) != `"value"` || string(again["n"]) != `12` {
		t.Fatalf("stored session changed through a restored map: %s", again)
	}
}

// wrappedMemory embeds a MemoryStore to wrap its writes, as an application
// adding metrics or logging to one might.
type wrappedMemory struct {
	*MemoryStore
	saves, patches atomic.Int32
	unbounded      atomic.Int32 // calls whose ctx had no deadline
}

func (w *wrappedMemory) Save(ctx context.Context, sid string, data map[string]json.RawMessage) error {
	if _, ok := ctx.Deadline(); !ok {
		w.unbounded.Add(1)
	}
	w.saves.Add(1)
	return w.MemoryStore.Save(ctx, sid, data)
}

func (w *wrappedMemory) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	if _, ok := ctx.Deadline(); !ok {
		w.unbounded.Add(1)
	}
	w.patches.Add(1)
	return w.MemoryStore.Patch(ctx, sid, set, del)
}

// PatchExisting is wrapped too: the middleware prefers it to Patch for a
// session it loaded, so a wrapper that embeds a store with it and means to
// see every write wraps it as well (see Store).
func (w *wrappedMemory) PatchExisting(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) (bool, error) {
	if _, ok := ctx.Deadline(); !ok {
		w.unbounded.Add(1)
	}
	w.patches.Add(1)
	return w.MemoryStore.PatchExisting(ctx, sid, set, del)
}

// TestWrappedMemoryStoreIsCalledThroughItsMethods: the middleware calls a
// bare MemoryStore without the Store interface's maps (and without a
// deadline of its own), but a type that embeds one gets its own methods
// called, bounded by Options.Timeout like any store's.
func TestWrappedMemoryStoreIsCalledThroughItsMethods(t *testing.T) {
	w := &wrappedMemory{MemoryStore: newStore(t)}
	srv := newServer(t, Options{Store: w}, setHandler("k", "v"))
	srv.get(t, "/")
	srv.get(t, "/")
	if s, p := w.saves.Load(), w.patches.Load(); s != 1 || p != 1 {
		t.Fatalf("the wrapper saw %d saves and %d patches, want 1 and 1", s, p)
	}
	if n := w.unbounded.Load(); n != 0 {
		t.Fatalf("%d of the wrapper's calls had no deadline; want Options.Timeout on each", n)
	}
	if got := restoreString(t, w, srv.sid(t, "session"), "k"); got != "v" {
		t.Fatalf("k = %q, want v", got)
	}
}

// TestMemoryStoreSubMillisecondDuration: a positive Duration under a ms
// expires sessions after a ms (it was rounded down to 0: never).
func TestMemoryStoreSubMillisecondDuration(t *testing.T) {
	now := time.Now()
	m := NewMemoryStore(MemoryOptions{PruneFrequency: -1, Duration: 500 * time.Microsecond, Now: func() time.Time { return now }})
	defer m.Close()
	if err := m.Save(context.Background(), "s", nil); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	if _, found, _ := m.Restore(context.Background(), "s"); found {
		t.Fatal("a session of a 0.5 ms store is alive an hour later")
	}
}

// A key that is not valid UTF-8 would be stored as JSON with U+FFFD in its
// place, so that it came back as another key (and "\xff" and "\xfe" as one):
// the store refuses it, as a node does, instead of renaming it.
func TestMemoryStoreRefusesKeyNotUTF8(t *testing.T) {
	ctx := context.Background()
	m := NewMemoryStore(MemoryOptions{PruneFrequency: -1})
	sid := GenerateID("", "")
	err := m.Patch(ctx, sid, map[string]json.RawMessage{"\xff": json.RawMessage(`1`)}, nil)
	if !errors.Is(err, fsm.ErrBadKey) {
		t.Fatalf("Patch with key \"\\xff\" = %v, want fsm.ErrBadKey", err)
	}
	if err := m.Save(ctx, sid, map[string]json.RawMessage{"\xfe": json.RawMessage(`1`)}); !errors.Is(err, fsm.ErrBadKey) {
		t.Fatalf("Save with key \"\\xfe\" = %v, want fsm.ErrBadKey", err)
	}
	if _, found, _ := m.Restore(ctx, sid); found {
		t.Fatal("the session was stored")
	}
}
