package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// awkwardSIDs are session ids that need escaping or that broke Kado.
var awkwardSIDs = []string{
	"sid1",
	`with "quotes"`,
	`back\slash`,
	"new\nline\ttab\x01ctl",
	"unicodé ☃ 𝄞",
	"\u2028\u2029",
	"</script><b>&amp;",
	"__proto__",
	"constructor",
	"hasOwnProperty",
	"toString",
	"0",
	strings.Repeat("x", MaxSIDLen),
}

func TestDocumentRoundTrip(t *testing.T) {
	s := NewState()
	datas := []string{`{}`, `{"a":1}`, `{"nested":{"x":[1,2,{"y":null}]},"s":"é\"\\\n"}`,
		`{"__proto__":{"polluted":true},"constructor":1}`, `{"big":123456789012345678901234567890}`}
	for i, sid := range awkwardSIDs {
		s.Apply(&Command{Op: OpSave, Time: int64(1795629654509 + i), SID: sid, Data: []byte(datas[i%len(datas)])})
	}
	s.Apply(&Command{Op: OpSave, Time: -1, SID: "negative time", Data: []byte(`{}`)})
	s.Apply(&Command{Op: OpSave, Time: 0, SID: "zero time", Data: []byte(`{"z":0}`)})
	v := s.Capture()
	var doc bytes.Buffer
	n, err := v.WriteTo(&doc)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(doc.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d bytes", n, doc.Len())
	}
	m, err := ReadDocument(bytes.NewReader(doc.Bytes()), 42)
	if err != nil {
		t.Fatalf("ReadDocument: %v\n%s", err, doc.Bytes())
	}
	if len(m) != v.Len() {
		t.Fatalf("read %d sessions, wrote %d", len(m), v.Len())
	}
	for sid, got := range m {
		want, ok := v.Get(sid)
		if !ok {
			t.Fatalf("read an unknown sid %q", sid)
		}
		if !bytes.Equal(got.Data, want.Data) || got.Written != want.Written {
			t.Errorf("sid %q: read %s @%d, wrote %s @%d", sid, got.Data, got.Written, want.Data, want.Written)
		}
	}
	s2 := NewState()
	s2.Replace(m)
	var doc2 bytes.Buffer
	if _, err := s2.Capture().WriteTo(&doc2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc.Bytes(), doc2.Bytes()) {
		t.Fatalf("documents differ after a round trip:\n%s\n%s", doc.Bytes(), doc2.Bytes())
	}
	if s2.Capture().Hash() != v.Hash() {
		t.Fatal("hashes differ after a round trip")
	}
}

func TestDocumentFormat(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, Time: 5, SID: "b", Data: []byte(`{"x":1,"y":"z"}`)})
	s.Apply(&Command{Op: OpSave, Time: 1795629654509, SID: "a", Data: []byte(`{}`)})
	s.Apply(&Command{Op: OpSave, Time: 7, SID: "é", Data: []byte(`{"<":">"}`)})
	var doc bytes.Buffer
	if _, err := s.Capture().WriteTo(&doc); err != nil {
		t.Fatal(err)
	}
	// Sids in byte order, _written last in each record, no HTML escaping.
	want := `{"a":{"_written":1795629654509},"b":{"x":1,"y":"z","_written":5},"é":{"<":">","_written":7}}`
	if doc.String() != want {
		t.Fatalf("document\n got %s\nwant %s", doc.String(), want)
	}
	var empty bytes.Buffer
	if _, err := NewState().Capture().WriteTo(&empty); err != nil {
		t.Fatal(err)
	}
	if empty.String() != `{}` {
		t.Fatalf("empty state document = %q, want {}", empty.String())
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestWriteToError(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, SID: "a", Data: []byte(`{}`)})
	boom := errors.New("disk full")
	if _, err := s.Capture().WriteTo(failWriter{boom}); !errors.Is(err, boom) {
		t.Fatalf("WriteTo = %v, want %v", err, boom)
	}
}

