package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// adminVia returns an AdminFunc that talks the native protocol to addr, as
// the backup and restore commands do.
func adminVia(t *testing.T, addr string) AdminFunc {
	t.Helper()
	c := nativeConn(t, addr)
	return func(ctx context.Context, body []byte) ([]byte, error) {
		resp, err := c.RoundTrip(ctx, &transport.Request{Op: transport.OpAdmin, Data: body})
		if err == nil && resp.Err != nil {
			err = resp.Err
		}
		return resp.Data, err
	}
}

func TestBackupRestoreIntoFreshCluster(t *testing.T) {
	src := newTestCluster(t, 3, nil)
	l := src.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := strings.Repeat("x", 3000)
	for i := 0; i < 300; i++ {
		mustSave(t, src.nodes[l], fmt.Sprintf("sid-%03d", i), fmt.Sprintf(`{"i":%d,"pad":%q,"nested":{"a":[1,2,"<&>"]}}`, i, big[:i*10]))
	}
	if err := src.nodes[l].Patch(ctx, "sid-007", []transport.KV{{Key: "user", Value: []byte(`"alice"`)}}, []string{"pad"}, false); err != nil {
		t.Fatalf("patch: %v", err)
	}
	mustSave(t, src.nodes[l], "empty", `{}`)
	mustSave(t, src.nodes[l], `odd "sid" \ é`, `{"k":"v"}`)
	want := src.waitSame()

	// Through a follower, in small chunks: forwarding and chunking both run.
	var buf bytes.Buffer
	var calls int
	info, err := FetchBackup(ctx, adminVia(t, src.nodes[src.follower()].Addr()), &buf,
		BackupOptions{Chunk: 64 << 10, Progress: func(done, total int64) {
			calls++
			if done > total {
				t.Errorf("progress %d of %d", done, total)
			}
		}})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	if info.SHA256 != want || info.Sessions != 302 || info.Size != int64(buf.Len()) {
		t.Fatalf("backup info %+v (document %d bytes), want sha256 %s and 302 sessions", info, buf.Len(), want)
	}
	if calls < 2 {
		t.Fatalf("progress called %d times: the backup was not chunked", calls)
	}
	records, err := fsm.ReadDocument(bytes.NewReader(buf.Bytes()), 0)
	if err != nil {
		t.Fatalf("the backup does not decode: %v", err)
	}
	if d := DocumentDigest(records); d.SHA256 != want || d.Sessions != 302 {
		t.Fatalf("decoded backup digest %+v, want %s", d, want)
	}

	// Restore into a fresh cluster, through a follower, in many batches.
	dst := newTestCluster(t, 3, nil)
	call := adminVia(t, dst.nodes[dst.follower()].Addr())
	if d, err := FetchDigest(ctx, call); err != nil || d.Sessions != 0 {
		t.Fatalf("fresh cluster digest %+v, %v", d, err)
	}
	batches := 0
	loaded, err := RestoreRecords(ctx, call, records, RestoreOptions{BatchBytes: 16 << 10, Progress: func(done, total int) { batches++ }})
	if err != nil || loaded != 302 {
		t.Fatalf("restore: loaded %d, %v", loaded, err)
	}
	if batches < 5 {
		t.Fatalf("restore sent %d batches, want several", batches)
	}
	if got := dst.waitSame(); got != want {
		t.Fatalf("restored cluster hash %s, want %s", got, want)
	}
	d, err := FetchDigest(ctx, call)
	if err != nil || d.SHA256 != want || d.Sessions != 302 {
		t.Fatalf("restored digest %+v, %v; want %s", d, err, want)
	}
	// Each record kept its own save time.
	orig, _ := src.nodes[l].State().Capture().Get("sid-123")
	got, ok := dst.nodes[dst.leader()].State().Capture().Get("sid-123")
	if !ok || got.Written != orig.Written || !bytes.Equal(got.Data, orig.Data) {
		t.Fatalf("sid-123 restored as %+v, want %+v", got, orig)
	}
}

func TestBackupErrors(t *testing.T) {
	n := startNode(t, Config{})
	call := adminVia(t, n.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, tt := range []struct {
		name, body, want string
	}{
		{"unknown backup", `{"op":"backup-read","backup":"nope","offset":0}`, "not held by the leader"},
		{"corrupt restore batch", `{"op":"restore-batch","document":{"a":[1]}}`, "restore batch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := call(ctx, []byte(tt.body))
			if !errors.Is(err, transport.ErrBadRequest) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%s: %v, want a bad request saying %q", tt.body, err, tt.want)
			}
		})
	}

	// The leader holds at most MaxHeldBackups; ending one frees its slot.
	var infos []BackupInfo
	for i := 0; i < MaxHeldBackups; i++ {
		info, err := n.beginBackup(ctx)
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		infos = append(infos, info)
	}
	if _, err := n.beginBackup(ctx); !errors.Is(err, transport.ErrOverloaded) {
		t.Fatalf("backup beyond the limit: %v, want overloaded", err)
	}
	if _, err := call(ctx, []byte(`{"op":"backup-end","backup":"`+infos[0].ID+`"}`)); err != nil {
		t.Fatalf("backup-end: %v", err)
	}
	if _, err := n.beginBackup(ctx); err != nil {
		t.Fatalf("backup after one ended: %v", err)
	}
	// Other admin ops still reach Node.Admin.
	if body, err := call(ctx, []byte(`{"op":"status"}`)); err != nil || !strings.Contains(string(body), `"id"`) {
		t.Fatalf("status through the observed handler: %s, %v", body, err)
	}
}

// TestRestoreHoldsSessionsToTheLimits: a restore batch is held to the
// limits a live save is: a session over --max-session-size or --max-keys
// is refused (every later patch of it would fail), the whole batch with
// it, naming the limits and no session id; a save time in the future is
// taken for now (the session would never expire).
func TestRestoreHoldsSessionsToTheLimits(t *testing.T) {
	n := startNode(t, Config{MaxSessionSize: 1 << 10, MaxKeys: 8})
	call := adminVia(t, n.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tt := range []struct{ name, doc, want string }{
		{"size", `{"ok":{"a":1},"secret-sid":{"k":"` + strings.Repeat("x", 2000) + `"}}`, "1 over --max-session-size 1024 bytes (the largest 2008 bytes)"},
		{"keys", `{"ok":{"a":1},"secret-sid":{` + manyKeys(9) + `}}`, "1 over --max-keys 8 (the most 9 keys)"},
	} {
		_, err := call(ctx, []byte(`{"op":"restore-batch","document":`+tt.doc+`}`))
		if !errors.Is(err, transport.ErrBadRequest) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "secret-sid") {
			t.Fatalf("%s: %v; want a bad request saying %q and naming no session", tt.name, err, tt.want)
		}
	}
	if got := n.State().Len(); got != 0 {
		t.Fatalf("%d sessions after refused batches, want none", got)
	}
	if _, err := call(ctx, []byte(`{"op":"restore-batch","document":{"later":{"a":1,"_written":99999999999999}}}`)); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	if r, ok := n.State().Get("later", now, time.Hour.Milliseconds()); !ok || r.Written > now || r.Written < now-60_000 {
		t.Fatalf("a session saved in the future: found %v, written %d; want it saved now (%d)", ok, r.Written, now)
	}
}

// manyKeys returns n members "k0":0,"k1":0,… of a JSON object.
func manyKeys(n int) string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf(`"k%d":0`, i)
	}
	return strings.Join(keys, ",")
}
