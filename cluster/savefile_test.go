package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

func TestImportsKadoSaveFileAtFirstStart(t *testing.T) {
	dir := t.TempDir()
	// What Kado's SessionStorage writes: sessions without _written.
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"abc":{"foo":"bar"},"old":{"x":1,"_written":1000}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, Config{DataDir: dir})
	if got := kadoRequest(t, n.Addr(), []byte(`{"restore":{"sid":"abc"}}`)); got != `{"status":"ok","result":{"foo":"bar"}}` {
		t.Fatalf("imported session = %s", got)
	}
	// A record whose _written is long past has expired, as in Kado.
	if got := kadoRequest(t, n.Addr(), []byte(`{"restore":{"sid":"old"}}`)); got != `{"status":"ok","result":{}}` {
		t.Fatalf("expired imported session = %s", got)
	}
	// A second start does not import again: a session deleted since stays gone.
	if err := n.Delete(context.Background(), "abc"); err != nil {
		t.Fatal(err)
	}
	n.Close()
	// Put the old file back as if someone restored it by hand.
	os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"abc":{"foo":"bar"}}`), 0o600)
	n2 := startNode(t, Config{DataDir: dir})
	if got := kadoRequest(t, n2.Addr(), []byte(`{"restore":{"sid":"abc"}}`)); got != `{"status":"ok","result":{}}` {
		t.Fatalf("after restart, deleted session came back from the save file: %s", got)
	}
}

func TestCorruptSaveFileStopsStartUntouched(t *testing.T) {
	cases := []struct{ name, content, want string }{
		{"truncated", `{"abc":{"foo":"ba`, "save file"},
		{"not an object", `[1,2]`, "JSON object of sessions"},
		{"record not an object", `{"abc":[1]}`, "session #1"},
		{"bad _written", `{"abc":{"_written":"yesterday"}}`, "_written"},
		{"empty file", ``, "empty"},
		{"trailing garbage", `{"abc":{}} xyz`, "trailing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "sessions.json")
			os.WriteFile(path, []byte(tc.content), 0o600)
			_, err := Open(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger()})
			if err == nil {
				t.Fatal("Open succeeded with a corrupt save file")
			}
			msg := err.Error()
			if !strings.Contains(msg, path) || !strings.Contains(msg, "untouched") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q should name the file, say it is untouched and mention %q", msg, tc.want)
			}
			got, _ := os.ReadFile(path)
			if string(got) != tc.content {
				t.Fatalf("save file changed: %q", got)
			}
		})
	}
}