func TestReadDocumentKado(t *testing.T) {
	const def = 1_700_000_000_000
	cases := []struct {
		name string
		in   string
		want map[string]want
	}{
		{"Kado's own save file", `{"abc":{"foo":"bar"}}`, map[string]want{"abc": {`{"foo":"bar"}`, def}}},
		{"empty store", `{}`, map[string]want{}},
		{"empty store with white space", " \n{ }\n", map[string]want{}},
		{"_written is used and stripped", `{"abc":{"foo":"bar","_written":1795629654509}}`,
			map[string]want{"abc": {`{"foo":"bar"}`, 1795629654509}}},
		{"_written first", `{"abc":{"_written":12,"foo":"bar"}}`, map[string]want{"abc": {`{"foo":"bar"}`, 12}}},
		{"_written only", `{"abc":{"_written":12}}`, map[string]want{"abc": {`{}`, 12}}},
		{"negative _written", `{"abc":{"_written":-3}}`, map[string]want{"abc": {`{}`, -3}}},
		{"escaped _written", `{"abc":{"\u005fwritten":9,"a":1}}`, map[string]want{"abc": {`{"a":1}`, 9}}},
		{"pretty printed", "{\n  \"abc\": {\n    \"foo\": [ 1, 2 ],\n    \"_written\": 77\n  },\n  \"def\": {}\n}\n",
			map[string]want{"abc": {`{"foo":[1,2]}`, 77}, "def": {`{}`, def}}},
		{"escaped sids", `{"q\"uote":{},"\u00e9":{},"__proto__":{"a":1},"constructor":{}}`,
			map[string]want{`q"uote`: {`{}`, def}, "é": {`{}`, def}, "__proto__": {`{"a":1}`, def}, "constructor": {`{}`, def}}},
		{"duplicate key: last value", `{"a":{"k":1,"j":0,"k":2}}`, map[string]want{"a": {`{"k":2,"j":0}`, def}}},
		{"_written twice, last at the end", `{"a":{"_written":1,"x":2,"_written":3}}`, map[string]want{"a": {`{"x":2}`, 3}}},
		{"_written last after an escaped key", `{"a":{"t\u0061b":1,"_written":4}}`, map[string]want{"a": {`{"tab":1}`, 4}}},
		{"brackets, quotes and backslashes inside strings", `{"a":{"s":"}]\"{[\\","t":"\\\\","u":"\"","v":["}",{"w":"\\\""}]},"b":{}}`,
			map[string]want{"a": {`{"s":"}]\"{[\\","t":"\\\\","u":"\"","v":["}",{"w":"\\\""}]}`, def}, "b": {`{}`, def}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// One byte at a time (the reader must not assume big reads),
			// then all at once.
			for _, r := range []io.Reader{iotest.OneByteReader(strings.NewReader(tc.in)), strings.NewReader(tc.in)} {
				m, err := ReadDocument(r, def)
				if err != nil {
					t.Fatalf("ReadDocument: %v", err)
				}
				s := NewState()
				s.Replace(m)
				checkSessions(t, s, tc.want)
			}
		})
	}
}

func TestReadDocumentCorrupt(t *testing.T) {
	cases := []struct {
		name string
		in   string
		msgs []string // each must appear in the error message
	}{
		{"empty file", ``, []string{"empty"}},
		{"white space only", " \n\t ", []string{"empty"}},
		{"truncated after the brace", `{`, []string{"byte"}},
		{"truncated in a record", `{"abc":{"foo":"ba`, []string{"session #1", "byte"}},
		{"truncated after a record", `{"abc":{"foo":"bar"}`, []string{"unterminated"}},
		{"truncated after a comma", `{"abc":{},`, []string{"byte"}},
		{"not an object: array", `[{"abc":{}}]`, []string{"must be a JSON object"}},
		{"not an object: string", `"sessions"`, []string{"must be a JSON object"}},
		{"not an object: number", `42`, []string{"must be a JSON object"}},
		{"not an object: null", `null`, []string{"must be a JSON object"}},
		{"not JSON", `hello`, []string{"not JSON"}},
		{"text that starts like a boolean", "this is not json {\nsecond line", []string{"must be a JSON object", `starts with "this is not json {"`}},
		{"binary garbage", "\x00\x01\xfe\xff", []string{"not JSON"}},
		{"non-integer _written: string", `{"abc":{"_written":"yesterday"}}`, []string{"session #1", "_written must be an integer", `"yesterday"`}},
		{"non-integer _written: float", `{"abc":{"_written":1.5}}`, []string{"_written must be an integer", "1.5"}},
		{"non-integer _written: exponent", `{"abc":{"_written":1e3}}`, []string{"_written must be an integer"}},
		{"non-integer _written: null", `{"abc":{"_written":null}}`, []string{"_written must be an integer"}},
		{"_written out of range", `{"abc":{"_written":99999999999999999999}}`, []string{"_written must be an integer"}},
		{"trailing garbage", `{"abc":{}} x`, []string{"trailing data"}},
		{"two documents", `{}{}`, []string{"trailing data"}},
		{"a sid given twice", `{"abc":{"v":1},"abc":{"v":2}}`, []string{"session #2", "earlier session"}},
		{"trailing comma", `{"abc":{},}`, []string{"trailing comma"}},
		{"record is an array", `{"abc":[1,2]}`, []string{"session #1", "array"}},
		{"record is a string", `{"abc":"data"}`, []string{"session #1", "string"}},
		{"record is null", `{"abc":null}`, []string{"session #1", "null"}},
		{"record is a number", `{"abc":5}`, []string{"session #1", "number"}},
		{"empty sid", `{"":{}}`, []string{"bad session id", "empty"}},
		{"sid too long", `{"` + strings.Repeat("x", MaxSIDLen+1) + `":{}}`, []string{"bad session id", "limit"}},
		{"bad syntax in a record", `{"abc":{foo:1}}`, []string{"session #1"}},
		{"missing colon", `{"abc" {}}`, []string{"byte"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadDocument(strings.NewReader(tc.in), 0)
			if err == nil {
				t.Fatalf("ReadDocument(%q) = %v, want an error", tc.in, m)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			for _, msg := range tc.msgs {
				if !strings.Contains(err.Error(), msg) {
					t.Errorf("error %q does not mention %q", err, msg)
				}
			}
			if !strings.Contains(err.Error(), "save file at byte") {
				t.Errorf("error %q does not give the byte offset", err)
			}
		})
	}
}

func TestReadDocumentReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	r := io.MultiReader(strings.NewReader(`{"abc":{"a`), iotest.ErrReader(boom))
	_, err := ReadDocument(r, 0)
	if err == nil || !strings.Contains(err.Error(), boom.Error()) {
		t.Fatalf("ReadDocument = %v, want an error that says %q", err, boom)
	}
}

