package cluster

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// The bytes the real Kado 4.0 SessionStoreLocal sends, captured on the wire.
const (
	kadoSave    = `{"save":{"sid":"sid1","data":{"a":1},"_written":1795629654509}}`
	kadoRestore = `{"restore":{"sid":"sid1","_written":1795629654515}}`
)

func TestKadoProtocolCapturedBytes(t *testing.T) {
	n := startNode(t, Config{})
	addr := n.Addr()
	if got := kadoRequest(t, addr, []byte(kadoSave)); got != `{"status":"ok"}` {
		t.Fatalf("save reply = %s", got)
	}
	if got := kadoRequest(t, addr, []byte(kadoRestore)); got != `{"status":"ok","result":{"a":1}}` {
		t.Fatalf("restore reply = %s", got)
	}
	if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"unknown","_written":1}}`)); got != `{"status":"ok","result":{}}` {
		t.Fatalf("restore of unknown sid = %s", got)
	}
	// Kado 4.4's save shape: extra members beside sid, data stored.
	save44 := `{"save":{"sid":"s44","ip":"10.0.0.1","agent":"Mozilla/5.0","uid":42,"data":{"user":"alice","n":[1,2,{"x":null}]}}}`
	if got := kadoRequest(t, addr, []byte(save44)); got != `{"status":"ok"}` {
		t.Fatalf("4.4 save reply = %s", got)
	}
	if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"s44"}}`)); got != `{"status":"ok","result":{"user":"alice","n":[1,2,{"x":null}]}}` {
		t.Fatalf("4.4 restore reply = %s", got)
	}
	// A legacy save replaces the whole session.
	kadoRequest(t, addr, []byte(`{"save":{"sid":"s44","data":{"only":true}}}`))
	if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"s44"}}`)); got != `{"status":"ok","result":{"only":true}}` {
		t.Fatalf("restore after replacing save = %s", got)
	}
}

func TestKadoProtocolBadInputs(t *testing.T) {
	n := startNode(t, Config{Server: transport.ServerConfig{ReadTimeout: 300 * time.Millisecond}})
	addr := n.Addr()
	cases := []struct {
		name, req, want string
	}{
		{"null", `null`, "got null"},
		{"restore without sid", `{"restore":{}}`, "restore.sid is missing"},
		{"save without data", `{"save":{"sid":"a"}}`, "save.data is missing"},
		{"non-string sid", `{"restore":{"sid":5}}`, "sid must be a string"},
		{"array data", `{"save":{"sid":"a","data":[1,2]}}`, "must be a JSON object, got an array"},
		{"null data", `{"save":{"sid":"a","data":null}}`, "got null"},
		{"two documents", `{"restore":{"sid":"a"}}{"restore":{"sid":"a"}}`, "more than one JSON document"},
		{"binary garbage", "\x00\xff\xfe\x01garbage", "not valid JSON"},
		{"array request", `[1,2,3]`, "must be a JSON object"},
		{"no action", `{"delete":{"sid":"a"}}`, "no action"},
		{"empty sid", `{"restore":{"sid":""}}`, "sid is empty"},
		{"truncated", `{"save":{"sid":"a","data":{"x":`, "not valid JSON"},
		{"empty request", ``, "empty request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := kadoRequest(t, addr, []byte(tc.req))
			if !strings.HasPrefix(got, `{"status":"error","message":"`) || !strings.Contains(got, tc.want) {
				t.Fatalf("reply = %s, want an error mentioning %q", got, tc.want)
			}
		})
	}
	// Kado's prototype-polluting sids are ordinary sessions here.
	for _, sid := range []string{"__proto__", "constructor", "hasOwnProperty"} {
		if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"`+sid+`"}}`)); got != `{"status":"ok","result":{}}` {
			t.Fatalf("restore %s before save = %s", sid, got)
		}
		kadoRequest(t, addr, []byte(`{"save":{"sid":"`+sid+`","data":{"v":"`+sid+`"}}}`))
		if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"`+sid+`"}}`)); got != `{"status":"ok","result":{"v":"`+sid+`"}}` {
			t.Fatalf("restore %s = %s", sid, got)
		}
	}
	// An id longer than a session id may be (a tampered cookie a Kado app
	// restores as it is): Kado answers a blank session, and so does the
	// node, while a save under it is refused with the limit.
	long := strings.Repeat("s", fsm.MaxSIDLen+1)
	if got := kadoRequest(t, addr, []byte(`{"restore":{"sid":"`+long+`"}}`)); got != `{"status":"ok","result":{}}` {
		t.Fatalf("restore of a %d-byte id = %s, want Kado's blank session", len(long), got)
	}
	if got := kadoRequest(t, addr, []byte(`{"save":{"sid":"`+long+`","data":{}}}`)); !strings.Contains(got, "the limit is 512") {
		t.Fatalf("save under a %d-byte id = %s, want the limit", len(long), got)
	}
	// Only a Kado request gets Kado's leniency, not a call made in-process.
	if _, _, err := n.Restore(context.Background(), long, transport.Default); err == nil || !strings.Contains(err.Error(), "the limit is 512") {
		t.Fatalf("in-process restore of a %d-byte id: %v, want the limit", len(long), err)
	}
	// After all that the node still serves.
	if got := kadoRequest(t, addr, []byte(kadoSave)); got != `{"status":"ok"}` {
		t.Fatalf("save after bad inputs = %s", got)
	}
}

