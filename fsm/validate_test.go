package fsm

import (
	"bytes"
	"encoding/json"
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
