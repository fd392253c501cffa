package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	dto "github.com/prometheus/client_model/go"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/transport"
)

// fullDisk makes every new save file fail as a full disk would, until the
// test ends. n, which writes save files in the background, is closed first
// (cleanups run last-registered first, and n's own would run after this).
func fullDisk(t *testing.T, n *Node) {
	orig := createTemp
	createTemp = func(dir, pattern string) (*os.File, error) {
		return nil, &os.PathError{Op: "open", Path: dir, Err: syscall.ENOSPC}
	}
	t.Cleanup(func() {
		n.Close()
		createTemp = orig
	})
}

func TestSaveFileDiskFullKeepsServingAndOldFile(t *testing.T) {
	dir := t.TempDir()
	logs := &logCapture{}
	n := startNode(t, Config{DataDir: dir, SaveFrequency: 20 * time.Millisecond, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})})
	ctx := context.Background()
	mustSave(t, n, "a", `{"v":1}`)
	path := filepath.Join(dir, "sessions.json")
	poll(t, func() bool { b, _ := os.ReadFile(path); return strings.Contains(string(b), `"a"`) }, 5*time.Second, "first save file")
	before, _ := os.ReadFile(path)
	fullDisk(t, n)
	mustSave(t, n, "b", `{"v":2}`)
	// The failures are counted, for an alert: a timed round fails (waited
	// for, not slept on: a loaded machine may run none in 100 ms), then
	// SaveNow does.
	failed := func() float64 {
		var m dto.Metric
		if err := n.obs.saveFiles.WithLabelValues("error").Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	poll(t, func() bool { return failed() >= 1 }, 5*time.Second, "a timed save-file write to fail")
	if err := n.SaveNow(); err == nil || !strings.Contains(err.Error(), "the previous save file, written") || !strings.Contains(err.Error(), "ago, is intact") {
		t.Fatalf("SaveNow on a full disk: %v", err)
	}
	if f := failed(); f < 2 {
		t.Fatalf("kadosession_save_file_writes_total{result=\"error\"} = %v after several failed writes", f)
	}
	// Logged once, not at every timed round (once a minute after that).
	poll(t, func() bool { return failed() >= 6 }, 10*time.Second, "more timed save-file writes to fail")
	if k := strings.Count(logs.String(), "save file not written"); k != 1 {
		t.Fatalf("%v failed writes logged %d times, want once:\n%s", failed(), k, logs.String())
	}
	// Still serving, and the previous save file is as it was.
	if data, found, err := n.Restore(ctx, "b", transport.Default); err != nil || !found || string(data) != `{"v":2}` {
		t.Fatalf("restore on a full disk: %s %v %v", data, found, err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatalf("save file changed on a full disk:\n%s\n%s", before, after)
	}
}

// TestSaveFileLeavesRoomForTheLog: a save-file rewrite on the raft log's
// disk must leave saveFileReserve free (the new file is written beside the
// old one, and on a nearly full disk it took the last space the raft log
// needed). It is not started when there is not even the reserve, and is
// stopped when it would go below it, also with no previous file to size it
// by; the old file stays, the error says why and how old the old file is,
// and the node goes on serving. A save file on another disk is not held to
// it.
func TestSaveFileLeavesRoomForTheLog(t *testing.T) {
	dir := t.TempDir()
	if d, err := diskFree(dir); err != nil || d.free == 0 || d.size < d.free {
		t.Fatalf("space on %s: %+v %v", dir, d, err)
	}
	if !sameDisk(dir, filepath.Join(dir, ".")) {
		t.Fatal("sameDisk: a directory is not on its own disk")
	}
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour})
	mustSave(t, n, "a", `{"v":1}`)
	if err := n.SaveNow(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sessions.json")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	free := fakeFreeSpace(t, 0)
	unchanged := func(what string) {
		t.Helper()
		if after, _ := os.ReadFile(path); string(after) != string(before) {
			t.Fatalf("%s: the save file changed:\n%s\n%s", what, before, after)
		}
		if tmps, _ := filepath.Glob(filepath.Join(dir, ".sessions.json.tmp-*")); len(tmps) > 0 {
			t.Fatalf("%s: a partial new file was left: %v", what, tmps)
		}
	}

	free.Store(saveFileReserve - 1)
	mustSave(t, n, "b", `{"v":"`+strings.Repeat("b", 4096)+`"}`)
	err = n.SaveNow()
	if err == nil || !strings.Contains(err.Error(), "kept for the log") || !strings.Contains(err.Error(), "ago, is intact") {
		t.Fatalf("a rewrite with less than the reserve free: %v", err)
	}
	t.Logf("not started: %v", err)
	unchanged("not started")

	free.Store(saveFileReserve + 1024) // less than the new file needs
	err = n.SaveNow()
	if err == nil || !strings.Contains(err.Error(), "would leave less than") || !strings.Contains(err.Error(), "ago, is intact") {
		t.Fatalf("a rewrite that would go below the reserve: %v", err)
	}
	t.Logf("stopped: %v", err)
	unchanged("stopped")
	if data, found, err := n.Restore(context.Background(), "b", transport.Default); err != nil || !found || len(data) < 4096 {
		t.Fatalf("restore while the save file cannot be written: %d bytes, %v %v", len(data), found, err)
	}

	free.Store(saveFileReserve + 1<<20)
	if err := n.SaveNow(); err != nil {
		t.Fatalf("with room again: %v", err)
	}
	if after, _ := os.ReadFile(path); !strings.Contains(string(after), `"b"`) {
		t.Fatalf("the save file was not rewritten once there was room: %.200s", after)
	}

	// With no previous file to size the rewrite by, it is stopped too.
	dir2 := t.TempDir()
	n2 := startNode(t, Config{DataDir: dir2, SaveFrequency: time.Hour})
	mustSave(t, n2, "c", `{"v":"`+strings.Repeat("c", 4096)+`"}`)
	free.Store(saveFileReserve + 1024)
	if err := n2.SaveNow(); err == nil || !strings.Contains(err.Error(), "there is no previous save file") {
		t.Fatalf("a first save file that would go below the reserve: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "sessions.json")); !os.IsNotExist(err) {
		t.Fatalf("a first save file was written below the reserve: %v", err)
	}

	// A save file on another disk than the raft log is not held to it.
	var shm syscall.Stat_t
	var tmp syscall.Stat_t
	if syscall.Stat("/dev/shm", &shm) != nil || syscall.Stat(dir2, &tmp) != nil || shm.Dev == tmp.Dev {
		return // no second file system here
	}
	other, err := os.MkdirTemp("/dev/shm", "kadosession-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	if sameDisk(other, dir2) {
		t.Fatalf("sameDisk: %s and %s are on different file systems", other, dir2)
	}
	n3 := startNode(t, Config{DataDir: t.TempDir(), SaveFile: filepath.Join(other, "sessions.json"), SaveFrequency: time.Hour})
	mustSave(t, n3, "d", `{"v":1}`)
	free.Store(0)
	if err := n3.SaveNow(); err != nil {
		t.Fatalf("a save file on another disk than the raft log: %v", err)
	}
}

// TestSmallDiskKeepsASmallerReserve: on a file system under 256 MiB the
// space kept for the raft log is an eighth of it. A fixed 32 MiB on a
// 64 MiB disk (a drill) left no room for the save file once the log held
// about 35 MB, nor for the snapshot that lets the log be compacted.
func TestSmallDiskKeepsASmallerReserve(t *testing.T) {
	for _, c := range []struct{ size, want uint64 }{{1 << 40, 32 << 20}, {256 << 20, 32 << 20}, {64 << 20, 8 << 20}, {0, 0}} {
		if got := (diskSpace{size: c.size}).reserve(); got != c.want {
			t.Errorf("reserve on a file system of %d bytes: %d, want %d", c.size, got, c.want)
		}
	}
	dir := t.TempDir()
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour})
	mustSave(t, n, "a", `{"v":"`+strings.Repeat("a", 4096)+`"}`)
	free := fakeDisk(t, 64<<20, 0)
	free.Store(20 << 20) // under the fixed 32 MiB, over 8
	if err := n.SaveNow(); err != nil {
		t.Fatalf("a save file with 20 MiB free of 64: %v", err)
	}
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("a snapshot with 20 MiB free of 64: %v", err)
	}
	free.Store(8<<20 + 1024)
	mustSave(t, n, "b", `{"v":"`+strings.Repeat("b", 4096)+`"}`)
	if err := n.SaveNow(); err == nil || !strings.Contains(err.Error(), "less than the 8.0 MiB kept free") {
		t.Fatalf("a save file that would leave under 8 MiB of 64: %v", err)
	}
}

