package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// The exact bytes the Kado 4.0 client sends.
const (
	kadoSave    = `{"save":{"sid":"sid1","data":{"a":1},"_written":1795629654509}}`
	kadoRestore = `{"restore":{"sid":"sid1","_written":1795629654515}}`
	kado44Save  = `{"save":{"sid":"s","ip":"1.2.3.4","agent":"ua","uid":7,"data":{"x":1}}}`
)

func TestDecodeKado(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want KadoRequest
	}{
		{"Kado 4.0 save", kadoSave, KadoRequest{Op: OpSave, SID: "sid1", Data: []byte(`{"a":1}`)}},
		{"Kado 4.0 restore", kadoRestore, KadoRequest{Op: OpRestore, SID: "sid1"}},
		{"Kado 4.4 save", kado44Save, KadoRequest{Op: OpSave, SID: "s", Data: []byte(`{"x":1}`)}},
		{"surrounding white space", " \n\t" + kadoRestore + "\r\n ", KadoRequest{Op: OpRestore, SID: "sid1"}},
		{"data keeps its bytes", `{"save":{"sid":"a","data": { "b" : [1, 2] } }}`, KadoRequest{Op: OpSave, SID: "a", Data: []byte(`{ "b" : [1, 2] }`)}},
		{"empty data", `{"save":{"sid":"a","data":{}}}`, KadoRequest{Op: OpSave, SID: "a", Data: []byte(`{}`)}},
		{"token", `{"token":"secret","restore":{"sid":"a"}}`, KadoRequest{Op: OpRestore, SID: "a", Token: "secret"}},
		{"__proto__ sid", `{"restore":{"sid":"__proto__"}}`, KadoRequest{Op: OpRestore, SID: "__proto__"}},
		{"constructor sid", `{"save":{"sid":"constructor","data":{"constructor":1}}}`, KadoRequest{Op: OpSave, SID: "constructor", Data: []byte(`{"constructor":1}`)}},
		{"escaped sid", `{"restore":{"sid":"\u00e9\"q"}}`, KadoRequest{Op: OpRestore, SID: "é\"q"}},
		{"unknown members ignored", `{"restore":{"sid":"a","extra":[1]},"other":null}`, KadoRequest{Op: OpRestore, SID: "a"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeKado([]byte(tc.in))
			if err != nil {
				t.Fatalf("DecodeKado(%s): %v", tc.in, err)
			}
			if got.Op != tc.want.Op || got.SID != tc.want.SID || !bytes.Equal(got.Data, tc.want.Data) || got.Token != tc.want.Token {
				t.Fatalf("DecodeKado(%s) = %+v (data %s), want %+v (data %s)", tc.in, got, got.Data, tc.want, tc.want.Data)
			}
		})
	}
}

