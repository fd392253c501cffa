package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kadosession/kadosession/transport"
)

func withHTTP(c *Config) { c.HTTP = "127.0.0.1:0" }

// httpGet fetches path from n's admin endpoint.
func httpGet(t *testing.T, n *Node, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + n.HTTPAddr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// scrape parses n's /metrics with Prometheus's own text parser.
func scrape(t *testing.T, n *Node) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, n, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// metricValue returns the value (counter, gauge, or a histogram's count) of
// the series of family name whose labels include want; ok is false when
// there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// gathered is metricValue on n's registry, read in process (no --http
// needed); 0 when there is no such series yet.
func gathered(t *testing.T, n *Node, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := n.obs.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	v, _ := metricValue(byName, name, want)
	return v
}

func mustMetric(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := metricValue(fams, name, want)
	if !ok {
		t.Fatalf("no series %s%v in /metrics", name, want)
	}
	return v
}

func nativeConn(t *testing.T, addr string) *transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := transport.Dial(ctx, addr, transport.ConnConfig{})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func roundTrip(t *testing.T, c *transport.Conn, req *transport.Request) transport.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.RoundTrip(ctx, req)
	if err == nil && resp.Err != nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	return resp
}

func TestMetricsEndpoint(t *testing.T) {
	tc := newTestCluster(t, 3, withHTTP)
	l, f := tc.leader(), tc.follower()
	leader, follower := tc.nodes[l], tc.nodes[f]

	// Native saves through the follower (forwarded), Kado JSON saves and a
	// native restore through the leader.
	fc := nativeConn(t, follower.Addr())
	for i := 0; i < 5; i++ {
		roundTrip(t, fc, &transport.Request{Op: transport.OpSave, SID: fmt.Sprintf("native-%d", i), Data: []byte(`{"n":1}`)})
	}
	for i := 0; i < 3; i++ {
		if got := kadoRequest(t, leader.Addr(), []byte(fmt.Sprintf(`{"save":{"sid":"kado-%d","data":{"a":1}}}`, i))); !strings.Contains(got, `"ok"`) {
			t.Fatalf("kado save: %s", got)
		}
	}
	lc := nativeConn(t, leader.Addr())
	if resp := roundTrip(t, lc, &transport.Request{Op: transport.OpRestore, SID: "native-0"}); !resp.Found {
		t.Fatal("restore of native-0 found nothing")
	}
	if _, err := leader.Prune(context.Background()); err != nil {
		t.Fatalf("prune: %v", err)
	}
	if err := leader.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	tc.waitSame()
	if err := leader.SaveNow(); err != nil {
		t.Fatalf("save file: %v", err)
	}

	// A peer's request of its own (a follower learning the commit index
	// it must reach, a cluster check before a raft dial) may be in flight
	// at any moment; the test's own requests must all be answered, so the
	// scraped count must come down to 0 (checked below).
	lm := scrape(t, leader)
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); lm = scrape(t, leader) {
		if v, ok := metricValue(lm, "kadosession_requests_in_flight", nil); ok && v == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		check  func(float64) bool
		want   string
	}{
		{"kadosession_sessions", nil, func(v float64) bool { return v == 8 }, "8 sessions"},
		{"kadosession_raft_term", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"kadosession_raft_state", map[string]string{"state": "leader"}, func(v float64) bool { return v == 1 }, "1"},
		{"kadosession_raft_state", map[string]string{"state": "follower"}, func(v float64) bool { return v == 0 }, "0"},
		{"kadosession_raft_commit_index", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"kadosession_raft_applied_index", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"kadosession_raft_voters", nil, func(v float64) bool { return v == 3 }, "3"},
		{"kadosession_ready", nil, func(v float64) bool { return v == 1 }, "1"},
		{"kadosession_requests_total", map[string]string{"op": "save", "protocol": "kado", "result": "ok"}, func(v float64) bool { return v == 3 }, "3 Kado saves"},
		{"kadosession_requests_total", map[string]string{"op": "save", "protocol": "peer", "result": "ok"}, func(v float64) bool { return v >= 5 }, ">= 5 forwarded saves"},
		{"kadosession_requests_total", map[string]string{"op": "restore", "protocol": "native", "result": "ok"}, func(v float64) bool { return v == 1 }, "1 native restore"},
		{"kadosession_request_duration_seconds", map[string]string{"op": "save", "protocol": "kado"}, func(v float64) bool { return v == 3 }, "3 observations"},
		{"kadosession_commit_batch_size", nil, func(v float64) bool { return v >= 1 }, ">= 1 batch"},
		{"kadosession_raft_apply_duration_seconds", nil, func(v float64) bool { return v >= 1 }, ">= 1 batch"},
		{"kadosession_log_store_duration_seconds", nil, func(v float64) bool { return v >= 1 }, ">= 1 log append"},
		{"kadosession_prunes_total", map[string]string{"result": "ok"}, func(v float64) bool { return v == 1 }, "1"},
		{"kadosession_snapshots_total", map[string]string{"result": "ok"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"kadosession_snapshot_size_bytes", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"kadosession_open_connections", nil, func(v float64) bool { return v >= 1 }, ">= 1 (our native connection)"},
		{"kadosession_requests_in_flight", nil, func(v float64) bool { return v == 0 }, "0 (every request answered)"},
		{"kadosession_save_file_writes_total", map[string]string{"result": "ok"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"kadosession_save_file_writes_total", map[string]string{"result": "error"}, func(v float64) bool { return v == 0 }, "0, exported before any failure"},
		{"kadosession_save_file_write_duration_seconds", nil, func(v float64) bool { return v >= 1 }, ">= 1 observation"},
		{"kadosession_save_file_last_success_timestamp_seconds", nil, func(v float64) bool { return time.Since(time.Unix(int64(v), 0)) < time.Minute }, "within the last minute"},
		{"go_goroutines", nil, func(v float64) bool { return v > 0 }, "> 0"},
	} {
		name := tt.name
		for _, k := range []string{"op", "protocol", "result", "state"} {
			if v, ok := tt.labels[k]; ok {
				name += "/" + v
			}
		}
		t.Run(name, func(t *testing.T) {
			if v := mustMetric(t, lm, tt.name, tt.labels); !tt.check(v) {
				t.Errorf("%s%v = %v, want %s", tt.name, tt.labels, v, tt.want)
			}
		})
	}
	if _, ok := metricValue(lm, "kadosession_raft_last_contact_seconds", nil); ok {
		t.Error("the leader reports a last contact")
	}

	fm := scrape(t, follower)
	if v := mustMetric(t, fm, "kadosession_requests_total", map[string]string{"op": "save", "protocol": "native", "result": "ok"}); v != 5 {
		t.Errorf("follower native saves = %v, want 5", v)
	}
	if v := mustMetric(t, fm, "kadosession_forwarded_requests_total", map[string]string{"op": "save"}); v != 5 {
		t.Errorf("follower forwarded saves = %v, want 5", v)
	}
	if v := mustMetric(t, fm, "kadosession_raft_last_contact_seconds", nil); v < 0 || v > 5 {
		t.Errorf("follower last contact = %vs", v)
	}
	if v := mustMetric(t, fm, "kadosession_sessions", nil); v != 8 {
		t.Errorf("follower sessions = %v, want 8", v)
	}
	if _, ok := metricValue(fm, "kadosession_peer_last_contact_seconds", nil); ok {
		t.Error("a follower reports last contact per peer")
	}

	// Last contact per peer, on the leader: both followers answer it (a
	// read's confirmation round, or the probe within a second); once one
	// is stopped, its figure grows and the other's does not.
	other := 3 - l - f
	poll(t, func() bool {
		m := scrape(t, leader)
		for _, i := range []int{f, other} {
			if v, ok := metricValue(m, "kadosession_peer_last_contact_seconds", map[string]string{"peer": tc.cfgs[i].ID}); !ok || v < 0 || v > 3*peerProbeInterval.Seconds() {
				return false
			}
		}
		return true
	}, 10*time.Second, "the leader's last contact with both followers")
	tc.stop(f)
	poll(t, func() bool {
		m := scrape(t, leader)
		gone, _ := metricValue(m, "kadosession_peer_last_contact_seconds", map[string]string{"peer": tc.cfgs[f].ID})
		alive, ok := metricValue(m, "kadosession_peer_last_contact_seconds", map[string]string{"peer": tc.cfgs[other].ID})
		return gone > 3*peerProbeInterval.Seconds() && ok && alive < 3*peerProbeInterval.Seconds()
	}, 15*time.Second, "the stopped follower's last contact to grow while the other's stays fresh")
}

// The leader that replaces a crashed one reports the crashed member too,
// counting from when it took office: it had no series for it, so an alert
// on the metric missed exactly the member that had just died.
func TestPeerContactCoversTheCrashedLeader(t *testing.T) {
	tc := newTestCluster(t, 3, withHTTP)
	old := tc.leader()
	oldID := tc.cfgs[old].ID
	tc.crash(old)
	poll(t, func() bool {
		// Whichever of the two left leads now: on a loaded machine the
		// first elected may lose office to the other (seen once in 25
		// runs under -race beside CPU hogs), and a follower reports no
		// such series.
		lead := tc.nodes[tc.leader()]
		v, ok := metricValue(scrape(t, lead), "kadosession_peer_last_contact_seconds", map[string]string{"peer": oldID})
		return ok && v > 2*peerProbeInterval.Seconds()
	}, 15*time.Second, "the new leader's last contact with the crashed one, growing")
}

func TestReadyzHealthzStatus(t *testing.T) {
	tc := newTestCluster(t, 3, withHTTP)
	f := tc.follower()
	n := tc.nodes[f]
	if code, body := httpGet(t, n, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %s", code, body)
	}
	poll(t, func() bool { code, _ := httpGet(t, n, "/readyz"); return code == http.StatusOK }, 10*time.Second, "/readyz 200 on a follower")

	// The follower may not have applied the third member's configuration
	// entry yet (waitMembers asks the leader): wait until it lists three.
	var st ClusterStatus
	poll(t, func() bool {
		code, body := httpGet(t, n, "/status")
		if code != http.StatusOK {
			t.Fatalf("/status = %d %s", code, body)
		}
		st = ClusterStatus{}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status is not ClusterStatus JSON: %v\n%s", err, body)
		}
		return len(st.Nodes) == 3
	}, 10*time.Second, "/status listing three members")
	if st.LeaderID == "" || st.ClusterID != n.ClusterID() {
		t.Fatalf("/status = %+v", st)
	}
	for _, ns := range st.Nodes {
		if ns.State == "unreachable" {
			t.Errorf("/status: %s unreachable: %s", ns.ID, ns.Error)
		}
	}
}