func TestCorruptSnapshotStopsStart(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, Config{DataDir: dir})
	mustSave(t, n, "a", `{"v":1}`)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	n.Close()
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "state.bin"))
	if len(snaps) == 0 {
		t.Fatal("no snapshot written")
	}
	for _, s := range snaps {
		b, _ := os.ReadFile(s)
		os.WriteFile(s, b[:len(b)/2], 0o600) // truncated
	}
	_, err := Open(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger()})
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Open with a truncated snapshot: %v", err)
	}
}

// failingLogStore fails StoreLogs while fail says so, as a dying disk
// would: an *atomic.Bool (while set) or a *failCount.
type failingLogStore struct {
	raft.LogStore
	fail interface{ Load() bool }
}

// failCount says to fail the next n appends.
type failCount struct{ n atomic.Int32 }

func (c *failCount) Load() bool { return c.n.Add(-1) >= 0 }

func (f failingLogStore) StoreLog(l *raft.Log) error { return f.StoreLogs([]*raft.Log{l}) }

func (f failingLogStore) StoreLogs(logs []*raft.Log) error {
	if f.fail.Load() {
		return errors.New("input/output error")
	}
	return f.LogStore.StoreLogs(logs)
}

func TestLogStoreFailureStopsAcks(t *testing.T) {
	var fail atomic.Bool
	n := startNode(t, Config{wrapLogStore: func(s raft.LogStore) raft.LogStore { return failingLogStore{s, &fail} }})
	mustSave(t, n, "ok", `{}`)
	fail.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := n.Save(ctx, "lost", []byte(`{}`)); err == nil {
		t.Fatal("a save was acknowledged while the log could not be written")
	}
	fail.Store(false)
	if _, found, _ := n.Restore(context.Background(), "lost", transport.Stale); found {
		t.Fatal("the unacknowledged save is in the state machine")
	}
}