func TestDecodeKadoBad(t *testing.T) {
	cases := []struct {
		name string
		in   string
		msgs []string // each must appear in the message
	}{
		{"null", `null`, []string{"got null"}},
		{"empty", ``, []string{"empty request"}},
		{"white space", " \n ", []string{"empty request"}},
		{"restore without sid", `{"restore":{}}`, []string{"restore.sid is missing"}},
		{"save without data", `{"save":{"sid":"a"}}`, []string{"save.data is missing"}},
		{"save without sid", `{"save":{"data":{}}}`, []string{"save.sid is missing"}},
		{"number sid", `{"restore":{"sid":5}}`, []string{"restore.sid must be a string", "got a number"}},
		{"object sid", `{"save":{"sid":{"a":1},"data":{}}}`, []string{"save.sid must be a string", "got an object"}},
		{"array sid", `{"restore":{"sid":["a"]}}`, []string{"must be a string", "got an array"}},
		{"boolean sid", `{"restore":{"sid":true}}`, []string{"must be a string", "got a boolean"}},
		{"null sid", `{"restore":{"sid":null}}`, []string{"restore.sid"}},
		{"empty sid", `{"restore":{"sid":""}}`, []string{"restore.sid is empty"}},
		{"array data", `{"save":{"sid":"a","data":[1,2]}}`, []string{"save.data must be a JSON object", "got an array"}},
		{"string data", `{"save":{"sid":"a","data":"x"}}`, []string{"save.data must be a JSON object", "got a string"}},
		{"null data", `{"save":{"sid":"a","data":null}}`, []string{"save.data must be a JSON object", "got null"}},
		{"number data", `{"save":{"sid":"a","data":1}}`, []string{"save.data must be a JSON object", "got a number"}},
		{"two documents", kadoRestore + kadoRestore, []string{"more than one JSON document"}},
		{"two documents with a newline", kadoSave + "\n" + kadoRestore, []string{"more than one JSON document"}},
		{"trailing garbage", kadoRestore + " x", []string{"more than one"}},
		{"binary garbage", "\x00\x01\xfe\xff\x80garbage", []string{"not valid JSON"}},
		{"truncated", `{"restore":{"sid":"a"`, []string{"not valid JSON"}},
		{"empty array", `[]`, []string{"JSON object", "array"}},
		{"array of requests", `[` + kadoRestore + `]`, []string{"JSON object", "array"}},
		{"string", `"str"`, []string{"JSON object", "string"}},
		{"number", `42`, []string{"JSON object", "number"}},
		{"boolean", `true`, []string{"JSON object", "bool"}},
		{"both save and restore", `{"save":{"sid":"a","data":{}},"restore":{"sid":"a"}}`, []string{"both", "save", "restore"}},
		{"no action", `{}`, []string{"no action"}},
		{"unknown action", `{"delete":{"sid":"a"}}`, []string{"no action"}},
		{"save is a string", `{"save":"sid1"}`, []string{`"save" must be a JSON object`, "got a string"}},
		{"restore is null", `{"restore":null}`, []string{`"restore" must be a JSON object`, "got null"}},
		{"restore is an array", `{"restore":["sid1"]}`, []string{`"restore" must be a JSON object`, "got an array"}},
		{"token not a string", `{"token":5,"restore":{"sid":"a"}}`, []string{`"token" must be a string`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeKado([]byte(tc.in))
			if err == nil {
				t.Fatalf("DecodeKado(%q) = %+v, want an error", tc.in, got)
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest {
				t.Fatalf("error %#v is not a CodeBadRequest *Error", err)
			}
			for _, msg := range tc.msgs {
				if !strings.Contains(e.Message, msg) {
					t.Errorf("message %q does not mention %q", e.Message, msg)
				}
			}
		})
	}
}

func TestKadoReplies(t *testing.T) {
	cases := []struct {
		name string
		got  []byte
		want string
	}{
		{"ok", KadoOK, `{"status":"ok"}`},
		{"result", KadoResult([]byte(`{"a":1}`)), `{"status":"ok","result":{"a":1}}`},
		{"unknown sid", KadoResult(nil), `{"status":"ok","result":{}}`},
		{"empty result", KadoResult([]byte{}), `{"status":"ok","result":{}}`},
		{"error", KadoError(`bad "sid"`), `{"status":"error","message":"bad \"sid\""}`},
		{"error with control chars", KadoError("a\nb"), `{"status":"error","message":"a\nb"}`},
		{"result, non-ASCII escaped", KadoResult([]byte(`{"é":"中😀\u00e9"}`)), `{"status":"ok","result":{"\u00e9":"\u4e2d\ud83d\ude00\u00e9"}}`},
		{"error, non-ASCII escaped", KadoError("sid «x»"), `{"status":"error","message":"sid \u00abx\u00bb"}`},
		{"error, invalid UTF-8", KadoError("bad \xff"), `{"status":"error","message":"bad \ufffd"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if string(tc.got) != tc.want {
				t.Fatalf("got %s, want %s", tc.got, tc.want)
			}
			if !json.Valid(tc.got) {
				t.Fatalf("%s is not valid JSON", tc.got)
			}
		})
	}
	// Invalid UTF-8 in a message still gives valid JSON.
	if b := KadoError("bad \xff byte"); !json.Valid(b) {
		t.Fatalf("KadoError with invalid UTF-8 = %q, not valid JSON", b)
	}
}

func FuzzDecodeKado(f *testing.F) {
	for _, s := range []string{
		kadoSave, kadoRestore, kado44Save, `null`, `{"restore":{}}`, `{"save":{"sid":"a"}}`,
		`{"restore":{"sid":5}}`, `{"save":{"sid":"a","data":[1]}}`, kadoRestore + kadoRestore,
		"\x00\xff", `[]`, `"str"`, `{"save":{"sid":"a","data":{}},"restore":{"sid":"a"}}`,
		`{"token":"t","restore":{"sid":"__proto__"}}`, `{"restore":{"sid":"\ud800"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		req, err := DecodeKado(doc)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest || e.Message == "" {
				t.Fatalf("DecodeKado(%q): %#v is not a CodeBadRequest *Error with a message", doc, err)
			}
			if reply := KadoError(e.Message); !json.Valid(reply) {
				t.Fatalf("error reply %q is not valid JSON", reply)
			}
			return
		}
		switch req.Op {
		case OpRestore:
		case OpSave:
			if len(req.Data) == 0 || req.Data[0] != '{' || !json.Valid(req.Data) {
				t.Fatalf("DecodeKado(%q) accepted data %q", doc, req.Data)
			}
		default:
			t.Fatalf("DecodeKado(%q) returned op %v", doc, req.Op)
		}
		if req.SID == "" {
			t.Fatalf("DecodeKado(%q) accepted an empty sid", doc)
		}
	})
}

// TestKadoReplyEscapesKeepMeaning: escaping a restore's JSON for the wire
// leaves only ASCII and changes no value, for random text of every width
// (and bytes that are not UTF-8, which read as U+FFFD either way).
func TestKadoReplyEscapesKeepMeaning(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	pick := []rune{'a', '"', '\\', '\n', 0x7f, 0xe9, 0x2028, 0x4e2d, 0xfffd, 0xffff, 0x1f600, 0x10ffff}
	for i := 0; i < 2000; i++ {
		var b strings.Builder
		for n := rng.IntN(40); n > 0; n-- {
			if rng.IntN(20) == 0 {
				b.WriteByte(0x80 + byte(rng.IntN(0x40))) // a stray continuation byte
				continue
			}
			b.WriteRune(pick[rng.IntN(len(pick))])
		}
		doc, _ := json.Marshal(map[string]string{b.String(): b.String()})
		reply := KadoResult(doc)
		for _, c := range reply {
			if c >= 0x80 {
				t.Fatalf("reply for %q is not ASCII: %q", b.String(), reply)
			}
		}
		var got struct{ Result map[string]string }
		var want map[string]string
		if err := json.Unmarshal(reply, &got); err != nil {
			t.Fatalf("reply for %q is not JSON: %v: %q", b.String(), err, reply)
		}
		json.Unmarshal(doc, &want)
		if !reflect.DeepEqual(got.Result, want) {
			t.Fatalf("escaped %q reads back as %q, want %q", doc, got.Result, want)
		}
	}
}