func TestReadyzFalseWhenCutOffFromLeader(t *testing.T) {
	tc := newTestCluster(t, 3, withHTTP)
	f := tc.follower()
	n := tc.nodes[f]
	poll(t, func() bool { code, _ := httpGet(t, n, "/readyz"); return code == http.StatusOK }, 10*time.Second, "/readyz 200")

	for i := range tc.nodes {
		if i == f {
			continue
		}
		other := tc.nodes[i]
		tc.crash(i)
		other.stopHTTP() // crash leaves the admin endpoint up, as a frozen process would
	}
	var body string
	poll(t, func() bool {
		var code int
		code, body = httpGet(t, n, "/readyz")
		return code == http.StatusServiceUnavailable
	}, 10*time.Second, "/readyz 503 on a node cut off from its leader")
	var rd Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil || rd.Ready || rd.Reason == "" {
		t.Fatalf("/readyz body = %s (%v)", body, err)
	}
	t.Logf("/readyz: %s", rd.Reason)
	// The process is still up.
	if code, _ := httpGet(t, n, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d on a live node", code)
	}
}

// A removed node is not ready: /readyz says why, and kadosession_ready,
// which stayed 1, is 0 with it.
func TestRemovedNodeIsNotReady(t *testing.T) {
	tc := newTestCluster(t, 3, withHTTP)
	f := tc.follower()
	n := tc.nodes[f]
	poll(t, func() bool { v, _ := metricValue(scrape(t, n), "kadosession_ready", nil); return v == 1 }, 10*time.Second, "kadosession_ready 1")
	if err := tc.nodes[tc.leader()].Remove(context.Background(), n.ID()); err != nil {
		t.Fatal(err)
	}
	poll(t, func() bool { code, _ := httpGet(t, n, "/readyz"); return code == http.StatusServiceUnavailable }, 10*time.Second, "/readyz 503 on the removed node")
	if v, ok := metricValue(scrape(t, n), "kadosession_ready", nil); !ok || v != 0 {
		t.Fatalf("kadosession_ready on a removed node = %v (found %v), want 0", v, ok)
	}
}

