package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestValuesAgreeWithAMap drives a session's values through random sets,
// removals and lookups, across the size where they start keeping an index,
// against a map doing the same.
func TestValuesAgreeWithAMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 50; round++ {
		var v values
		want := map[string]json.RawMessage{}
		keys := 1 + r.IntN(4*indexAbove)
		for op := 0; op < 400; op++ {
			k := fmt.Sprintf("k%d", r.IntN(keys))
			switch r.IntN(4) {
			case 0, 1:
				val := json.RawMessage(fmt.Sprint(op))
				v.set(k, val)
				want[k] = val
			case 2:
				_, had := want[k]
				if got := v.remove(k); got != had {
					t.Fatalf("round %d op %d: remove(%s) = %v, want %v", round, op, k, got, had)
				}
				delete(want, k)
			case 3:
				if r.IntN(20) == 0 {
					v.clear()
					clear(want)
				}
			}
			got, ok := v.get(k)
			w, wok := want[k]
			if ok != wok || string(got) != string(w) {
				t.Fatalf("round %d op %d: get(%s) = %s %v, want %s %v", round, op, k, got, ok, w, wok)
			}
			if len(v.fields) != len(want) {
				t.Fatalf("round %d op %d: %d fields, want %d", round, op, len(v.fields), len(want))
			}
		}
		seen := map[string]bool{}
		for _, f := range v.fields {
			if seen[f.Key] || string(want[f.Key]) != string(f.Value) {
				t.Fatalf("round %d: field %s=%s repeated or wrong (want %s)", round, f.Key, f.Value, want[f.Key])
			}
			seen[f.Key] = true
		}
	}
}

// A session of many keys works as a small one: every key set, read back,
// half deleted, the rest listed. (BenchmarkManyKeys measures what it costs.)
func TestManyKeys(t *testing.T) {
	const n = 3 * indexAbove
	s := NewSession("", newStore(t))
	for i := range n {
		s.Set(fmt.Sprintf("key-%d", i), i)
	}
	for i := 0; i < n; i += 2 {
		s.Delete(fmt.Sprintf("key-%d", i))
	}
	if err := s.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		var got int
		err := s.GetInto(fmt.Sprintf("key-%d", i), &got)
		if i%2 == 0 && !errors.Is(err, ErrKeyNotFound) || i%2 == 1 && (err != nil || got != i) {
			t.Fatalf("key-%d = %d, %v after deleting the even keys", i, got, err)
		}
	}
	if keys := s.Keys(); len(keys) != n/2 || !slices.IsSorted(keys) {
		t.Fatalf("keys %v, want the %d odd ones, sorted", keys, n/2)
	}
}

// BenchmarkManyKeys sets, reads and deletes every key of a 20,000-key
// session once each: per key it is a lookup, not a search of them all
// (a search each made the reads alone take ~0.8 s).
func BenchmarkManyKeys(b *testing.B) {
	const n = 20000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
	}
	store := NewMemoryStore(MemoryOptions{PruneFrequency: -1})
	defer store.Close()
	for b.Loop() {
		s := NewSession("", store)
		for i, k := range keys {
			s.Set(k, i)
		}
		for _, k := range keys {
			var got int
			if err := s.GetInto(k, &got); err != nil {
				b.Fatal(err)
			}
		}
		for _, k := range keys {
			s.Delete(k)
		}
	}
}

// scribbler is a json.Unmarshaler that writes into the bytes it is given,
// as it must not.
type scribbler struct{}

func (*scribbler) UnmarshalJSON(b []byte) error {
	for i := range b {
		b[i] = 'X'
	}
	return nil
}

// A handler's misbehaving json.Unmarshaler changes at most its own
// request's copy: what MemoryStore holds, and what other requests read,
// stays as saved.
func TestUnmarshalerCannotChangeTheStore(t *testing.T) {
	store := newStore(t)
	ctx := context.Background()
	s := NewSession("", store)
	s.Set("k", "vvv").Set("n", 7)
	if err := s.Save(ctx); err != nil {
		t.Fatal(err)
	}
	r := NewSession(s.ID(), store)
	if err := r.GetInto("k", &scribbler{}); err != nil {
		t.Fatal(err)
	}
	if got := restoreString(t, store, s.ID(), "k"); got != "vvv" {
		t.Fatalf("the store holds k=%q after a reader's unmarshaler wrote into its bytes, want vvv", got)
	}
	var n int
	if err := r.GetInto("n", &n); err != nil || n != 7 {
		t.Fatalf("n = %d, %v in the scribbled request, want 7: the other keys are untouched", n, err)
	}
}
