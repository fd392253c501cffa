package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kadosession/kadosession/transport"
)

// metrics holds a node's Prometheus metrics in a registry of its own (never
// the global one: tests run several nodes in one process). Every method is
// safe for concurrent use and on a nil *metrics, where it does nothing.
//
// Series (all prefixed kadosession_):
//
//	raft_state{state}                  1 for the node's raft state, 0 for the others
//	raft_term, raft_commit_index, raft_applied_index, raft_last_index
//	raft_last_contact_seconds          followers: since the leader was last heard from
//	peer_last_contact_seconds{peer}    leader: since each member last answered it
//	raft_leader_known, raft_voters, ready
//	sessions                           sessions held (expired ones until pruned)
//	open_connections                   client and peer connections on the node's port
//	requests_total{op,protocol,result} and request_duration_seconds{op,protocol}
//	                                   protocol: native, kado or peer (forwarded to us)
//	forwarded_requests_total{op}       requests this node sent on to the leader
//	commit_batch_size, raft_apply_duration_seconds   the group committer's batches
//	log_store_duration_seconds         each write to the raft log (appends, leader and followers)
//	prunes_total{result}, pruned_sessions_total
//	snapshot_duration_seconds, snapshot_size_bytes, snapshots_total{result}
//	backups_total{result}, restored_sessions_total
type metrics struct {
	reg *prometheus.Registry

	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	forwarded    *prometheus.CounterVec
	batchSize    prometheus.Histogram
	applyLatency prometheus.Histogram
	logStore     prometheus.Histogram
	prunes       *prometheus.CounterVec
	prunedTotal  prometheus.Counter
	snapDuration prometheus.Histogram
	snapSize     prometheus.Gauge
	snapCount    *prometheus.CounterVec
	backups      *prometheus.CounterVec
	restored     prometheus.Counter
	saveFiles    *prometheus.CounterVec
	saveFileTime prometheus.Histogram
	saveFileOK   prometheus.Gauge

	// A request's counter and latency histogram by their labels, looked
	// up once: finding them by label values hashed and checked the
	// strings again for every request (3% of a follower serving reads).
	byLabels sync.Map // requestLabels -> requestMetrics
}

// requestLabels are requests_total's labels.
type requestLabels struct{ op, protocol, result string }

// requestMetrics are the series a request with some requestLabels counts in.
type requestMetrics struct {
	count   prometheus.Counter
	latency prometheus.Observer // by op and protocol only
}

const metricsNamespace = "kadosession"