// A restarted follower is not ready, and refuses stale reads, until it has
// applied what the leader had committed: it heard the leader's heartbeats
// at once and called itself ready with nothing applied (commit index 0)
// while the leader's replication to it backed off.
func TestRestartedFollowerReadyOnceCaughtUp(t *testing.T) {
	tc := newTestCluster(t, 3, withHTTP)
	f := tc.follower()
	tc.stop(f)
	lead := tc.nodes[tc.leader()]
	for i := range 20 {
		mustSave(t, lead, fmt.Sprintf("while-down-%d", i), `{}`)
	}
	hold := holdLog(t)
	tc.cfgs[f].wrapLogStore = hold.wrap
	n := tc.start(f)
	var rd Readiness
	poll(t, func() bool { rd = n.Readiness(); return n.Ready() && !n.raft.LastContact().IsZero() }, 10*time.Second, "the restarted follower serving and hearing its leader")
	time.Sleep(500 * time.Millisecond)
	if rd = n.Readiness(); rd.Ready || !strings.Contains(rd.Reason, "catching up") {
		t.Fatalf("readiness of a follower that cannot apply what it missed: %+v", rd)
	}
	if _, _, err := n.Restore(context.Background(), "while-down-19", transport.Stale); err == nil || !strings.Contains(err.Error(), "catching up") {
		t.Fatalf("a stale read there: %v", err)
	}
	hold.let()
	poll(t, func() bool { return n.Readiness().Ready }, 10*time.Second, "ready once caught up")
	if data, found, err := n.Restore(context.Background(), "while-down-19", transport.Stale); err != nil || !found {
		t.Fatalf("a stale read once caught up: %s %v %v", data, found, err)
	}
}