func TestSaveFileShapeAndRestart(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, Config{DataDir: dir, SaveFrequency: 50 * time.Millisecond})
	ctx := context.Background()
	for _, sid := range []string{"s1", "s2", `we"ird ü`} {
		user, _ := json.Marshal(sid)
		if err := n.Save(ctx, sid, []byte(`{"user":`+string(user)+`,"n":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "sessions.json")
	poll(t, func() bool {
		b, err := os.ReadFile(path)
		return err == nil && bytes.Contains(b, []byte(`"s2"`))
	}, 5*time.Second, "save file written by the timer")
	b, _ := os.ReadFile(path)
	var doc map[string]map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("save file is not a JSON object of objects: %v\n%s", err, b)
	}
	if len(doc) != 3 || doc["s1"]["user"] != "s1" || doc[`we"ird ü`]["user"] != `we"ird ü` {
		t.Fatalf("save file = %s", b)
	}
	for sid, rec := range doc {
		w, ok := rec["_written"].(float64)
		if !ok || time.Since(time.UnixMilli(int64(w))) > time.Minute {
			t.Fatalf("record %s has _written %v", sid, rec["_written"])
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, Config{DataDir: dir})
	data, found, err := n2.Restore(ctx, "s1", transport.Default)
	if err != nil || !found || string(data) != `{"user":"s1","n":1}` {
		t.Fatalf("after restart: %s %v %v", data, found, err)
	}
}

func TestExpiryAndReplicatedPrune(t *testing.T) {
	// 2 s: a save, restore, save and prune under -race on a loaded 2-core
	// machine must fit in a session's lifetime.
	n := startNode(t, Config{Duration: 2 * time.Second, PruneFrequency: time.Hour})
	ctx := context.Background()
	n.Save(ctx, "short", []byte(`{"a":1}`))
	if _, found, _ := n.Restore(ctx, "short", transport.Default); !found {
		t.Fatal("fresh session not found")
	}
	time.Sleep(2100 * time.Millisecond)
	if _, found, _ := n.Restore(ctx, "short", transport.Default); found {
		t.Fatal("expired session returned before the prune")
	}
	if n.State().Len() != 1 {
		t.Fatalf("expired session should still be stored until the prune, have %d", n.State().Len())
	}
	n.Save(ctx, "fresh", []byte(`{"b":2}`))
	count, err := n.Prune(ctx)
	if err != nil || count != 1 || n.State().Len() != 1 {
		t.Fatalf("prune removed %d (err %v), %d left; want 1 removed, the fresh one left", count, err, n.State().Len())
	}
	if _, found, _ := n.Restore(ctx, "fresh", transport.Default); !found {
		t.Fatal("the prune removed a session that had not expired")
	}
}

func TestPatchTouchDeleteThroughNode(t *testing.T) {
	n := startNode(t, Config{MaxSessionSize: 64, MaxKeys: 3})
	ctx := context.Background()
	if err := n.Patch(ctx, "p", []transport.KV{{Key: "a", Value: []byte(` 1 `)}, {Key: "b", Value: []byte(`"x"`)}}, nil, false); err != nil {
		t.Fatal(err)
	}
	if err := n.Patch(ctx, "p", []transport.KV{{Key: "c", Value: []byte(`true`)}}, []string{"a"}, false); err != nil {
		t.Fatal(err)
	}
	data, _, _ := n.Restore(ctx, "p", transport.Default)
	if string(data) != `{"b":"x","c":true}` {
		t.Fatalf("after patches: %s", data)
	}
	cases := []struct {
		name string
		err  error
		code transport.Code
	}{
		{"bad json value", n.Patch(ctx, "p", []transport.KV{{Key: "a", Value: []byte(`{`)}}, nil, false), transport.CodeBadRequest},
		{"reserved key", n.Patch(ctx, "p", []transport.KV{{Key: "_written", Value: []byte(`1`)}}, nil, false), transport.CodeBadRequest},
		{"too large", n.Patch(ctx, "p", []transport.KV{{Key: "big", Value: []byte(`"` + strings.Repeat("z", 80) + `"`)}}, nil, false), transport.CodeTooLarge},
		{"save too large", n.Save(ctx, "q", []byte(`{"big":"`+strings.Repeat("z", 80)+`"}`)), transport.CodeTooLarge},
		{"empty sid", n.Save(ctx, "", []byte(`{}`)), transport.CodeBadRequest},
		{"save too many keys", n.Save(ctx, "q", []byte(`{"a":1,"b":2,"c":3,"d":4}`)), transport.CodeTooLarge},
		{"patch too many keys", n.Patch(ctx, "p", []transport.KV{{Key: "x", Value: []byte(`1`)}, {Key: "y", Value: []byte(`1`)}}, nil, false), transport.CodeTooLarge},
		{"array data", n.Save(ctx, "q", []byte(`[]`)), transport.CodeBadRequest},
	}
	for _, tc := range cases {
		var te *transport.Error
		if !asError(tc.err, &te) || te.Code != tc.code {
			t.Errorf("%s: err = %v, want code %v", tc.name, tc.err, tc.code)
		}
	}
	before, _ := n.State().Get("p", 0, 0)
	time.Sleep(5 * time.Millisecond)
	if err := n.Touch(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	after, _ := n.State().Get("p", 0, 0)
	if after.Written <= before.Written || string(after.Data) != string(before.Data) {
		t.Fatalf("touch: written %d -> %d, data %s -> %s", before.Written, after.Written, before.Data, after.Data)
	}
	if err := n.Delete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := n.Restore(ctx, "p", transport.Default); found {
		t.Fatal("deleted session found")
	}
}

// TestSaveFileNotReadAfterImport: once the save file has been imported (or
// the node has state of its own), a restart neither reads it nor is
// stopped by it, even a damaged one; the node serves from raft's state and
// writes a good save file over the damaged one.
func TestSaveFileNotReadAfterImport(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sessions.json")
	n := startNode(t, Config{DataDir: dir})
	mustSave(t, n, "abc", `{"foo":"bar"}`)
	n.Close()
	if err := os.WriteFile(path, []byte(`{"abc":{"foo":"ba`), 0o600); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, Config{DataDir: dir, SaveFrequency: 50 * time.Millisecond})
	if got := kadoRequest(t, n2.Addr(), []byte(`{"restore":{"sid":"abc"}}`)); got != `{"status":"ok","result":{"foo":"bar"}}` {
		t.Fatalf("after restart = %s", got)
	}
	mustSave(t, n2, "def", `{"x":1}`)
	poll(t, func() bool {
		b, err := os.ReadFile(path)
		return err == nil && bytes.Contains(b, []byte(`"def"`)) && json.Valid(b)
	}, 10*time.Second, "a good save file over the damaged one")
}

// Seeding a node with a save file whose sessions are older than --duration
// imports them (the file is the truth) and warns that they read as absent.
func TestImportWarnsOfExpiredSessions(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().UnixMilli()
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(fmt.Sprintf(`{"old":{"a":1,"_written":1000},"new":{"b":2,"_written":%d}}`, now)), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &logCapture{}
	startNode(t, Config{DataDir: dir, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})})
	poll(t, func() bool { return strings.Contains(logs.String(), "imported the save file") }, 10*time.Second, "the import")
	if out := logs.String(); !strings.Contains(out, "saved longer ago than --duration") || !strings.Contains(out, "expired=1") {
		t.Fatalf("no warning naming 1 expired session:\n%s", out)
	}
}

// TestSaveFileOverTheLimitsStopsStart: a save file is held to the limits a
// live save is: a node does not start from one holding sessions over them,
// and says which limits, naming no session; the file stays untouched.
func TestSaveFileOverTheLimitsStopsStart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sessions.json")
	content := `{"secret-sid":{"a":1,"b":2,"c":3},"other":{"k":"` + strings.Repeat("x", 200) + `"}}`
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(), MaxSessionSize: 100, MaxKeys: 2})
	if err == nil {
		t.Fatal("Open succeeded with sessions over the limits")
	}
	msg := err.Error()
	for _, want := range []string{path, "untouched", "1 over --max-session-size 100 bytes", "1 over --max-keys 2"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error %q should say %q", msg, want)
		}
	}
	if strings.Contains(msg, "secret-sid") {
		t.Fatalf("error %q names a session id", msg)
	}
	if got, _ := os.ReadFile(path); string(got) != content {
		t.Fatalf("save file changed: %q", got)
	}
}