// slowFailingLogStore fails as failingLogStore does, after 20 ms (a disk
// that takes its time to say it is full): the leader sends the next append
// before the failure comes back.
type slowFailingLogStore struct{ failingLogStore }

func (f slowFailingLogStore) StoreLog(l *raft.Log) error { return f.StoreLogs([]*raft.Log{l}) }

func (f slowFailingLogStore) StoreLogs(logs []*raft.Log) error {
	if f.fail.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	return f.failingLogStore.StoreLogs(logs)
}

// TestFollowerCatchesUpAfterItsLogFailed: a follower whose log writes fail
// for a while (a full disk) catches up once they succeed again. With
// hashicorp/raft's pipelined replication, the rejected appends deadlocked
// the leader's sender to it (hashicorp/raft#612): heartbeats went on, no
// entry ever did, until the leader restarted (noPipeline).
func TestFollowerCatchesUpAfterItsLogFailed(t *testing.T) {
	fails := map[string]*atomic.Bool{} // by node id; the test fails a follower's
	tc := newTestCluster(t, 3, func(c *Config) {
		fail := &atomic.Bool{}
		fails[c.ID] = fail
		c.wrapLogStore = func(s raft.LogStore) raft.LogStore { return slowFailingLogStore{failingLogStore{s, fail}} }
	})
	leader := tc.nodes[tc.leader()]
	f := tc.nodes[tc.follower()]
	fail := fails[f.ID()]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 { // writes all along, as a busy cluster has
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = leader.Save(ctx, fmt.Sprint("s", w, "-", i%50), []byte(`{"n":1}`))
				cancel()
			}
		}()
	}
	for range 5 {
		time.Sleep(150 * time.Millisecond)
		fail.Store(true)
		time.Sleep(150 * time.Millisecond)
		fail.Store(false)
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	mustSave(t, leader, "last", `{}`)
	want := leader.raft.LastIndex()
	poll(t, func() bool { return f.raft.LastIndex() >= want }, 15*time.Second, "the follower whose log failed to catch up")
}

// TestLogFailureIsNamed: while a node cannot write its raft log (a full
// disk), /readyz's reason and a request's error say so, instead of "no
// leader known" and a bare timeout; once an append succeeds again, the
// node is ready.
func TestLogFailureIsNamed(t *testing.T) {
	var fail atomic.Bool
	n := startNode(t, Config{wrapLogStore: func(s raft.LogStore) raft.LogStore { return failingLogStore{s, &fail} },
		Server: transport.ServerConfig{RequestTimeout: 500 * time.Millisecond}})
	mustSave(t, n, "ok", `{}`)
	fail.Store(true)
	got := kadoRequest(t, n.Addr(), []byte(`{"save":{"sid":"lost","data":{}}}`))
	if !strings.Contains(got, "cannot write its raft log") || !strings.Contains(got, "input/output error") {
		t.Fatalf("a save while the log fails: %s; want it to say the log cannot be written", got)
	}
	if rd := n.Readiness(); rd.Ready || !strings.Contains(rd.Reason, "cannot write its raft log") {
		t.Fatalf("readiness while the log fails: %+v", rd)
	}
	fail.Store(false)
	poll(t, func() bool { return n.Readiness().Ready }, 15*time.Second, "the node to be ready once its log can be written")
	mustSave(t, n, "after", `{}`)
}