// After every node restarted, a follower does not take the commit index of
// a leader that has not yet committed an entry of its term as what it must
// apply to be caught up: raft keeps no commit index on disk, so that leader
// says 0, and a follower holding a snapshot called itself caught up at once,
// serving stale reads (a helper's stress run: 378 stale values) and
// readiness without what was acknowledged before the restart.
func TestFollowerAfterFullRestartWaitsForTheLeadersFirstCommit(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	f, other := (l+1)%3, (l+2)%3
	mustSave(t, tc.nodes[l], "before", `{}`)
	tc.waitSame()
	if err := tc.nodes[f].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tc.stop(f)
	// Acknowledged while f was down: f's log ends before them, so l (which
	// has them) is the one that can win an election of the two.
	for i := range 5 {
		mustSave(t, tc.nodes[l], fmt.Sprintf("while-down-%d", i), `{}`)
	}
	tc.stop(other)
	tc.stop(l)
	hold := holdLog(t)
	tc.cfgs[f].wrapLogStore = hold.wrap
	lead := tc.start(l)
	n := tc.start(f)
	poll(t, func() bool { return lead.raft.State() == raft.Leader && n.Ready() && !n.raft.LastContact().IsZero() },
		15*time.Second, "the restarted leader elected, heard by the follower")
	// The leader's first entry cannot commit: the third node is down and
	// the follower cannot store it.
	time.Sleep(500 * time.Millisecond)
	if rd := n.Readiness(); rd.Ready {
		t.Fatalf("readiness of a follower whose leader has committed nothing since the restart: %+v", rd)
	}
	if data, found, err := n.Restore(context.Background(), "while-down-4", transport.Stale); err == nil {
		t.Fatalf("a stale read there was served (found %v, %s), without a session acknowledged before the restart", found, data)
	} else if !strings.Contains(err.Error(), "stale read refused") {
		t.Fatalf("a stale read there: %v", err)
	}
	hold.let()
	poll(t, func() bool { return n.Readiness().Ready }, 15*time.Second, "the follower ready once its leader's first entry committed")
	if data, found, err := n.Restore(context.Background(), "while-down-4", transport.Stale); err != nil || !found {
		t.Fatalf("a stale read once caught up: %s %v %v", data, found, err)
	}
}

// blockedLogStore holds LastIndex until release is closed: a start that
// takes long (a large log or snapshot).
type blockedLogStore struct {
	raft.LogStore
	release chan struct{}
}

func (b blockedLogStore) LastIndex() (uint64, error) {
	<-b.release
	return b.LogStore.LastIndex()
}

// While a node starts, its admin endpoint already answers: /healthz 200
// and /readyz 503 "starting" (a probe used to hang until the start ended).
func TestAdminHTTPAnswersWhileStarting(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	release := make(chan struct{})
	opened := make(chan *Node, 1)
	go func() {
		n, err := Open(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: addr, Logger: testLogger(),
			wrapLogStore: func(s raft.LogStore) raft.LogStore { return blockedLogStore{s, release} }})
		if err != nil {
			t.Error(err)
		}
		opened <- n
	}()
	c := http.Client{Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	poll(t, func() bool { code, _ := get("/healthz"); return code == http.StatusOK }, 10*time.Second, "/healthz while starting")
	if code, body := get("/healthz"); !strings.Contains(body, `"starting": true`) {
		t.Fatalf("/healthz while starting: %d %s", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Fatalf("/readyz while starting: %d %s", code, body)
	}
	close(release)
	n := <-opened
	if n == nil {
		return
	}
	defer n.Close()
	poll(t, func() bool { code, _ := get("/readyz"); return code == http.StatusOK }, 10*time.Second, "/readyz once started")
	if _, body := get("/healthz"); !strings.Contains(body, `"id": "`+n.ID()+`"`) {
		t.Fatalf("/healthz once started: %s", body)
	}
}
