package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/rand"
	"testing"
)

func TestValidCompact(t *testing.T) {
	cases := []struct {
		in   string
		want bool
	}{
		{`{}`, true}, {`{"a":1}`, true}, {`{"a":[1,2,{"b":null}],"c":"x\"y\\u00e9"}`, true},
		{`{"a": 1}`, false}, {` {}`, false}, {`{"a":1}x`, false}, {`{"a":01}`, false},
		{`{"a":-0.5e+10}`, true}, {`{"a":1.}`, false}, {`{"a":"\x01"}`, false}, {`{"a":tru}`, false},
		{`{"a":"\q"}`, false}, {`{"a":"\u12g4"}`, false}, {`{"a":1,}`, false}, {`[1,2]`, true}, {``, false},
	}
	for _, tc := range cases {
		if got := validCompact([]byte(tc.in)); got != tc.want {
			t.Errorf("validCompact(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// FuzzValidCompact holds validCompact to encoding/json: it accepts exactly
// the valid documents that json.Compact leaves unchanged.
func FuzzValidCompact(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a": 1}`, `[1,"x",{"y":[true,false,null]}]`, `{"a":"\u00e9\n"}`, `-1.5e3`, `{"a":01}`, `"\x7f"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var buf bytes.Buffer
		want := json.Compact(&buf, b) == nil && bytes.Equal(buf.Bytes(), b)
		if got := validCompact(b); got != want {
			t.Fatalf("validCompact(%q) = %v, encoding/json says %v", b, got, want)
		}
	})
}

func TestNormalizeObjectKeys(t *testing.T) {
	for in, want := range map[string]int{`{}`: 0, `{"a":1}`: 1, `{"a":{"b":[1,{"c":2}]},"d":"x,}"}`: 2, `{"a":"\"}","b":null,"c":[]}`: 3,
		`{"a":1,"a":2}`: 1, `{"a":1,"_written":5}`: 1} {
		if _, got, err := NormalizeObjectKeys([]byte(in)); err != nil || got != want {
			t.Errorf("NormalizeObjectKeys(%s) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// TestPlain8 checks the 8-byte fast path of the string scanner against the
// byte-by-byte rule: every byte value in every position, then random words
// (special bytes next to high ones, where the bit tricks borrow).
func TestPlain8(t *testing.T) {
	special := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 }
	for pos := 0; pos < 8; pos++ {
		for c := 0; c < 256; c++ {
			b := []byte("abcdefgh")
			b[pos] = byte(c)
			if got, want := plain8(binary.LittleEndian.Uint64(b)), !special(byte(c)); got != want {
				t.Fatalf("plain8(%q) = %v, want %v", b, got, want)
			}
		}
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 1_000_000; i++ {
		x := rng.Uint64()
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], x)
		want := true
		for _, c := range b {
			if special(c) {
				want = false
			}
		}
		if got := plain8(x); got != want {
			t.Fatalf("plain8(%q) = %v, want %v", b, got, want)
		}
		wantQB := bytes.IndexByte(b[:], '"') >= 0 || bytes.IndexByte(b[:], '\\') >= 0
		if got := quoteOrBackslash8(x); got != wantQB {
			t.Fatalf("quoteOrBackslash8(%q) = %v, want %v", b, got, wantQB)
		}
	}
}

// TestSplitObjectMatchesEncodingJSON: the members SplitObject finds, as a
// map, are what json.Unmarshal into a map of raw values gives.
func TestSplitObjectMatchesEncodingJSON(t *testing.T) {
	for _, obj := range []string{
		`{}`,
		`{"a":1}`,
		`{"a":1,"b":"x","c":[1,{"d":null}],"e":{"f":true}}`,
		`{"a":1,"a":2}`,          // the last of duplicates wins
		`{"\u0061b":"\"q\\"}`,    // an escaped key
		`{"_written":5,"k":"v"}`, // WrittenKey is a member like any other here
		`{"n":-1.5e3,"s":"h\u00e9"}`,
	} {
		fields, err := SplitObject([]byte(obj))
		if err != nil {
			t.Fatalf("SplitObject(%s): %v", obj, err)
		}
		got := map[string]json.RawMessage{}
		for _, f := range fields {
			got[f.Key] = f.Value
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal([]byte(obj), &want); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("SplitObject(%s) = %v, encoding/json %v", obj, got, want)
		}
		for k, v := range want {
			if string(got[k]) != string(v) {
				t.Fatalf("SplitObject(%s)[%q] = %s, encoding/json %s", obj, k, got[k], v)
			}
		}
	}
	for _, bad := range []string{``, `[]`, `{"a"}`, `{"a":1,}`, `{"a":1}x`, `{a:1}`} {
		if _, err := SplitObject([]byte(bad)); err == nil {
			t.Errorf("SplitObject(%q): no error", bad)
		}
	}
}

// CompactValue answers as json.Compact does, and hands a compact value back
// without copying it (FuzzValidCompact holds the two to each other).
func TestCompactValue(t *testing.T) {
	for _, in := range []string{`1`, `"x y"`, `{"a":[1,{"b":null}]}`, ` 1`, `{"a": 1}`, "[1,\n2]", `{"a":01}`, `tru`, ``} {
		var buf bytes.Buffer
		werr := json.Compact(&buf, []byte(in))
		b := []byte(in)
		got, err := CompactValue(b)
		if (err != nil) != (werr != nil) {
			t.Fatalf("CompactValue(%q) error %v, json.Compact's %v", in, err, werr)
		}
		if err != nil {
			continue
		}
		if !bytes.Equal(got, buf.Bytes()) {
			t.Fatalf("CompactValue(%q) = %q, json.Compact gives %q", in, got, buf.Bytes())
		}
		if compact := bytes.Equal(b, buf.Bytes()); compact != (&got[0] == &b[0]) {
			t.Fatalf("CompactValue(%q): copied %v, want a copy only of a loose value", in, &got[0] != &b[0])
		}
	}
}