// TestFailingLogSlowsElectionsAndFailsFast: a single node that cannot
// append stood for election, won, failed its first append and stepped down
// every 300 ms, six log lines a round, and its clients waited out their
// timeouts. Now its rounds slow down (heartbeat and election timeouts
// doubled per failed append, up to logFailHeartbeatMax), raft's messages
// of those rounds are at debug with one error of its own, a client's save
// fails at once saying why, and the first append that succeeds restores
// the timeouts.
func TestFailingLogSlowsElectionsAndFailsFast(t *testing.T) {
	var fail atomic.Bool
	logs := &logCapture{}
	n := startNode(t, Config{wrapLogStore: func(s raft.LogStore) raft.LogStore { return failingLogStore{s, &fail} },
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})})
	c, err := client.New(client.Config{Addrs: []string{n.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.SaveRaw(ctx, "ok", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	before := len(logs.String())
	fail.Store(true)
	term := n.raft.CurrentTerm()
	if err := c.SaveRaw(ctx, "lost", []byte(`{}`)); err == nil {
		t.Fatal("a save was acknowledged while the log could not be written")
	}
	const failFor = 6 * time.Second
	time.Sleep(failFor / 2)
	start := time.Now()
	err = c.SaveRaw(ctx, "lost", []byte(`{}`))
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "cannot write its raft log") {
		t.Fatalf("a save while the log fails: %v; want it to say the log cannot be written", err)
	}
	t.Logf("a save while the log failed took %s: %v", took.Round(time.Millisecond), err)
	if took > 3*time.Second {
		t.Errorf("a save while the log failed took %s; want it refused at once, not after the client's timeout", took)
	}
	time.Sleep(failFor - time.Since(start) - failFor/2)
	rounds := n.raft.CurrentTerm() - term
	// Every 300 ms before: about 20 rounds in 6 s. Slowed: about 4.
	t.Logf("election rounds in %s of failed appends: %d; heartbeat timeout now %s", failFor, rounds, n.raft.ReloadableConfig().HeartbeatTimeout)
	if rounds > 8 {
		t.Errorf("%d election rounds in %s while appends failed; want them slowed down", rounds, failFor)
	}
	out := logs.String()[before:]
	for _, msg := range []string{"entering candidate state", "election won", "failed to commit logs"} {
		if strings.Contains(out, msg) {
			t.Errorf("raft's %q was logged above debug while appends failed:\n%s", msg, out)
		}
	}
	if k := strings.Count(out, "[ERROR] this node cannot write its raft log"); k != 1 {
		t.Errorf("the failure was reported %d times, want once:\n%s", k, out)
	}

	fail.Store(false)
	poll(t, func() bool { return c.SaveRaw(ctx, "after", []byte(`{}`)) == nil }, 15*time.Second, "a save once the log can be written")
	poll(t, func() bool { return n.raft.ReloadableConfig().HeartbeatTimeout == n.cfg.HeartbeatTimeout }, 5*time.Second, "the heartbeat timeout restored")
	poll(t, func() bool { return strings.Contains(logs.String(), "this node can write its raft log again") }, 2*logRecoverySettle+5*time.Second, "the end of the failure to be logged")
}

// TestLogFailureLetsRequestsWaitForAnotherLeader: requests wait through an
// election as always when another voter may win it, or after a single
// failed append: only a single node whose appends keep failing refuses
// them at once (a review found a leader's failing log refusing ~20 saves
// that would have been forwarded to its successor 250 ms later, and one
// failed append on a single node refusing saves for seconds).
func TestLogFailureLetsRequestsWaitForAnotherLeader(t *testing.T) {
	t.Run("three nodes, the leader's log fails", func(t *testing.T) {
		fails := map[string]*atomic.Bool{}
		tc := newTestCluster(t, 3, func(c *Config) {
			fail := &atomic.Bool{}
			fails[c.ID] = fail
			c.wrapLogStore = func(s raft.LogStore) raft.LogStore { return failingLogStore{s, fail} }
		})
		old := tc.nodes[tc.leader()]
		fails[old.ID()].Store(true)
		refused := 0
		for i := range 40 {
			got := kadoRequest(t, old.Addr(), []byte(fmt.Sprintf(`{"save":{"sid":"s%d","data":{"i":%d}}}`, i, i)))
			if got != `{"status":"ok"}` {
				refused++
				t.Logf("save %d through the old leader: %s", i, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The save whose append failed may fail; the rest wait for the
		// successor and are forwarded to it.
		if refused > 2 {
			t.Fatalf("%d of 40 saves through a leader whose log failed were refused; want them to wait for its successor", refused)
		}
	})
	t.Run("single node, one failed append", func(t *testing.T) {
		var failNext failCount
		n := startNode(t, Config{wrapLogStore: func(s raft.LogStore) raft.LogStore { return failingLogStore{s, &failNext} }})
		mustSave(t, n, "ok", `{}`)
		failNext.n.Store(1)
		refused := 0
		for i := range 40 {
			if got := kadoRequest(t, n.Addr(), []byte(fmt.Sprintf(`{"save":{"sid":"s%d","data":{"i":%d}}}`, i, i))); got != `{"status":"ok"}` {
				refused++
				t.Logf("save %d: %s", i, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if refused > 1 {
			t.Fatalf("%d of 40 saves refused after one failed append; want them to wait for the node to lead again", refused)
		}
	})
}

// TestFailingRoundsLoggedLower: while a node's appends fail, raft's
// messages of its own election rounds go to debug, but a warning that it
// lost a leader other than itself stays a warning; in a healthy node
// nothing changes.
func TestFailingRoundsLoggedLower(t *testing.T) {
	var out logCapture
	var h logHealth
	h.changed = make(chan struct{}, 1)
	q := quietRaft{Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: &out}), health: &h, self: "n1"}
	logAll := func() {
		q.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "127.0.0.1:1", "last-leader-id", "n1")
		q.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "127.0.0.1:2", "last-leader-id", "n2")
		q.Info("election won", "term", 3)
		q.Error("failed to commit logs", "error", "input/output error")
	}
	logAll()
	if got := strings.Count(out.String(), "\n"); got != 4 {
		t.Fatalf("healthy: %d lines logged, want all 4:\n%s", got, out.String())
	}
	before := len(out.String())
	h.note(errors.New("input/output error"))
	logAll()
	got := out.String()[before:]
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "[WARN]") || !strings.Contains(got, "last-leader-id=n2") {
		t.Fatalf("failing: want only the lost leader n2's warning, got:\n%s", got)
	}
}

// TestLogFailureThatFlapsIsOneFailure: an append that fits now and then
// on a full disk does not end the reported failure. The drill's nodes
// logged the error, that they could write again 0.3-1 s later, then the
// error again, every time. The node says it recovered once appends have
// gone on succeeding for logRecoverySettle, with the failure's whole
// length; its readiness and timeouts follow each append at once.
func TestLogFailureThatFlapsIsOneFailure(t *testing.T) {
	var out logCapture
	n := startNode(t, Config{Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: &out})})
	count := func(what string) int { return strings.Count(out.String(), what) }
	const failing, again = "cannot write its raft log;", "can write its raft log again"
	full := errors.New("no space left on device")
	// Its first entries as leader, appended after the failure is noted,
	// would clear it: let them be written first.
	poll(t, func() bool { return n.isCaughtUp(false) }, 10*time.Second, "the node to be caught up")
	n.logHealth.note(full)
	poll(t, func() bool { return count(failing) == 1 }, 5*time.Second, "the failure to be logged")
	n.logHealth.note(nil) // a small append fitted
	poll(t, func() bool { return n.raft.ReloadableConfig().HeartbeatTimeout == n.cfg.HeartbeatTimeout }, 5*time.Second, "the timeouts restored by the append that succeeded")
	time.Sleep(500 * time.Millisecond)
	n.logHealth.note(full) // and the next did not
	poll(t, func() bool { return n.raft.ReloadableConfig().HeartbeatTimeout > n.cfg.HeartbeatTimeout }, 5*time.Second, "the elections slowed again")
	time.Sleep(logRecoverySettle)
	if count(failing) != 1 || count(again) != 0 {
		t.Fatalf("a failure that let one append through was logged as two, with a recovery between:\n%s", out.String())
	}
	// Appends that succeed on a disk with no room left are no recovery yet
	// (they fitted in the log file's free pages).
	orig := freeSpace
	t.Cleanup(func() { freeSpace = orig })
	var noRoom atomic.Bool
	noRoom.Store(true)
	freeSpace = func(dir string) (diskSpace, error) {
		if noRoom.Load() {
			return diskSpace{free: 0, size: 64 << 20}, nil
		}
		return orig(dir)
	}
	n.logHealth.note(nil)
	time.Sleep(logRecoverySettle + time.Second)
	if count(again) != 0 || count("its disk is full") != 0 {
		// (the warning is at most once a minute: the error was just logged)
		t.Fatalf("said it could write again with 0 bytes free:\n%s", out.String())
	}
	noRoom.Store(false)
	poll(t, func() bool { return count(again) == 1 }, 2*logRecoverySettle+5*time.Second, "the recovery to be logged")
	if !strings.Contains(out.String(), "failed_appends=2") {
		t.Fatalf("the recovery should count both failed appends:\n%s", out.String())
	}
	if count(failing) != 1 {
		t.Fatalf("logged more than once:\n%s", out.String())
	}
}

// TestRestartOnAFullDiskServesNothingUnapplied: a node restarted where its
// first append fails (a full disk) has not applied its own log, which only
// a committed entry of its term releases. It neither answers a stale read
// from that state nor writes it over its save file. Before, taken as
// caught up once elected, a single node answered "not found" for every
// acknowledged session, and, once it had room, wrote {} over its save file
// before its log was applied (a drill).
func TestRestartOnAFullDiskServesNothingUnapplied(t *testing.T) {
	dir, before := stoppedWithSession(t)
	saveFile := filepath.Join(dir, "sessions.json")
	var fail atomic.Bool
	fail.Store(true)
	n2 := reopen(t, dir, func(s raft.LogStore) raft.LogStore { return failingLogStore{s, &fail} })
	poll(t, func() bool { return n2.logHealth.failing.Load() != nil }, 10*time.Second, "the restarted node's first append to fail")
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		data, found, err := n2.Restore(ctx, "a", transport.Stale)
		cancel()
		if err == nil && !found {
			t.Fatalf("a stale read answered not found for an acknowledged session, from a state its log has not been applied to (data %q)", data)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := n2.SaveNow(); err == nil || !strings.Contains(err.Error(), "not written") {
		t.Fatalf("the save file written from a state its log has not been applied to: %v", err)
	} else {
		t.Logf("save file: %v", err)
	}
	if after, _ := os.ReadFile(saveFile); string(after) != string(before) {
		t.Fatalf("the save file changed:\n%s\n%s", before, after)
	}
	fail.Store(false)
	poll(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, found, err := n2.Restore(ctx, "a", transport.Stale)
		return err == nil && found
	}, 20*time.Second, "the session to be served once the log can be written")
	if err := n2.SaveNow(); err != nil {
		t.Fatalf("the save file once caught up: %v", err)
	}
}

// TestStaleReadOnALeaderNotCaughtUpIsRefusedSoon: a leader restarted
// whose first entries cannot be written yet (its log store hangs) has not
// applied its log; a stale read is refused within staleCatchUpWait with
// why, not left to wait out its deadline.
func TestStaleReadOnALeaderNotCaughtUpIsRefusedSoon(t *testing.T) {
	dir, _ := stoppedWithSession(t)
	release := make(chan struct{})
	var held atomic.Bool
	held.Store(true)
	n2 := reopen(t, dir, func(s raft.LogStore) raft.LogStore { return heldLogStore{s, &held, release} })
	defer close(release) // before the cleanup closes n2
	poll(t, func() bool { return n2.raft.State() == raft.Leader && n2.ready.Load() }, 10*time.Second, "the restarted node to lead")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, found, err := n2.Restore(ctx, "a", transport.Stale)
	took := time.Since(start)
	var te *transport.Error
	if err == nil || !asError(err, &te) || te.Code != transport.CodeUnavailable || !strings.Contains(err.Error(), "has not yet applied its raft log") {
		t.Fatalf("a stale read on a leader that has not applied its log: found %v, %v", found, err)
	}
	if took > 3*staleCatchUpWait {
		t.Fatalf("refused after %s; want about %s", took, staleCatchUpWait)
	}
	t.Logf("refused after %s: %v", took.Round(time.Millisecond), err)
}

// stoppedWithSession runs a node in a new data directory, saves session
// "a" and stops it; it returns the directory and the save file it left.
func stoppedWithSession(t *testing.T) (dir string, saved []byte) {
	t.Helper()
	dir = t.TempDir()
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour})
	mustSave(t, n, "a", `{"v":1}`)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(filepath.Join(dir, "sessions.json"))
	if err != nil || !strings.Contains(string(saved), `"a"`) {
		t.Fatalf("the final save file: %s %v", saved, err)
	}
	return dir, saved
}