func newMetrics(n *Node) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Name: name, Help: help}
	}
	hist := func(name, help string, buckets []float64) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{Namespace: metricsNamespace, Name: name, Help: help, Buckets: buckets}
	}
	latencyBuckets := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts(f("requests_total",
		"Requests served, by operation, protocol (native, kado, peer) and result (ok or an error code).")),
		[]string{"op", "protocol", "result"})
	m.latency = prometheus.NewHistogramVec(hist("request_duration_seconds",
		"Time to serve a request, forwarding included, by operation and protocol.", latencyBuckets),
		[]string{"op", "protocol"})
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts(f("forwarded_requests_total",
		"Requests this node forwarded to the leader because it was not the leader.")), []string{"op"})
	m.batchSize = prometheus.NewHistogram(hist("commit_batch_size",
		"Session writes packed into one raft log entry by the group committer.",
		[]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}))
	m.applyLatency = prometheus.NewHistogram(hist("raft_apply_duration_seconds",
		"Time from handing a batch to raft until it was committed and applied (leader).", latencyBuckets))
	m.logStore = prometheus.NewHistogram(hist("log_store_duration_seconds",
		"Time to append entries to the raft log and fsync them (leader and followers): the disk's share of every write.", latencyBuckets))
	m.prunes = prometheus.NewCounterVec(prometheus.CounterOpts(f("prunes_total",
		"Prune commands this node replicated as leader, by result.")), []string{"result"})
	m.prunedTotal = prometheus.NewCounter(prometheus.CounterOpts(f("pruned_sessions_total",
		"Expired sessions removed by this node's prunes.")))
	m.snapDuration = prometheus.NewHistogram(hist("snapshot_duration_seconds",
		"Time to write a raft snapshot (the save-file document) to the snapshot store.",
		[]float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}))
	m.snapSize = prometheus.NewGauge(prometheus.GaugeOpts(f("snapshot_size_bytes",
		"Size of the last raft snapshot written.")))
	m.snapCount = prometheus.NewCounterVec(prometheus.CounterOpts(f("snapshots_total",
		"Raft snapshots written (taken here or installed from the leader), by result.")), []string{"result"})
	m.backups = prometheus.NewCounterVec(prometheus.CounterOpts(f("backups_total",
		"Backups captured by this node as leader, by result.")), []string{"result"})
	m.restored = prometheus.NewCounter(prometheus.CounterOpts(f("restored_sessions_total",
		"Sessions loaded from backups through this node as leader.")))
	m.saveFiles = prometheus.NewCounterVec(prometheus.CounterOpts(f("save_file_writes_total",
		"Writes of the Kado save file, by result (ok or error: the previous file is then intact).")), []string{"result"})
	for _, r := range []string{"ok", "error"} {
		m.saveFiles.WithLabelValues(r) // both exported from the start, for alerts on rate()
	}
	m.saveFileTime = prometheus.NewHistogram(hist("save_file_write_duration_seconds",
		"Time to write the save file (capture, encode, fsync, rename).",
		[]float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}))
	m.saveFileOK = prometheus.NewGauge(prometheus.GaugeOpts(f("save_file_last_success_timestamp_seconds",
		"Unix time of the last save file written (0: none since start); alert when it falls behind --save-frequency while sessions change.")))
	m.reg.MustRegister(m.requests, m.latency, m.forwarded, m.batchSize, m.applyLatency, m.logStore, m.prunes, m.prunedTotal,
		m.snapDuration, m.snapSize, m.snapCount, m.backups, m.restored, m.saveFiles, m.saveFileTime, m.saveFileOK,
		&nodeCollector{n: n},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// result labels an outcome: "ok" or the wire error code ("not_leader", …).
func result(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "timeout"
	}
	return strings.ReplaceAll(transport.AsError(err).Code.String(), " ", "_")
}

func (m *metrics) observeRequest(op, protocol string, err error, took time.Duration, forwarded bool) {
	if m == nil {
		return
	}
	k := requestLabels{op, protocol, result(err)}
	v, ok := m.byLabels.Load(k)
	if !ok {
		v, _ = m.byLabels.LoadOrStore(k, requestMetrics{
			count:   m.requests.WithLabelValues(op, protocol, k.result),
			latency: m.latency.WithLabelValues(op, protocol),
		})
	}
	rm := v.(requestMetrics)
	rm.count.Inc()
	rm.latency.Observe(took.Seconds())
	if forwarded {
		m.forwarded.WithLabelValues(op).Inc()
	}
}

// observeForward counts one request forwarded to the leader outside of
// observeRequest's accounting (a read a follower could not serve itself).
func (m *metrics) observeForward(op string) {
	if m == nil {
		return
	}
	m.forwarded.WithLabelValues(op).Inc()
}

// observeApply records one group-commit batch of size writes that took d
// from raft.Apply to its result.
func (m *metrics) observeApply(size int, d time.Duration) {
	if m == nil {
		return
	}
	m.batchSize.Observe(float64(size))
	m.applyLatency.Observe(d.Seconds())
}

// observeLogStore records one append to the raft log that took d.
func (m *metrics) observeLogStore(d time.Duration) {
	if m == nil {
		return
	}
	m.logStore.Observe(d.Seconds())
}

func (m *metrics) observePrune(count int, err error) {
	if m == nil {
		return
	}
	m.prunes.WithLabelValues(result(err)).Inc()
	m.prunedTotal.Add(float64(count))
}

func (m *metrics) observeBackup(err error) {
	if m == nil {
		return
	}
	m.backups.WithLabelValues(result(err)).Inc()
}

func (m *metrics) observeSaveFile(took time.Duration, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.saveFiles.WithLabelValues("error").Inc()
		return
	}
	m.saveFiles.WithLabelValues("ok").Inc()
	m.saveFileTime.Observe(took.Seconds())
	m.saveFileOK.SetToCurrentTime()
}

