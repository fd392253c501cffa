package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestNormalizeObject(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want string
	}{
		{"empty object", `{}`, `{}`},
		{"compacts white space", " {\n\t\"a\" : 1 ,\r\n \"b\" : [ 1 , 2 ] , \"c\": { \"d\" : null } }\n", `{"a":1,"b":[1,2],"c":{"d":null}}`},
		{"keeps key order", `{"z":1,"a":2,"m":3}`, `{"z":1,"a":2,"m":3}`},
		{"keeps string contents", `{"a":" spaced  out ","b":"\n"}`, `{"a":" spaced  out ","b":"\n"}`},
		{"drops _written", `{"a":1,"_written":1795629654509,"b":2}`, `{"a":1,"b":2}`},
		{"drops a lone _written", `{"_written":5}`, `{}`},
		{"drops an escaped _written", `{"\u005fwritten":5,"a":1}`, `{"a":1}`},
		{"drops _written of any type", `{"_written":{"x":1}}`, `{}`},
		{"keeps _written in values", `{"a":"_written","b":{"_written":1}}`, `{"a":"_written","b":{"_written":1}}`},
		{"duplicate keys keep first place and last value", `{"a":1,"b":2,"a":3}`, `{"a":3,"b":2}`},
		{"escaped keys are written canonically", `{"\u00e9t\u00e9":1,"tab\u0009":2}`, `{"été":1,"tab\t":2}`},
		{"no HTML escaping", `{"<a>":"&"}`, `{"<a>":"&"}`},
		{"keys that are JavaScript property names", `{"__proto__":{"x":1},"constructor":2}`, `{"__proto__":{"x":1},"constructor":2}`},
		{"big numbers kept exactly", `{"n":123456789012345678901234567890,"f":1.50e+300}`, `{"n":123456789012345678901234567890,"f":1.50e+300}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizeObject([]byte(tc.in))
			if err != nil {
				t.Fatalf("NormalizeObject(%q): %v", tc.in, err)
			}
			if string(got) != tc.want {
				t.Fatalf("NormalizeObject(%q) = %s, want %s", tc.in, got, tc.want)
			}
			checkNormalized(t, got)
		})
	}
}

func TestNormalizeObjectRejects(t *testing.T) {
	cases := []struct {
		name string
		in   string
		msg  string
	}{
		{"null", `null`, "got null"},
		{"array", `[1,2]`, "got an array"},
		{"empty array", `[]`, "got an array"},
		{"string", `"str"`, "got a string"},
		{"number", `42`, "got a number"},
		{"negative number", `-1`, "got a number"},
		{"boolean", `true`, "got a boolean"},
		{"empty", ``, "got nothing"},
		{"white space", " \n\t", "got nothing"},
		{"garbage", `xyz`, "invalid JSON"},
		{"unterminated", `{"a":1`, ""},
		{"missing value", `{"a":}`, ""},
		{"bare key", `{a:1}`, ""},
		{"two objects", `{"a":1}{"b":2}`, ""},
		{"trailing garbage", `{"a":1} x`, ""},
		{"trailing comma", `{"a":1,}`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizeObject([]byte(tc.in))
			if err == nil {
				t.Fatalf("NormalizeObject(%q) = %s, want an error", tc.in, got)
			}
			if !errors.Is(err, ErrBadData) {
				t.Fatalf("error %v does not wrap ErrBadData", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

// checkNormalized asserts what every normalized object must satisfy: it is
// compact valid JSON, an object without WrittenKey or duplicate keys, a
// fixed point of NormalizeObject, and it survives a save-file round trip
// byte for byte.
func checkNormalized(t *testing.T, obj []byte) {
	t.Helper()
	if !json.Valid(obj) {
		t.Fatalf("normalized %q is not valid JSON", obj)
	}
	var compact bytes.Buffer
	_ = json.Compact(&compact, obj)
	if !bytes.Equal(compact.Bytes(), obj) {
		t.Fatalf("normalized %q is not compact", obj)
	}
	fields, err := ParseObject(obj)
	if err != nil {
		t.Fatalf("normalized %q does not parse: %v", obj, err)
	}
	seen := map[string]bool{}
	for _, f := range fields {
		if f.Key == WrittenKey {
			t.Fatalf("normalized %q holds %s", obj, WrittenKey)
		}
		seen[f.Key] = true
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || len(m) != len(fields) {
		t.Fatalf("normalized %q has duplicate keys (or does not unmarshal: %v)", obj, err)
	}
	again, err := NormalizeObject(obj)
	if err != nil || !bytes.Equal(again, obj) {
		t.Fatalf("NormalizeObject is not idempotent on %q: %q, %v", obj, again, err)
	}
	s := NewState()
	s.Apply(&Command{Op: OpSave, Time: 1, SID: "s", Data: obj})
	var doc bytes.Buffer
	if _, err := s.Capture().WriteTo(&doc); err != nil {
		t.Fatal(err)
	}
	m2, err := ReadDocument(&doc, 0)
	if err != nil {
		t.Fatalf("document of %q does not read back: %v", obj, err)
	}
	if r := m2["s"]; r == nil || !bytes.Equal(r.Data, obj) || r.Written != 1 {
		t.Fatalf("normalized %q does not survive the save file: %+v", obj, r)
	}
}

func FuzzNormalizeObject(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, ` { "a" : [1, {"b":null}] } `, `{"_written":1,"a":2}`, `{"\u005fwritten":1}`,
		`{"a":1,"a":2}`, `{"é":"\u2028"}`, `null`, `[]`, `"s"`, `1`, `{"a":1}{}`, `{"a":"\xff"}`,
		"{\"\xff\":1}", `{"a":{"a":1,"a":2}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := NormalizeObject(in)
		if err != nil {
			if !errors.Is(err, ErrBadData) {
				t.Fatalf("NormalizeObject(%q): error %v does not wrap ErrBadData", in, err)
			}
			return
		}
		checkNormalized(t, out)
	})
}

func TestValidateSID(t *testing.T) {
	cases := []struct {
		name string
		sid  string
		ok   bool
	}{
		{"plain", "sid1", true},
		{"sha1 hex", "0123456789abcdef0123456789abcdef01234567", true},
		{"__proto__", "__proto__", true},
		{"constructor", "constructor", true},
		{"unicode", "séssion☃", true},
		{"quotes", `a"b\c`, true},
		{"at the limit", strings.Repeat("x", MaxSIDLen), true},
		{"empty", "", false},
		{"over the limit", strings.Repeat("x", MaxSIDLen+1), false},
		{"invalid UTF-8", "a\xffb", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateSID(tc.sid)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateSID = %v, want ok = %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadSID) {
				t.Fatalf("error %v does not wrap ErrBadSID", err)
			}
		})
	}
}