// reopen opens a node again on dir, its raft log store wrapped by wrap
// (nil: as it is); the node is closed when the test ends.
func reopen(t *testing.T, dir string, wrap func(raft.LogStore) raft.LogStore) *Node {
	t.Helper()
	n, err := Open(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(), SaveFrequency: time.Hour, wrapLogStore: wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestStopJustAfterStart: a node stopped just after it started, or was
// elected, stops cleanly and leaves the save file whole. Its state is
// complete once a barrier of its term commits, which the stop cuts short:
// Close runs it, and a node stopped before it had the whole state (no
// leader yet) leaves the file as it was, with a warning, not an error
// (a review: serve stopped 0.2-0.3 s after start exited 1).
func TestStopJustAfterStart(t *testing.T) {
	dir, _ := stoppedWithSession(t)
	saveFile := filepath.Join(dir, "sessions.json")
	for i := range 5 {
		n := reopen(t, dir, nil)
		time.Sleep(time.Duration(i) * 100 * time.Millisecond)
		if err := n.Close(); err != nil {
			t.Fatalf("stopped %d ms after start: %v", i*100, err)
		}
		if after, err := os.ReadFile(saveFile); err != nil || !strings.Contains(string(after), `"a"`) {
			t.Fatalf("stopped %d ms after start, the save file lost its session: %s %v", i*100, after, err)
		}
	}
}

// TestIdleFollowerRecoversFromLogFailure: a follower whose last append
// failed is ready again, with raft's timeouts restored, once its log can be
// written, also when nothing is appended after: only an append cleared the
// failure, and a drill's follower, caught up by a snapshot in an idle
// cluster, stayed not ready for minutes with room on its disk (probeLog).
// The failed append is noted as the log store's wrapper notes it, and
// nothing is written after it.
func TestIdleFollowerRecoversFromLogFailure(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.nodes[tc.leader()]
	f := tc.nodes[tc.follower()]
	poll(t, func() bool { return l.isCaughtUp(false) && f.raft.LastIndex() == l.raft.LastIndex() }, 10*time.Second, "the follower to hold the leader's whole log")
	f.logHealth.note(errors.New("no space left on device"))
	poll(t, func() bool { return f.raft.ReloadableConfig().HeartbeatTimeout > f.cfg.HeartbeatTimeout }, 5*time.Second, "the follower's elections to be slowed")
	if rd := f.Readiness(); rd.Ready {
		t.Fatalf("ready while its log failed: %+v", rd)
	}
	start := time.Now()
	poll(t, func() bool {
		return f.Readiness().Ready && f.raft.ReloadableConfig().HeartbeatTimeout == f.cfg.HeartbeatTimeout
	}, 30*time.Second, "the idle follower to be ready, its timeouts restored")
	t.Logf("ready again after %s, with nothing appended", time.Since(start).Round(time.Millisecond))
}

// TestSnapshotLeavesRoomForTheLog: a snapshot the node takes must leave
// saveFileReserve free beside its raft log: one that filled the disk
// failed the log's appends each time raft tried it again (a disk-full
// drill). It is stopped instead, leaves nothing behind, and writes go on.
func TestSnapshotLeavesRoomForTheLog(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, Config{DataDir: dir})
	for i := range 20 {
		mustSave(t, n, fmt.Sprintf("s%d", i), `{"v":"`+strings.Repeat("v", 4096)+`"}`)
	}
	free := fakeFreeSpace(t, saveFileReserve+1024)
	err := n.raft.Snapshot().Error()
	if err == nil || !strings.Contains(err.Error(), "snapshot not written") {
		t.Fatalf("a snapshot that would go below the reserve: %v", err)
	}
	t.Logf("stopped: %v", err)
	if tmps, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*.tmp")); len(tmps) > 0 {
		t.Fatalf("the stopped snapshot left %v", tmps)
	}
	mustSave(t, n, "after", `{}`)
	free.Store(saveFileReserve + 1<<20)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("a snapshot with room: %v", err)
	}
}