func TestKadoProtocolSplitWritesAndSlowClients(t *testing.T) {
	n := startNode(t, Config{Server: transport.ServerConfig{ReadTimeout: 500 * time.Millisecond}})
	addr := n.Addr()

	// A client that never half-closes holds nothing for long and does not
	// stop others from being served meanwhile.
	var wg sync.WaitGroup
	wg.Add(1)
	var stuckReply string
	go func() {
		defer wg.Done()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(kadoSave))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		stuckReply = string(b)
	}()

	// One request split across many small TCP writes, one byte at a time.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetNoDelay(true)
	for i := 0; i < len(kadoSave); i++ {
		if _, err := c.Write([]byte{kadoSave[i]}); err != nil {
			t.Fatal(err)
		}
		if i%16 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != `{"status":"ok"}` {
		t.Fatalf("split save reply = %s", b)
	}
	if got := kadoRequest(t, addr, []byte(kadoRestore)); got != `{"status":"ok","result":{"a":1}}` {
		t.Fatalf("restore = %s", got)
	}
	wg.Wait()
	if !strings.Contains(stuckReply, "incomplete request") {
		t.Fatalf("client that never half-closed got %q, want an incomplete-request error", stuckReply)
	}
}

func TestKadoProtocolTooLarge(t *testing.T) {
	n := startNode(t, Config{MaxSessionSize: 4096, Server: transport.ServerConfig{MaxFrame: 16384}})
	big := `{"save":{"sid":"big","data":{"x":"` + strings.Repeat("a", 20000) + `"}}}`
	if got := kadoRequest(t, n.Addr(), []byte(big)); !strings.Contains(got, "too large") {
		t.Fatalf("oversized request reply = %s", got)
	}
	if got := kadoRequest(t, n.Addr(), []byte(kadoSave)); got != `{"status":"ok"}` {
		t.Fatalf("save after oversized = %s", got)
	}
}

// Node.Patch keeps nothing of its caller's: a value buffer reused right
// after the call (as by a caller that gave up waiting) does not change what
// was written.
func TestPatchCopiesValues(t *testing.T) {
	n := startNode(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := []byte(`"first"`)
	if err := n.Patch(ctx, "copied", []transport.KV{{Key: "k", Value: v}}, nil, false); err != nil {
		t.Fatal(err)
	}
	copy(v, `"xxxxx"`)
	data, ok, err := n.Restore(ctx, "copied", transport.Linearizable)
	if err != nil || !ok || !strings.Contains(string(data), `"k":"first"`) {
		t.Fatalf("restore: %s %v %v, want k=\"first\"", data, ok, err)
	}
	got, err := compactJSON(v)
	if err != nil || &got[0] == &v[0] {
		t.Fatalf("compactJSON returned the caller's slice (err %v)", err)
	}
}

// kadoChunkedReply sends req as Kado's SessionStoreLocal does and reads the
// reply as it does: each chunk read from the socket (here at most 999
// bytes) decoded as UTF-8 on its own, the texts joined.
func kadoChunkedReply(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	var text strings.Builder
	buf := make([]byte, 999) // not a multiple of the test text's 10-byte unit
	for {
		n, err := c.Read(buf)
		text.WriteString(strings.ToValidUTF8(string(buf[:n]), "\uFFFD")) // Node's chunk.toString('utf8')
		if err == io.EOF {
			return text.String()
		}
		if err != nil {
			t.Fatalf("read reply: %v", err)
		}
	}
}

// TestKadoRepliesSurviveChunkedDecoding: a Kado app gets back the unicode
// it saved, however the reply is cut into TCP segments. Kado's client
// decodes every chunk separately, so a multi-byte character cut between two
// came back as U+FFFD before replies were made ASCII (a 1 MB session through
// Node.js over loopback: 30 of them).
func TestKadoRepliesSurviveChunkedDecoding(t *testing.T) {
	n := startNode(t, Config{})
	addr := n.Addr()
	text := strings.Repeat("aé中😀", 3000) + "\u2028\x7f" // 1-, 2-, 3- and 4-byte characters
	save, _ := json.Marshal(map[string]any{"save": map[string]any{"sid": "ünï", "data": map[string]any{"t": text, "ключ": "значение"}}})
	if got := kadoChunkedReply(t, addr, string(save)); got != `{"status":"ok"}` {
		t.Fatalf("save reply = %s", got)
	}
	reply := kadoChunkedReply(t, addr, `{"restore":{"sid":"ünï","_written":1}}`)
	var got struct {
		Status string
		Result map[string]string
	}
	if err := json.Unmarshal([]byte(reply), &got); err != nil {
		t.Fatalf("restore reply is not JSON: %v", err)
	}
	if got.Status != "ok" || got.Result["ключ"] != "значение" {
		t.Fatalf("restore reply = %.200s", reply)
	}
	if got.Result["t"] != text {
		t.Fatalf("restored text differs from the saved one: %d U+FFFD in it", strings.Count(got.Result["t"], "\uFFFD"))
	}
	// Error replies too (the empty request's message holds "…").
	for _, req := range []string{``, `{"save":{"sid":"ü","data":[1]}}`} {
		r := kadoChunkedReply(t, addr, req)
		for i := 0; i < len(r); i++ {
			if r[i] >= 0x80 {
				t.Fatalf("reply to %q is not ASCII: %s", req, r)
			}
		}
		var e struct{ Status, Message string }
		if err := json.Unmarshal([]byte(r), &e); err != nil || e.Status != "error" || e.Message == "" {
			t.Fatalf("reply to %q = %s (%v)", req, r, err)
		}
	}
}