func (m *metrics) observeRestored(count int) {
	if m == nil {
		return
	}
	m.restored.Add(float64(count))
}

// nodeCollector reads the node's raft and state gauges at scrape time.
type nodeCollector struct{ n *Node }

var (
	descState       = prometheus.NewDesc("kadosession_raft_state", "1 for the node's current raft state, 0 for the others.", []string{"state"}, nil)
	descTerm        = prometheus.NewDesc("kadosession_raft_term", "The node's current raft term.", nil, nil)
	descCommit      = prometheus.NewDesc("kadosession_raft_commit_index", "The highest log index known to be committed.", nil, nil)
	descApplied     = prometheus.NewDesc("kadosession_raft_applied_index", "The highest log index applied to the state machine.", nil, nil)
	descLast        = prometheus.NewDesc("kadosession_raft_last_index", "The last index in the node's log.", nil, nil)
	descLastContact = prometheus.NewDesc("kadosession_raft_last_contact_seconds", "Followers: seconds since the leader was last heard from (absent on the leader and before any contact).", nil, nil)
	descPeerContact = prometheus.NewDesc("kadosession_peer_last_contact_seconds", "Leader: seconds since each other member last answered it, or since this node took office if it has not answered since (probed every second; absent on followers).", []string{"peer"}, nil)
	descLeaderKnown = prometheus.NewDesc("kadosession_raft_leader_known", "1 when the node knows a leader.", nil, nil)
	descVoters      = prometheus.NewDesc("kadosession_raft_voters", "Voters in the node's latest raft configuration.", nil, nil)
	descReady       = prometheus.NewDesc("kadosession_ready", "1 when the node is ready for traffic, as /readyz answers 200 (started, a member, a leader known and heard from).", nil, nil)
	descSessions    = prometheus.NewDesc("kadosession_sessions", "Sessions held by the node's state machine (expired ones until pruned).", nil, nil)
	descConns       = prometheus.NewDesc("kadosession_open_connections", "Client and peer connections open on the node's port (raft's own not counted).", nil, nil)
	descInFlight    = prometheus.NewDesc("kadosession_requests_in_flight", "Client and peer requests the node has read and not yet answered (a Kado JSON connection counts one while open).", nil, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descTerm, descCommit, descApplied, descLast, descLastContact,
		descPeerContact, descLeaderKnown, descVoters, descReady, descSessions, descConns, descInFlight} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if n.fsm != nil {
		gauge(descSessions, float64(n.fsm.State.Len()))
	}
	if n.server != nil {
		gauge(descConns, float64(n.server.OpenConns()))
		gauge(descInFlight, float64(n.server.InFlight()))
	}
	gauge(descReady, b2f(n.Readiness().Ready))
	r := n.raft
	if r == nil {
		return
	}
	st := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		gauge(descState, b2f(s == st), stateName(s))
	}
	gauge(descTerm, float64(r.CurrentTerm()))
	gauge(descCommit, float64(r.CommitIndex()))
	gauge(descApplied, float64(max(n.fsm.applied.get(), r.AppliedIndex())))
	gauge(descLast, float64(r.LastIndex()))
	addr, _ := r.LeaderWithID()
	gauge(descLeaderKnown, b2f(addr != ""))
	gauge(descVoters, float64(n.voters()))
	if st != raft.Leader {
		if t := r.LastContact(); !t.IsZero() {
			gauge(descLastContact, time.Since(t).Seconds())
		}
		return
	}
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.ID == raft.ServerID(n.id) {
				continue
			}
			// A member not heard from since this node took office (a
			// crashed old leader, say) counts from then: without a
			// series, an alert on it missed exactly that member.
			t, ok := n.contacts.get(s.Address)
			if since := n.ledSince.Load(); !ok && since != 0 {
				t, ok = time.Unix(0, since), true
			}
			if ok {
				gauge(descPeerContact, time.Since(t).Seconds(), string(s.ID))
			}
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// snapshots wraps the node's snapshot store so that every snapshot written
// (taken here, or installed from the leader) is timed and measured.
func (m *metrics) snapshotStore(s raft.SnapshotStore) raft.SnapshotStore {
	if m == nil {
		return s
	}
	return &observedSnapshots{SnapshotStore: s, m: m}
}