// fakeDisk makes freeSpace report a disk of size bytes with free bytes
// free, until the test changes them, for the rest of the test.
func fakeDisk(t *testing.T, size, free uint64) *atomic.Uint64 {
	orig := freeSpace
	t.Cleanup(func() { freeSpace = orig })
	var f atomic.Uint64
	f.Store(free)
	freeSpace = func(string) (diskSpace, error) { return diskSpace{free: f.Load(), size: size}, nil }
	return &f
}

// fakeFreeSpace is fakeDisk on a disk of 1 TiB, whose reserve is
// saveFileReserve.
func fakeFreeSpace(t *testing.T, free uint64) *atomic.Uint64 { return fakeDisk(t, 1<<40, free) }

// snapshotIndexes lists the indexes of the snapshots kept in dir, newest
// first.
func snapshotIndexes(t *testing.T, dir string) []uint64 {
	t.Helper()
	var idx []uint64
	for _, m := range snapshotMetas(t, dir) {
		idx = append(idx, m.Index)
	}
	return idx
}

// TestGrowthSnapshotTriedAgainSoon: a snapshot for log growth that failed
// is tried again within a second or so, on its own timer, however long
// the failures lasted (when they cost little). After one
// failure a node waited 10 s, and then for the next applied entry: a
// follower on a 64 MiB disk, catching up at 20 MB/s after a moment of
// full disk, filled the disk with log meanwhile, and then had no room for
// any snapshot (a drill).
func TestGrowthSnapshotTriedAgainSoon(t *testing.T) {
	dir := t.TempDir()
	free := fakeFreeSpace(t, 1<<40)
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour, SnapshotThreshold: 1 << 40, SnapshotLogBytes: 64 << 10})
	free.Store(saveFileReserve + 1024) // a snapshot would go below the reserve: refused
	for i := range 60 {
		mustSave(t, n, fmt.Sprintf("s%d", i), `{"v":"`+strings.Repeat("v", 4096)+`"}`)
	}
	// Eight seconds of failures: pauses doubling without a bound (or up to
	// snapshotRetryMax) would now be 8 s long, the next try 7 s or more
	// away (a review's drill: 10 s after a long outage, and the log filled
	// the disk again once space came back).
	time.Sleep(8 * time.Second)
	if idx := snapshotIndexes(t, dir); len(idx) != 0 {
		t.Fatalf("snapshots %v written below the reserve", idx)
	}
	// Room again, and nothing more is written. The pause is 1 s when the
	// failures take little time, but up to 4 times what one took (a large
	// state's), and a failure refused at its first bytes still takes what
	// its thread, at nice 19, gets of the CPU: 70-560 ms under -race beside
	// a CPU hog, a pause of 2 s, and the snapshot then written in up to
	// 0.7 s more (the 2 s this waited before failed 1 of 4 runs of the
	// package under -race beside a CPU hog).
	free.Store(1 << 40)
	start := time.Now()
	poll(t, func() bool { return len(snapshotIndexes(t, dir)) > 0 }, 5*time.Second, "the failed snapshot to be tried again")
	t.Logf("tried again and written %s after the disk had room", time.Since(start).Round(time.Millisecond))
	if got := []time.Duration{snapshotRetryPause(0, 0), snapshotRetryPause(250*time.Millisecond, 0), snapshotRetryPause(time.Second, 0),
		snapshotRetryPause(0, 3*time.Second), snapshotRetryPause(6*time.Second, 3*time.Second)}; fmt.Sprint(got) != "[250ms 500ms 1s 3s 10s]" {
		t.Errorf("pauses after a first cheap failure, a second, a long run of them; a first that took 3 s, and later ones: %v", got)
	}
}