// checkDocumentRoundTrip reads doc; when that succeeds, writing the state
// and reading it back must give the same hash.
func checkDocumentRoundTrip(t *testing.T, doc []byte) {
	t.Helper()
	m, err := ReadDocument(bytes.NewReader(doc), 7)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ReadDocument(%q): error %v does not wrap ErrCorrupt", doc, err)
		}
		return
	}
	s := NewState()
	s.Replace(m)
	v := s.Capture()
	var out bytes.Buffer
	if _, err := v.WriteTo(&out); err != nil {
		t.Fatal(err)
	}
	m2, err := ReadDocument(bytes.NewReader(out.Bytes()), 99)
	if err != nil {
		t.Fatalf("document %q read, but its rewrite %q does not: %v", doc, out.Bytes(), err)
	}
	s2 := NewState()
	s2.Replace(m2)
	if h1, h2 := v.Hash(), s2.Capture().Hash(); h1 != h2 {
		var out2 bytes.Buffer
		_, _ = s2.Capture().WriteTo(&out2)
		t.Fatalf("round trip of %q changed the state:\n%s\n%s", doc, out.Bytes(), out2.Bytes())
	}
}

func FuzzReadDocument(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"abc":{"foo":"bar"}}`, `{"abc":{"foo":"bar","_written":1795629654509}}`,
		`{"q\"uote":{"\u005fwritten":1},"__proto__":{"a":{"b":[1]}}}`, `{"a":{"k":1,"k":2}}`,
		`{"a":{},"a":{"x":1}}`, `{"abc":[1]}`, `{"abc":{"_written":1.5}}`, `[]`, `null`, ``, `{} x`,
		"{\"\xff\":{\"\xfe\":\"\xfd\"}}", `{"a":{"é":"\u2028"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		checkDocumentRoundTrip(t, doc)
	})
}

// TestReadDocumentErrorsHideSessionIDs: a corrupt save file's error names
// the session by position, never by its id (ids are bearer credentials).
func TestReadDocumentErrorsHideSessionIDs(t *testing.T) {
	for _, doc := range []string{
		`{"a-secret-sid":[1]}`, `{"ok":{},"a-secret-sid":{"_written":"x"}}`, `{"a-secret-sid":{"x":`, `{"a-secret-sid" {}}`,
	} {
		_, err := ReadDocument(strings.NewReader(doc), 0)
		if err == nil || strings.Contains(err.Error(), "a-secret-sid") {
			t.Fatalf("ReadDocument(%s) = %v: the error must not name the session id", doc, err)
		}
	}
}

// TestDocumentOrdersIDsByBytes: the document lists ids in byte order
// whatever they share: prefixes of each other, a difference only past the
// 8 and 16 bytes WriteTo's sort compares first, or at their boundaries.
func TestDocumentOrdersIDsByBytes(t *testing.T) {
	ids := []string{"a", "ab", "abcdefgh", "abcdefgg", "abcdefghi", "abcdefgh0",
		"abcdefghijklmnop", "abcdefghijklmnoo", "abcdefghijklmnopq", "abcdefghijklmnopp",
		"abcdefghijklmnop-x", "abcdefghijklmnop-w", "user-1", "user-10", "user-9", "user-100000000000000002",
		"user-100000000000000001", "é", "e", "~", "0", strings.Repeat("z", MaxSIDLen)}
	ids = append(ids, awkwardSIDs...)
	for i := range 300 {
		ids = append(ids, fmt.Sprintf("bench-%d", i), fmt.Sprintf("%040x", i*7919))
	}
	s := NewState()
	for _, sid := range ids {
		s.Apply(&Command{Op: OpSave, Time: 1, SID: sid, Data: []byte(`{}`)})
	}
	var doc bytes.Buffer
	if _, err := s.Capture().WriteTo(&doc); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(&doc)
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	want := slices.Clone(ids)
	slices.Sort(want)
	want = slices.Compact(want)
	if !slices.Equal(got, want) {
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("id #%d is %q, want %q (byte order)", i, got[i], want[i])
			}
		}
		t.Fatalf("%d ids in the document, want %d", len(got), len(want))
	}
}