// TestSaveFilePathCheckedAtStart: a save file no save could be written to
// is refused at start (it was found out at the first timed save: an error
// every 15 s, and a failed final save at shutdown).
func TestSaveFilePathCheckedAtStart(t *testing.T) {
	for _, tc := range []struct{ name, path, want string }{
		{"a directory", t.TempDir(), "is a directory"},
		{"in a missing directory", filepath.Join(t.TempDir(), "no-such-dir", "sessions.json"), "does not exist"},
	} {
		_, err := Open(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: testLogger(), SaveFile: tc.path})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--save-file") {
			t.Fatalf("%s: Open = %v; want an error saying %q and naming --save-file", tc.name, err, tc.want)
		}
	}
	// The data directory, made at start, named one way and the save
	// file's directory another.
	t.Chdir(t.TempDir())
	abs, err := filepath.Abs(filepath.Join("data", "sessions.json"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(Config{DataDir: "data", Listen: "127.0.0.1:0", Logger: testLogger(), SaveFile: abs})
	if err != nil {
		t.Fatalf("a save file in the data directory, named by its absolute path, at first start: %v", err)
	}
	n.Close()
}

// TestFollowerWithoutImportRecordServes: a follower whose record of the
// save-file import is gone (its write failed, or it was deleted) serves
// after a restart, taking its state from the cluster: it waited to lead
// before importing its save file, which a follower never does, and never
// served.
func TestFollowerWithoutImportRecordServes(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	mustSave(t, tc.nodes[tc.leader()], "s", `{"v":1}`)
	f := tc.follower()
	tc.stop(f)
	if err := os.Remove(filepath.Join(tc.cfgs[f].DataDir, importMarker)); err != nil {
		t.Fatal(err)
	}
	// And its copy in the raft log's store (a data directory from before
	// the copy, or the copy's write failed).
	db, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(tc.cfgs[f].DataDir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set(importKey, nil); err != nil {
		t.Fatal(err)
	}
	db.Close()
	n := tc.start(f)
	poll(t, n.Ready, 15*time.Second, "the restarted follower to serve")
	if _, err := os.Stat(filepath.Join(tc.cfgs[f].DataDir, importMarker)); err != nil {
		t.Fatalf("the follower did not record that it takes its state from the cluster: %v", err)
	}
}

// TestSaveFileSessionsWithBadIDsAreSkipped: Kado took any cookie's value
// for a session id, so its save file may hold one over MaxSIDLen. That
// session is left out, with a warning that names no id; the others are
// imported (before, the node refused to start).
func TestSaveFileSessionsWithBadIDsAreSkipped(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("s", fsm.MaxSIDLen+88)
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"abc":{"user":"alice"},"`+long+`":{"cart":[1]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &logCapture{}
	n := startNode(t, Config{DataDir: dir, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})})
	poll(t, func() bool { return strings.Contains(logs.String(), "imported the save file") }, 10*time.Second, "the import")
	if got := kadoRequest(t, n.Addr(), []byte(`{"restore":{"sid":"abc"}}`)); got != `{"status":"ok","result":{"user":"alice"}}` {
		t.Fatalf("imported session = %s", got)
	}
	if n.State().Len() != 1 {
		t.Fatalf("%d sessions imported, want 1", n.State().Len())
	}
	out := logs.String()
	if !strings.Contains(out, "ids this store cannot hold") || !strings.Contains(out, "sessions=1") {
		t.Fatalf("no warning counting the skipped session:\n%s", out)
	}
	if strings.Contains(out, long[:40]) {
		t.Fatal("the log names the skipped session's id")
	}
}

// TestLostImportRecordDoesNotImportAgain: a node whose record of the
// save-file import was deleted does not import its save file again at the
// next start (the raft log keeps a copy of the record): re-imported, a
// session deleted since came back.
func TestLostImportRecordDoesNotImportAgain(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"abc":{"foo":"bar"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, Config{DataDir: dir})
	if err := n.Delete(context.Background(), "abc"); err != nil {
		t.Fatal(err)
	}
	n.Close()
	os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"abc":{"foo":"bar"}}`), 0o600)
	if err := os.Remove(filepath.Join(dir, importMarker)); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, Config{DataDir: dir})
	if got := kadoRequest(t, n2.Addr(), []byte(`{"restore":{"sid":"abc"}}`)); got != `{"status":"ok","result":{}}` {
		t.Fatalf("after losing the import record, the deleted session came back from the save file: %s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, importMarker)); err != nil {
		t.Fatalf("the import record was not written again: %v", err)
	}
}

// A Kado save file copied into the data directory of a new node started
// with --join was neither imported (a joining node takes its sessions from
// the cluster) nor kept: the node rewrote it with the cluster's sessions
// at its first save, without a word. The start is refused, the file and
// the data directory untouched.
func TestJoiningNodeRefusesASaveFileItWouldOverwrite(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	dir := t.TempDir()
	kado := `{"kado-1":{"x":1}}`
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(kado), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := Open(Config{ID: "n2", Listen: "127.0.0.1:0", DataDir: dir, Logger: testLogger(), Join: []string{tc.nodes[0].Addr()}})
	if err == nil {
		n.Close()
		t.Fatal("a joining node with a save file of sessions started")
	}
	for _, want := range []string{"holds 1 sessions", "--join", "kadosession restore"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("refusal does not say %q: %v", want, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sessions.json")); string(b) != kado {
		t.Fatalf("save file changed: %s", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("data directory touched: %d entries", len(entries))
	}
	// With the file moved away, it joins.
	os.Remove(filepath.Join(dir, "sessions.json"))
	n2 := startNode(t, Config{ID: "n2", DataDir: dir, Join: []string{tc.nodes[0].Addr()}})
	poll(t, func() bool { return n2.isMember() }, 10*time.Second, "n2 to join")
}