type observedSnapshots struct {
	raft.SnapshotStore
	m *metrics
}

func (s *observedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		s.m.snapCount.WithLabelValues("error").Inc()
		return nil, err
	}
	return &observedSink{SnapshotSink: sink, m: s.m, start: time.Now()}, nil
}

type observedSink struct {
	raft.SnapshotSink
	m     *metrics
	start time.Time
	size  int64
}

func (s *observedSink) Write(p []byte) (int, error) {
	n, err := s.SnapshotSink.Write(p)
	s.size += int64(n)
	return n, err
}

func (s *observedSink) Close() error {
	err := s.SnapshotSink.Close()
	s.m.snapCount.WithLabelValues(result(err)).Inc()
	if err == nil {
		s.m.snapDuration.Observe(time.Since(s.start).Seconds())
		s.m.snapSize.Set(float64(s.size))
	}
	return err
}

func (s *observedSink) Cancel() error {
	s.m.snapCount.WithLabelValues("canceled").Inc()
	return s.SnapshotSink.Cancel()
}

// observedHandler is the transport.Handler the node's server calls: the
// Node itself, with every request counted and timed, and the backup admin
// ops (backup.go) answered before the rest reach Node.Admin. It embeds the
// Node so that a Handler method added later is served, uncounted, as is.
type observedHandler struct{ *Node }

var _ transport.Handler = observedHandler{}

// track starts timing one request; its done records the outcome.
// leaderOnly says the request needs the leader, so that a follower that is
// not answering a peer forwards it.
func (h observedHandler) track(ctx context.Context, op string, leaderOnly bool) tracked {
	proto := transport.RequestProtocol(ctx)
	forwarded := leaderOnly && proto != transport.ProtocolPeer && h.Node.raft.State() != raft.Leader
	return tracked{obs: h.Node.obs, op: op, proto: proto, start: time.Now(), forwarded: forwarded}
}

// tracked is one request being timed (a value: a closure escaped to the
// heap for every request).
type tracked struct {
	obs       *metrics
	op, proto string
	start     time.Time
	forwarded bool
}

func (t tracked) done(err error) {
	t.obs.observeRequest(t.op, t.proto, err, time.Since(t.start), t.forwarded)
}

func (h observedHandler) Restore(ctx context.Context, sid string, c transport.Consistency) (data []byte, found bool, err error) {
	// A follower serves linearizable reads itself (follower_read.go); the
	// ones it forwards after all are counted in Node.Restore.
	t := h.track(ctx, "restore", false)
	data, found, err = h.Node.Restore(ctx, sid, c)
	t.done(err)
	return data, found, h.Node.explain(err)
}

func (h observedHandler) Save(ctx context.Context, sid string, data []byte) error {
	t := h.track(ctx, "save", true)
	err := h.Node.Save(ctx, sid, data)
	t.done(err)
	return h.Node.explain(err)
}

func (h observedHandler) Patch(ctx context.Context, sid string, set []transport.KV, del []string, ifExists bool) error {
	t := h.track(ctx, "patch", true)
	err := h.Node.Patch(ctx, sid, set, del, ifExists)
	t.done(err)
	return h.Node.explain(err)
}

func (h observedHandler) Delete(ctx context.Context, sid string) error {
	t := h.track(ctx, "delete", true)
	err := h.Node.Delete(ctx, sid)
	t.done(err)
	return h.Node.explain(err)
}

func (h observedHandler) Touch(ctx context.Context, sid string) error {
	t := h.track(ctx, "touch", true)
	err := h.Node.Touch(ctx, sid)
	t.done(err)
	return h.Node.explain(err)
}

func (h observedHandler) Admin(ctx context.Context, body []byte) ([]byte, error) {
	t := h.track(ctx, "admin", false)
	out, handled, err := h.Node.backupAdmin(ctx, body)
	if !handled {
		out, err = h.Node.Admin(ctx, body)
	}
	t.done(err)
	return out, err
}
