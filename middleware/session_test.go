package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

var hex40 = regexp.MustCompile(`^[0-9a-f]{40}$`)

// TestKadoSession ports Kado 4.0's own Session tests, in their order.
func TestKadoSession(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	var sid string
	var session *Session

	t.Run("should instantiate a Session", func(t *testing.T) {
		session = NewSession("foo", store)
		if session == nil || session.ID() != "foo" {
			t.Fatalf("NewSession(\"foo\") = %+v", session)
		}
	})
	t.Run("should generate an id", func(t *testing.T) {
		sid = GenerateID("127.0.0.1", "kado-test")
		if !hex40.MatchString(sid) {
			t.Fatalf("GenerateID = %q, want 40 lowercase hex characters", sid)
		}
		session = NewSession(sid, store)
	})
	t.Run("should restore a new session with empty data", func(t *testing.T) {
		if err := session.Restore(ctx); err != nil {
			t.Fatal(err)
		}
		if keys := session.Keys(); len(keys) != 0 {
			t.Fatalf("a new session has keys %v", keys)
		}
	})
	t.Run("should set and get", func(t *testing.T) {
		if got := session.Set("foo", "bar"); got != session {
			t.Fatal("Set does not return its session")
		}
		if got := session.Get("foo"); got != "bar" {
			t.Fatalf("Get(foo) = %#v, want bar", got)
		}
	})
	t.Run("should save", func(t *testing.T) {
		if err := session.Save(ctx); err != nil {
			t.Fatal(err)
		}
		if got := restoreString(t, store, sid, "foo"); got != "bar" {
			t.Fatalf("stored foo = %q, want bar", got)
		}
		again := NewSession(sid, store)
		if err := again.Restore(ctx); err != nil {
			t.Fatal(err)
		}
		if got := again.Get("foo"); got != "bar" {
			t.Fatalf("a second Session restored foo = %#v, want bar", got)
		}
	})
}

func TestSessionValues(t *testing.T) {
	type user struct {
		Name  string `json:"name"`
		Admin bool   `json:"admin"`
	}
	s := NewSession(GenerateID("", ""), newStore(t))
	s.Set("n", 42).Set("obj", map[string]any{"a": []int{1, 2}}).Set("u", user{"alice", true}).Set("nil", nil)

	tests := []struct {
		name string
		key  string
		want any
	}{
		{"number", "n", float64(42)},
		{"object", "obj", map[string]any{"a": []any{float64(1), float64(2)}}},
		{"struct", "u", map[string]any{"name": "alice", "admin": true}},
		{"null", "nil", nil},
		{"absent", "missing", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.Get(tt.key); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Get(%q) = %#v, want %#v", tt.key, got, tt.want)
			}
		})
	}
	t.Run("GetInto", func(t *testing.T) {
		var u user
		if err := s.GetInto("u", &u); err != nil || u != (user{"alice", true}) {
			t.Fatalf("GetInto(u) = %+v, %v", u, err)
		}
		if err := s.GetInto("missing", &u); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("GetInto(missing) = %v, want ErrKeyNotFound", err)
		}
		var n string
		if err := s.GetInto("n", &n); err == nil {
			t.Fatal("GetInto a number into a string succeeded")
		}
	})
	t.Run("Delete and Keys", func(t *testing.T) {
		s.Delete("nil").Delete("never-there")
		if got, want := s.Keys(), []string{"n", "obj", "u"}; !slices.Equal(got, want) {
			t.Fatalf("Keys = %v, want %v", got, want)
		}
	})
	t.Run("Clear", func(t *testing.T) {
		s.Clear()
		if got := s.Keys(); len(got) != 0 {
			t.Fatalf("Keys after Clear = %v", got)
		}
	})
}

func TestSessionInvalidValueSurfacesAtSave(t *testing.T) {
	tests := []struct {
		name  string
		key   string
		value any
	}{
		{"unencodable value", "f", func() {}},
		{"empty key", "", 1},
		{"reserved key", "_written", 1},
		// Stored as JSON, it would come back as "\ufffd", another key.
		{"key not valid UTF-8", "\xff", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newStore(t)
			s := NewSession(GenerateID("", ""), store)
			s.Set("ok", 1).Set(tt.key, tt.value)
			if err := s.Err(); !errors.Is(err, ErrInvalidValue) {
				t.Fatalf("Err = %v, want ErrInvalidValue", err)
			}
			if err := s.Save(context.Background()); !errors.Is(err, ErrInvalidValue) {
				t.Fatalf("Save = %v, want ErrInvalidValue", err)
			}
			if store.Len() != 0 {
				t.Fatal("a session with an invalid value was saved")
			}
		})
	}
}