// TestSnapshotUsesTheReserveTheLogTook: where the disk has less free than
// the reserve, a snapshot that may fit uses what is free but an eighth of
// the reserve (refused, a follower whose log had grown into the reserve
// could never compact it, and stayed behind for good: a drill); one that
// turns out larger is stopped with an error that says so, and one that
// cannot fit (the last was larger than what is free) is refused at once.
func TestSnapshotUsesTheReserveTheLogTook(t *testing.T) {
	dir := t.TempDir()
	free := fakeFreeSpace(t, 1<<40)
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour})
	keep := uint64(saveFileReserve / 8)
	for i := range 20 {
		mustSave(t, n, fmt.Sprintf("s%d", i), `{"v":"`+strings.Repeat("v", 4096)+`"}`)
	}
	free.Store(saveFileReserve - 1<<20)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("a snapshot with less free than the reserve: %v", err)
	}
	mustSave(t, n, "large", `{"v":"`+strings.Repeat("v", 1000<<10)+`"}`)
	free.Store(keep + 200<<10) // the last snapshot (80 KiB) fits; this one will not
	if err := n.raft.Snapshot().Error(); err == nil || !strings.Contains(err.Error(), "too little free") {
		t.Fatalf("a snapshot larger than the disk's free space: %v", err)
	}
	free.Store(keep + 10<<10)
	if err := n.raft.Snapshot().Error(); err == nil || !strings.Contains(err.Error(), "would leave less than") {
		t.Fatalf("a snapshot that cannot fit (the last was 80 KiB, 10 KiB free): %v", err)
	}
}

