package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kadosession/kadosession/fsm"
)

// TestDecodeObject holds decodeObject to json.Unmarshal into a map of raw
// values, and checks it refuses what is not one JSON object.
func TestDecodeObject(t *testing.T) {
	for _, in := range []string{
		`{}`, ` { } `, `{"counter":41}`, `{"a":1,"a":2}`, `{"a\u0062":"x","b":[1, {"c" : null}]}`,
		`{"_meta":{"c":1764150000000,"u":"alice"},"counter":12345,"cart":["a","b"]}`,
	} {
		got, err := decodeObject([]byte(in))
		if err != nil {
			t.Errorf("decodeObject(%s): %v", in, err)
			continue
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Fatal(err)
		}
		for k, v := range want { // json.Unmarshal keeps values as written
			var c []byte
			c, _ = json.Marshal(v)
			want[k] = c
		}
		if !reflect.DeepEqual(got.toMap(), want) {
			t.Errorf("decodeObject(%s) = %q, want %q", in, got, want)
		}
	}
	for _, in := range []string{``, `null`, `[]`, `"x"`, `{"a":}`, `{"a":1`, `{"a":1}x`, `{"a":tru}`} {
		if got, err := decodeObject([]byte(in)); err == nil {
			t.Errorf("decodeObject(%s) = %q, want an error", in, got)
		}
	}
}

func BenchmarkDecodeObject(b *testing.B) {
	in := []byte(`{"_meta":{"c":1764150000000,"u":"alice"},"counter":12345}`)
	b.Run("decodeObject", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeObject(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(in, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// rawStore is a MemoryStore that also answers RestoreRaw with raw, and
// fails the test if Restore is called.
type rawStore struct {
	*MemoryStore
	t   *testing.T
	raw string
}

func (r *rawStore) Restore(context.Context, string) (map[string]json.RawMessage, bool, error) {
	r.t.Error("Restore called on a store that has RestoreRaw")
	return nil, false, nil
}

func (r *rawStore) RestoreRaw(context.Context, string) ([]byte, bool, error) {
	return []byte(r.raw), true, nil
}

// TestRawRestorerIsDecodedHere: a store with RestoreRaw (the Go client) is
// asked for the raw object, which the session decodes; data that is not
// one JSON object fails the load with ErrStoreUnavailable.
func TestRawRestorerIsDecodedHere(t *testing.T) {
	s := NewSession("s1", &rawStore{MemoryStore: newStore(t), t: t, raw: `{"counter":7,"_written":1}`})
	var n int
	if err := s.GetInto("counter", &n); err != nil || n != 7 {
		t.Fatalf("GetInto = %d, %v; want 7", n, err)
	}
	if keys := s.Keys(); !reflect.DeepEqual(keys, []string{"counter"}) {
		t.Errorf("keys %v, want [counter]: the store's %s key must not reach the session", keys, fsm.WrittenKey)
	}
	bad := NewSession("s2", &rawStore{MemoryStore: newStore(t), t: t, raw: `{"counter":`})
	if err := bad.GetInto("counter", &n); !errors.Is(err, ErrStoreUnavailable) || !strings.Contains(err.Error(), "not a JSON object") {
		t.Fatalf("GetInto on bad data: %v; want ErrStoreUnavailable saying it is not a JSON object", err)
	}
}