func TestSessionSaveSendsOnlyChanges(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	sid := GenerateID("", "")
	if err := store.Save(ctx, sid, map[string]json.RawMessage{"a": json.RawMessage(`1`), "b": json.RawMessage(`2`)}); err != nil {
		t.Fatal(err)
	}
	s := NewSession(sid, store)
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	s.Set("c", 3).Delete("a")
	// Another writer changes b meanwhile; this session never touched b.
	if err := store.Patch(ctx, sid, map[string]json.RawMessage{"b": json.RawMessage(`20`)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx); err != nil {
		t.Fatal(err)
	}
	data, _, _ := store.Restore(ctx, sid)
	if got := fmt.Sprint(data); got != "map[b:[50 48] c:[51]]" {
		t.Fatalf("stored %s, want b=20 (the other writer's) and c=3", got)
	}

	// Clear deletes the keys this session saw; a key another writer set
	// meanwhile stays, as with any change.
	s.Clear()
	s.Set("z", true)
	if err := store.Patch(ctx, sid, map[string]json.RawMessage{"other": json.RawMessage(`1`)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx); err != nil {
		t.Fatal(err)
	}
	data, _, _ = store.Restore(ctx, sid)
	if got := fmt.Sprint(data); got != "map[other:[49] z:[116 114 117 101]]" {
		t.Fatalf("after Clear+Set+Save the store holds %s, want only the other writer's key and z", got)
	}
	// A session deleted meanwhile (a logout elsewhere) is not brought back
	// by a Clear's save.
	s.Clear()
	if err := store.Delete(ctx, sid); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx); !errors.Is(err, ErrSessionGone) {
		t.Fatalf("Save of a cleared session deleted meanwhile: %v, want ErrSessionGone", err)
	}
	if _, found, _ := store.Restore(ctx, sid); found {
		t.Fatal("the cleared session's save brought a deleted session back")
	}
}

func TestSessionRegenerateAndDestroy(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	old := GenerateID("", "")
	s := NewSession(old, store)
	s.Set("user", "alice")
	if err := s.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Regenerate(ctx); err != nil {
		t.Fatal(err)
	}
	if s.ID() == old || !hex40.MatchString(s.ID()) {
		t.Fatalf("Regenerate kept or mangled the id: %q", s.ID())
	}
	if _, found, _ := store.Restore(ctx, old); found {
		t.Fatal("the old id is still in the store")
	}
	if got := restoreString(t, store, s.ID(), "user"); got != "alice" {
		t.Fatalf("user = %q after Regenerate", got)
	}
	if err := s.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if store.Len() != 0 || len(s.Keys()) != 0 {
		t.Fatalf("after Destroy: store holds %d sessions, session keys %v", store.Len(), s.Keys())
	}
}

// TestSessionConcurrentUse runs the methods from many goroutines; -race
// checks the locking.
func TestSessionConcurrentUse(t *testing.T) {
	s := NewSession(GenerateID("", ""), newStore(t))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				key := fmt.Sprintf("k%d", i)
				s.Set(key, j)
				_ = s.Get(key)
				_ = s.Keys()
				if j%10 == 0 {
					if err := s.Save(context.Background()); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	if got := len(s.Keys()); got != 8 {
		t.Fatalf("%d keys, want 8", got)
	}
}

// The fast paths for common values give exactly what encoding/json gives.
func TestScalarFastPathsMatchEncodingJSON(t *testing.T) {
	for _, v := range []any{0, -1, 42, int64(-9223372036854775808), int64(9223372036854775807), true, false,
		"", "plain text 123", "a<b>&c", "quote\"", "back\\slash", "tab\t", "é", "\x7f", "\u2028"} {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := encodeScalar(v); ok && string(got) != string(want) {
			t.Errorf("encodeScalar(%#v) = %s, json.Marshal %s", v, got, want)
		}
	}
	for _, raw := range []string{`0`, `-0`, `7`, `-12`, `007`, `+1`, `1e3`, `1.5`, `null`, `"x"`, `9223372036854775808`,
		`"abc"`, `"a\"b"`, `"\u0041"`, `"é"`, `5`, `""`} {
		var n1, n2 int64
		ok := decodeScalar([]byte(raw), &n1)
		err := json.Unmarshal([]byte(raw), &n2)
		if ok && (err != nil || n1 != n2) {
			t.Errorf("decodeScalar(%s) into int64 = %d, json.Unmarshal %d, %v", raw, n1, n2, err)
		}
		var i1, i2 int
		ok = decodeScalar([]byte(raw), &i1)
		err = json.Unmarshal([]byte(raw), &i2)
		if ok && (err != nil || i1 != i2) {
			t.Errorf("decodeScalar(%s) into int = %d, json.Unmarshal %d, %v", raw, i1, i2, err)
		}
		var s1, s2 string
		ok = decodeScalar([]byte(raw), &s1)
		err = json.Unmarshal([]byte(raw), &s2)
		if ok && (err != nil || s1 != s2) {
			t.Errorf("decodeScalar(%s) into string = %q, json.Unmarshal %q, %v", raw, s1, s2, err)
		}
	}
	var n int64
	if !decodeScalar([]byte(`123`), &n) || n != 123 {
		t.Fatal("the int64 fast path is not taken")
	}
	if _, ok := encodeScalar(5); !ok {
		t.Fatal("the int fast path is not taken")
	}
}

// patchRecorder is a Store that remembers the last Patch it was sent.
type patchRecorder struct {
	Store
	set map[string]json.RawMessage
	del []string
}

func (p *patchRecorder) Patch(ctx context.Context, sid string, set map[string]json.RawMessage, del []string) error {
	p.set, p.del = set, slices.Clone(del)
	return p.Store.Patch(ctx, sid, set, del)
}

// A key set or deleted many times in one request is sent once, as its last
// state left it.
func TestSessionSaveSendsEachKeyOnce(t *testing.T) {
	ctx := context.Background()
	rec := &patchRecorder{Store: newStore(t)}
	sid := GenerateID("", "")
	if err := rec.Save(ctx, sid, map[string]json.RawMessage{"a": json.RawMessage(`1`), "b": json.RawMessage(`2`)}); err != nil {
		t.Fatal(err)
	}
	s := NewSession(sid, rec)
	s.Set("c", 1).Set("c", 2).Delete("a").Set("a", 5).Delete("a").Delete("b").Set("b", 7).Set("c", 3)
	if err := s.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rec.set, rec.del); got != "map[b:[55] c:[51]] [a]" {
		t.Fatalf("Patch got set, del = %s, want map[b:7 c:3] [a]", got)
	}
	data, _, _ := rec.Restore(ctx, sid)
	if got := fmt.Sprint(data); got != "map[b:[55] c:[51]]" {
		t.Fatalf("stored %s, want b=7, c=3", got)
	}
}

// TestChangeAfterTheRequestIsLogged: a goroutine the handler left running
// that changes the session after the request finished changes nothing in
// the store, and the log says so once.
func TestChangeAfterTheRequestIsLogged(t *testing.T) {
	store := newStore(t)
	var logs lockedBuffer
	late := make(chan *Session, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/visit", setHandler("cart", "1"))
	mux.HandleFunc("/leak", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		_ = s.Get("cart")
		late <- s
	})
	srv := newServer(t, Options{Store: store, Logger: testLogger(&logs)}, mux)
	srv.get(t, "/visit")
	sid := srv.sid(t, "session")
	srv.get(t, "/leak")
	s := <-late
	s.Set("cart", "2").Delete("cart")
	if got := restoreString(t, store, sid, "cart"); got != "1" {
		t.Fatalf("cart = %q after a change past the request, want 1", got)
	}
	if n := strings.Count(logs.String(), "changed after its request finished"); n != 1 {
		t.Fatalf("%d log lines about the late change, want 1; log:\n%s", n, logs.String())
	}
}