// TestOnlyTheNewestSnapshotKeptWhileSpaceIsShort: with less free than the
// reserve, a snapshot that fails, or one written, leaves only the newest
// snapshot. A new one is written beside those kept: a node whose disk its
// log had filled kept two and had no room for a third, neither its own
// (to compact the log) nor its leader's (a drill on a 64 MiB disk).
func TestOnlyTheNewestSnapshotKeptWhileSpaceIsShort(t *testing.T) {
	dir := t.TempDir()
	free := fakeFreeSpace(t, 1<<40)
	n := startNode(t, Config{DataDir: dir, SaveFrequency: time.Hour})
	snapshot := func(i int) error {
		mustSave(t, n, fmt.Sprintf("s%d", i), `{"v":"`+strings.Repeat("v", 4096)+`"}`)
		return n.raft.Snapshot().Error()
	}
	for i := range 2 {
		if err := snapshot(i); err != nil {
			t.Fatal(err)
		}
	}
	kept := snapshotIndexes(t, dir)
	if len(kept) != 2 {
		t.Fatalf("snapshots with room: %v, want 2", kept)
	}
	free.Store(1024)
	if err := snapshot(2); err == nil {
		t.Fatal("a snapshot larger than the free space was written")
	}
	if got := snapshotIndexes(t, dir); fmt.Sprint(got) != fmt.Sprint(kept[:1]) {
		t.Fatalf("after a snapshot failed for want of space: %v, want only the newest %v", got, kept[:1])
	}
	free.Store(saveFileReserve - 1<<20)
	if err := snapshot(3); err != nil {
		t.Fatal(err)
	}
	if got := snapshotIndexes(t, dir); len(got) != 1 || got[0] <= kept[0] {
		t.Fatalf("after a snapshot written with less free than the reserve: %v, want only the new one", got)
	}
	free.Store(1 << 40)
	if err := snapshot(4); err != nil {
		t.Fatal(err)
	}
	if got := snapshotIndexes(t, dir); len(got) != 2 {
		t.Fatalf("with room again: %v, want 2 snapshots", got)
	}
}

// TestStatusNamesAMemberThatCannotWrite: status names a member whose raft
// log cannot be written and counts it as a failure: it answers, but cannot
// help commit (a drill's status said "3 of 3 reachable, 1 more may fail"
// while one member's disk was full, and writes stopped when another
// paused).
func TestStatusNamesAMemberThatCannotWrite(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.nodes[tc.leader()]
	f := tc.nodes[tc.follower()]
	// An append that reaches f after the failure is noted clears it (the
	// new leader's first entries): wait until f holds the whole log.
	poll(t, func() bool { return l.isCaughtUp(false) && f.raft.LastIndex() == l.raft.LastIndex() }, 10*time.Second, "the follower to hold the leader's whole log")
	f.logHealth.note(errors.New("no space left on device"))
	cs := l.ClusterStatus(context.Background())
	if cs.VotersReachable != 3 || cs.FailuresLeft != 0 {
		t.Fatalf("status with one member that cannot write: %d reachable, %d more may fail; want 3 and 0", cs.VotersReachable, cs.FailuresLeft)
	}
	for _, m := range cs.Nodes {
		if want := m.ID == f.ID(); want != strings.Contains(m.LogFailure, "cannot write its raft log") {
			t.Fatalf("member %s: log_failure %q", m.ID, m.LogFailure)
		}
	}
}

// TestStatusNamesAMemberThatStaysBehind: status names a member that
// answers but has not applied what the leader had applied behindAfter
// ago, counts it as a failure, and stops once it has caught up. A
// follower whose disk had filled answered, heard its leader and never
// caught up, and status said "1 more may fail" (a drill).
func TestStatusNamesAMemberThatStaysBehind(t *testing.T) {
	orig := behindAfter
	behindAfter = time.Second
	t.Cleanup(func() { behindAfter = orig })
	var held atomic.Bool
	release := make(chan struct{})
	var once sync.Once
	let := func() { held.Store(false); once.Do(func() { close(release) }) }
	tc := newTestCluster(t, 3, func(c *Config) {
		if c.ID == "n3" {
			c.wrapLogStore = func(s raft.LogStore) raft.LogStore { return heldLogStore{s, &held, release} }
		}
	})
	t.Cleanup(let) // runs before the cluster is closed
	if tc.leader() == 2 {
		tc.transferTo(0)
	}
	l := tc.nodes[tc.leader()]
	status := func() (ClusterStatus, NodeStatus) {
		mustSave(t, l, fmt.Sprintf("s%d", time.Now().UnixNano()), `{}`)
		cs := l.ClusterStatus(context.Background())
		for _, m := range cs.Nodes {
			if m.ID == "n3" {
				return cs, m
			}
		}
		t.Fatalf("no n3 in %+v", cs)
		return cs, NodeStatus{}
	}
	time.Sleep(2 * behindAfter)
	if cs, n3 := status(); n3.Behind != "" || cs.FailuresLeft != 1 {
		t.Fatalf("before n3 is held: behind %q, %d more may fail", n3.Behind, cs.FailuresLeft)
	}
	held.Store(true)
	var cs ClusterStatus
	var n3 NodeStatus
	poll(t, func() bool { cs, n3 = status(); return n3.Behind != "" }, 10*behindAfter, "n3 named behind")
	t.Logf("n3: %s", n3.Behind)
	if cs.FailuresLeft != 0 || cs.VotersReachable != 3 || n3.LogFailure != "" {
		t.Fatalf("with n3 behind: %d reachable, %d more may fail, log failure %q; want 3, 0 and none", cs.VotersReachable, cs.FailuresLeft, n3.LogFailure)
	}
	for _, m := range cs.Nodes {
		if m.ID != "n3" && m.Behind != "" {
			t.Fatalf("%s named behind too: %s", m.ID, m.Behind)
		}
	}
	let()
	poll(t, func() bool { cs, n3 = status(); return n3.Behind == "" && cs.FailuresLeft == 1 }, 10*behindAfter, "n3 caught up and no longer named")
}