func TestValidateKey(t *testing.T) {
	cases := []struct {
		name string
		key  string
		ok   bool
	}{
		{"plain", "user", true},
		{"at the limit", strings.Repeat("k", MaxKeyLen), true},
		{"__proto__", "__proto__", true},
		{"empty", "", false},
		{"over the limit", strings.Repeat("k", MaxKeyLen+1), false},
		{"reserved", WrittenKey, false},
		{"invalid UTF-8", "a\xffb", false},
		{"U+FFFD itself", "a\ufffdb", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateKey(tc.key)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateKey = %v, want ok = %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
		})
	}
}

func TestRecordExpired(t *testing.T) {
	r := &Record{Written: 100}
	cases := []struct {
		name     string
		now, dur int64
		want     bool
	}{
		{"before", 199, 100, false},
		{"at", 200, 100, true},
		{"after", 201, 100, true},
		{"zero lifetime never expires", 1 << 62, 0, false},
		{"negative lifetime never expires", 1 << 62, -100, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.Expired(tc.now, tc.dur); got != tc.want {
				t.Fatalf("Expired(%d, %d) = %v, want %v", tc.now, tc.dur, got, tc.want)
			}
		})
	}
}

func TestEncodeObject(t *testing.T) {
	got := EncodeObject([]Field{
		{Key: "a", Value: []byte(`1`)},
		{Key: `q"uote`, Value: []byte(`"x"`)},
		{Key: "<é>", Value: []byte(`{}`)},
		{Key: "ctl\x01", Value: []byte(`null`)},
	})
	want := `{"a":1,"q\"uote":"x","<é>":{},"ctl\u0001":null}`
	if string(got) != want {
		t.Fatalf("EncodeObject = %s, want %s", got, want)
	}
	if string(EncodeObject(nil)) != `{}` {
		t.Fatalf("EncodeObject(nil) = %s", EncodeObject(nil))
	}
}

func TestCountKeys(t *testing.T) {
	for _, obj := range []string{
		`{}`, `{"a":1}`, `{"a":{"b":1,"c":2},"d":[1,{"e":":"}]}`,
		`{"k:ey":"va:l","q\"uo:te":"\\","x":"\\\":"}`, `{"":null,"a":[[],{}],"b":{"c":{"d":{}}}}`,
	} {
		_, want, err := NormalizeObjectKeys([]byte(obj))
		if err != nil {
			t.Fatal(err)
		}
		if got := CountKeys([]byte(obj)); got != want {
			t.Errorf("CountKeys(%s) = %d, want %d", obj, got, want)
		}
	}
}
