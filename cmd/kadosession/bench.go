package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/transport"
)

// Bounds of bench's inputs: anything outside is refused with an error that
// names the flag and the range.
const (
	benchMaxClients  = 4096
	benchMinSize     = 16
	benchMaxSize     = 1 << 20
	benchMaxSessions = 1_000_000
	benchMaxDuration = 10 * time.Minute
	benchMaxTTL      = 30 * 24 * time.Hour
	benchMaxPool     = 1024
	// benchOpTimeout bounds one operation against Redis or a pinned node
	// (the Go client has its own RequestTimeout).
	benchOpTimeout = 5 * time.Second
	// benchErrPause is how long a caller waits after a failed operation, so
	// a target that refuses everything is not spun against at full speed.
	benchErrPause = 10 * time.Millisecond
)

// gapReport is the shortest stretch without a successful operation that
// bench reports: failovers and stalls show up there.
const gapReport = 100 * time.Millisecond

// benchConfig is what the flags of bench say.
type benchConfig struct {
	target      string // HOST:PORT[,HOST:PORT…] or redis://HOST:PORT
	op          string // save, restore, mixed or load
	protocol    string // native or kado (kadosession targets)
	clients     int
	size        int
	sessions    int
	duration    time.Duration
	ttl         time.Duration // Redis PX expiry
	readPct     int           // --op mixed: percent of restores
	pool        int           // Go client connections per node (0: default)
	conns       int           // Redis: shared pipelined connections (0: one per client)
	pin         bool          // kadosession: never follow leader hints
	consistency string
	readFrom    string // kadosession, Go client: leader or follower (client.Config.Reads)
	asJSON      bool
	quiet       bool
	rate        float64 // total operations per second to pace at (0: as fast as answered)
	samples     string  // file to write one line per successful operation to ("": none)
}

// benchWorker is one caller's handle on the target. A worker is used by one
// goroutine at a time.
type benchWorker interface {
	save(ctx context.Context, sid string, data []byte) error
	restore(ctx context.Context, sid string) error
	close()
}

// benchTarget makes workers and fills the target with the sessions that
// restores read.
type benchTarget interface {
	worker() benchWorker
	prepare(ctx context.Context, sids []string, data []byte) error
	close()
}

// bench drives load at a kadosession node or a Redis server and prints
// throughput and latency.
func bench(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	res, err := runBench(cfg, stderr)
	if err != nil {
		return err
	}
	if cfg.asJSON {
		if err := json.NewEncoder(stdout).Encode(res); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "%s %s against %s (%s), %d clients, %d B: %.0f ops/s, p50 %.3f ms, p99 %.3f ms, max %.3f ms, %d ops, %d errors\n",
			res.Op, res.Protocol, res.Target, res.Kind, res.Clients, res.Size, res.OpsPerSec, res.P50, res.P99, res.Max, res.Ops, res.Errors)
		if len(res.Gaps) > 0 {
			fmt.Fprintf(stdout, "stretches with no success (ms): %.0f\n", res.Gaps)
		}
		if res.FirstError != "" {
			fmt.Fprintf(stdout, "first error: %s\n", res.FirstError)
		}
	}
	if res.Ops == 0 && res.Errors > 0 {
		// A run with errors and nothing else measured nothing: scripts
		// must not take its figures for a store's.
		return fmt.Errorf("every request failed (%d errors; the first: %s)", res.Errors, res.FirstError)
	}
	return nil
}

func parseBenchFlags(args []string, stderr io.Writer) (benchConfig, error) {
	var cfg benchConfig
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.target, "target", "127.0.0.1:3001", "what to drive: `HOST:PORT[,HOST:PORT…]` of kadosession nodes (the Go client), or redis://HOST:PORT")
	cluster := fs.String("cluster", "", "alias of --target for kadosession nodes (kept for scripts)")
	fs.StringVar(&cfg.op, "op", "save", "operation: save, restore, mixed (restores and saves of the same sessions, see --reads) or load (save every one of --sessions exactly once, then stop; --duration is the cap)")
	fs.StringVar(&cfg.protocol, "protocol", "native", "kadosession targets: native (the Go client) or kado (one JSON request per connection, as Kado's SessionStoreLocal)")
	fs.IntVar(&cfg.clients, "clients", 64, "concurrent clients, each with one request in flight (Redis: one connection each)")
	callers := fs.Int("callers", 0, "alias of --clients (kept for scripts)")
	fs.IntVar(&cfg.size, "size", 1024, "session size in bytes (the JSON object saved, or the Redis value)")
	fs.DurationVar(&cfg.duration, "duration", 5*time.Second, "how long to run (at most 10m)")
	fs.IntVar(&cfg.sessions, "sessions", 10000, "distinct sessions (keys) to spread the load over; restores read sessions written beforehand")
	fs.DurationVar(&cfg.ttl, "ttl", 6*time.Hour, "Redis targets: expiry sent with every SET (PX), like a session's duration")
	fs.IntVar(&cfg.readPct, "reads", 50, "--op mixed: percent of operations that are restores (0..100)")
	fs.IntVar(&cfg.conns, "conns", 0, "Redis targets: 0 = one connection per client with one request in flight (redis-benchmark's way); N = N connections shared by all clients, pipelined (the Go client's way: it pools 4 connections per node)")
	fs.IntVar(&cfg.pool, "pool", 0, "kadosession targets: connections per node of the Go client (0: the client's default)")
	fs.BoolVar(&cfg.pin, "pin", false, "kadosession targets: send every request to the first address and never follow leader hints (measures a follower's forwarding)")
	fs.StringVar(&cfg.consistency, "consistency", "default", "kadosession restores: default (the node's), linearizable, leader or stale")
	fs.StringVar(&cfg.readFrom, "read-from", "leader", "kadosession restores through the Go client: leader, or follower (client.ReadFollower: give every node's address)")
	fs.BoolVar(&cfg.asJSON, "json", false, "print one JSON object on stdout")
	fs.BoolVar(&cfg.quiet, "quiet", false, "no progress lines on stderr")
	fs.Float64Var(&cfg.rate, "rate", 0, "pace the clients to this many operations per second in total (0: each client sends its next request as soon as the last is answered); a moderate, fixed load for latency under background work")
	fs.StringVar(&cfg.samples, "samples", "", "write one line per successful operation to `FILE`: the unix time it ended (ns) and its latency (µs), for latency over time")
	fs.Usage = usageWithEnv(fs, "kadosession bench [flags]",
		"Measures saves or restores per second, with latency percentiles, against a kadosession node or a Redis server\n(SET key value PX ttl / GET key), with the same load generator. Progress goes to stderr once a second.")
	if err := parseFlags(fs, args); err != nil {
		return cfg, err
	}
	given := setFlags(fs)
	if given["cluster"] {
		if given["target"] && cfg.target != *cluster {
			return cfg, fmt.Errorf("--cluster %q and --target %q disagree: give one (--cluster is an alias of --target)", *cluster, cfg.target)
		}
		cfg.target = *cluster
	}
	if given["callers"] {
		if given["clients"] && cfg.clients != *callers {
			return cfg, fmt.Errorf("--callers %d and --clients %d disagree: give one (--callers is an alias of --clients)", *callers, cfg.clients)
		}
		cfg.clients = *callers
	}
	return cfg, cfg.validate()
}

func (c *benchConfig) validate() error {
	switch {
	case c.op != "save" && c.op != "restore" && c.op != "mixed" && c.op != "load":
		return fmt.Errorf("--op %q: want save, restore, mixed or load", c.op)
	case c.protocol != "native" && c.protocol != "kado":
		return fmt.Errorf("--protocol %q: want native or kado", c.protocol)
	case c.clients < 1 || c.clients > benchMaxClients:
		return fmt.Errorf("--clients %d is out of range: 1..%d", c.clients, benchMaxClients)
	case c.size < benchMinSize || c.size > benchMaxSize:
		return fmt.Errorf("--size %d is out of range: %d..%d bytes", c.size, benchMinSize, benchMaxSize)
	case c.sessions < 1 || c.sessions > benchMaxSessions:
		return fmt.Errorf("--sessions %d is out of range: 1..%d", c.sessions, benchMaxSessions)
	case c.duration <= 0 || c.duration > benchMaxDuration:
		return fmt.Errorf("--duration %s is out of range: more than 0, at most %s", c.duration, benchMaxDuration)
	case c.ttl < time.Millisecond || c.ttl > benchMaxTTL:
		return fmt.Errorf("--ttl %s is out of range: 1ms..%s", c.ttl, benchMaxTTL)
	case c.readPct < 0 || c.readPct > 100:
		return fmt.Errorf("--reads %d is out of range: 0..100 (percent)", c.readPct)
	case c.pool < 0 || c.pool > benchMaxPool:
		return fmt.Errorf("--pool %d is out of range: 0..%d", c.pool, benchMaxPool)
	case c.conns < 0 || c.conns > benchMaxPool:
		return fmt.Errorf("--conns %d is out of range: 0..%d", c.conns, benchMaxPool)
	case c.rate < 0 || c.rate > 10_000_000 || math.IsNaN(c.rate):
		return fmt.Errorf("--rate %g is out of range: 0..10000000 operations per second", c.rate)
	case strings.TrimSpace(c.target) == "":
		return errors.New("--target is empty: give HOST:PORT[,HOST:PORT…] or redis://HOST:PORT")
	}
	if _, err := parseConsistency(c.consistency); err != nil {
		return err
	}
	if isRedisTarget(c.target) {
		if _, err := parseRedisTarget(c.target); err != nil {
			return err
		}
		if c.protocol != "native" || c.pin || c.pool != 0 || c.consistency != "default" || c.readFrom != "leader" {
			return errors.New("--protocol, --pin, --pool, --consistency and --read-from apply to kadosession targets, not Redis")
		}
		return nil
	}
	switch {
	case c.readFrom != "leader" && c.readFrom != "follower":
		return fmt.Errorf("--read-from %q: want leader or follower", c.readFrom)
	case c.readFrom == "follower" && (c.pin || c.protocol != "native"):
		return errors.New("--read-from applies to the Go client: not with --pin or --protocol kado")
	}
	if c.conns != 0 {
		return errors.New("--conns applies to Redis targets (kadosession targets: --pool)")
	}
	for _, a := range strings.Split(c.target, ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(a))
		if err != nil || host == "" {
			return fmt.Errorf("--target: %q is not HOST:PORT (nor redis://HOST:PORT)", a)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("--target: %q has no valid port (1..65535)", a)
		}
	}
	return nil
}

func parseConsistency(s string) (transport.Consistency, error) {
	switch s {
	case "default", "":
		return transport.Default, nil
	case "linearizable":
		return transport.Linearizable, nil
	case "leader":
		return transport.Leader, nil
	case "stale":
		return transport.Stale, nil
	}
	return 0, fmt.Errorf("--consistency %q: want default, linearizable, leader or stale", s)
}

// benchResult is the JSON object bench prints.
type benchResult struct {
	Target      string    `json:"target"`
	Kind        string    `json:"kind"` // kadosession or redis
	Op          string    `json:"op"`
	Protocol    string    `json:"protocol"`
	Clients     int       `json:"clients"`
	Size        int       `json:"size"`
	Sessions    int       `json:"sessions"`
	Pinned      bool      `json:"pinned,omitempty"`
	Conns       int       `json:"conns,omitempty"` // Redis: shared pipelined connections
	Consistency string    `json:"consistency,omitempty"`
	ReadFrom    string    `json:"read_from,omitempty"` // kadosession: follower when --read-from follower
	Ops         int64     `json:"ops"`
	Saves       int64     `json:"saves"`
	Restores    int64     `json:"restores"`
	Errors      int64     `json:"errors"`
	Seconds     float64   `json:"seconds"`
	OpsPerSec   float64   `json:"ops_per_sec"`
	P50         float64   `json:"p50_ms"`
	P90         float64   `json:"p90_ms"`
	P99         float64   `json:"p99_ms"`
	P999        float64   `json:"p999_ms"`
	Max         float64   `json:"max_ms"`
	Gaps        []float64 `json:"gaps_ms"` // every stretch over gapReport with no success, in order
	FirstError  string    `json:"first_error,omitempty"`
	Rate        float64   `json:"rate,omitempty"`       // --rate: the paced total rate asked for
	Incomplete  bool      `json:"incomplete,omitempty"` // --op load: time ran out before every session was written
}

func runBench(cfg benchConfig, stderr io.Writer) (*benchResult, error) {
	var (
		tgt  benchTarget
		kind = "kadosession"
		err  error
	)
	if isRedisTarget(cfg.target) {
		kind = "redis"
		tgt, err = newRedisTarget(cfg)
	} else {
		tgt, err = newNodeTarget(cfg)
	}
	if err != nil {
		return nil, err
	}
	defer tgt.close()

	data := []byte(`{"pad":"` + strings.Repeat("x", cfg.size-10) + `"}`) // exactly cfg.size bytes
	sids := make([]string, cfg.sessions)
	for i := range sids {
		sids[i] = "bench-" + strconv.Itoa(i)
	}
	if cfg.op != "save" && cfg.op != "load" { // something to read
		if !cfg.quiet {
			fmt.Fprintf(stderr, "bench: writing %d sessions of %d B to read back\n", len(sids), cfg.size)
		}
		pctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err := tgt.prepare(pctx, sids, data)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("preparing sessions on %s: %w", cfg.target, err)
		}
	}

	var (
		lastOK          atomic.Int64 // unix ns of the latest success, for gaps
		gapMu           sync.Mutex
		gaps            = []float64{}
		ops, errs       atomic.Int64
		saves, restores atomic.Int64
		firstErr        atomic.Value
		hists           = make([]latencyHist, cfg.clients)
		samples         = make([][]opSample, cfg.clients)
		nextLoad        atomic.Int64 // --op load: the next session to write
		wg              sync.WaitGroup
	)
	// --rate: every client sends on its own fixed schedule, one request
	// every interval, staggered across clients.
	var interval time.Duration
	if cfg.rate > 0 {
		interval = time.Duration(float64(cfg.clients) / cfg.rate * float64(time.Second))
	}
	// SIGINT or SIGTERM ends the run early, like --duration running out:
	// the figures so far are printed (scripts stop a run when what they
	// waited for has happened).
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithTimeout(sigCtx, cfg.duration)
	defer cancel()
	start := time.Now()
	lastOK.Store(start.UnixNano())
	progressDone := make(chan struct{})
	if !cfg.quiet {
		go benchProgress(ctx, stderr, cfg, start, &ops, &errs, progressDone)
	} else {
		close(progressDone)
	}
	for g := 0; g < cfg.clients; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := tgt.worker()
			defer w.close()
			h := &hists[g]
			// Each client walks the sessions from its own offset, so
			// clients rarely touch the same session at once.
			i := g * (len(sids) / cfg.clients)
			sched := start.Add(interval * time.Duration(g) / time.Duration(cfg.clients))
			retry := -1 // --op load: a session whose save failed, to write again
			for n := 0; ctx.Err() == nil; n++ {
				var sid string
				if cfg.op == "load" {
					k := retry
					if k < 0 {
						k = int(nextLoad.Add(1) - 1)
					}
					if k >= len(sids) {
						break
					}
					retry, i, sid = -1, k, sids[k]
				} else {
					sid = sids[i%len(sids)]
					i++
				}
				// mixed: exactly readPct restores in every 100 operations,
				// spread evenly.
				read := cfg.op == "restore" || (cfg.op == "mixed" && ((n+1)*cfg.readPct)/100 > (n*cfg.readPct)/100)
				t0 := time.Now()
				if interval > 0 {
					// Latency counts from when the request was due, not
					// from when it was sent: a stall delays the requests
					// queued behind it, and they count it too (no
					// coordinated omission).
					if d := time.Until(sched); d > 0 {
						if !sleepCtx(ctx, d) {
							break
						}
					}
					t0 = sched
					sched = sched.Add(interval)
				}
				var err error
				if read {
					err = w.restore(context.Background(), sid)
				} else {
					err = w.save(context.Background(), sid, data)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					if cfg.op == "load" {
						retry = i
					}
					time.Sleep(benchErrPause)
					continue
				}
				now := time.Now()
				if cfg.samples != "" {
					samples[g] = append(samples[g], opSample{end: now.UnixNano(), lat: int64(now.Sub(t0) / time.Microsecond)})
				}
				ops.Add(1)
				if read {
					restores.Add(1)
				} else {
					saves.Add(1)
				}
				h.record(now.Sub(t0))
				if prev := lastOK.Swap(now.UnixNano()); now.UnixNano()-prev > int64(gapReport) {
					gapMu.Lock()
					gaps = append(gaps, float64(now.UnixNano()-prev)/1e6)
					gapMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cancel()
	<-progressDone
	var all latencyHist
	for i := range hists {
		all.merge(&hists[i])
	}
	res := &benchResult{
		Target: cfg.target, Kind: kind, Op: cfg.op, Protocol: cfg.protocol, Clients: cfg.clients,
		Size: cfg.size, Sessions: cfg.sessions, Ops: ops.Load(), Saves: saves.Load(), Restores: restores.Load(),
		Errors: errs.Load(), Seconds: round3(elapsed.Seconds()),
		OpsPerSec: math.Round(float64(ops.Load()) / elapsed.Seconds()),
		P50:       all.quantileMS(0.50), P90: all.quantileMS(0.90), P99: all.quantileMS(0.99),
		P999: all.quantileMS(0.999), Max: round3(float64(all.max) / 1e6), Gaps: gaps,
	}
	if kind == "redis" {
		res.Protocol = "resp"
		res.Conns = cfg.conns
	} else {
		res.Pinned = cfg.pin
		res.Consistency = cfg.consistency
		if cfg.readFrom == "follower" {
			res.ReadFrom = cfg.readFrom
		}
	}
	if e := firstErr.Load(); e != nil {
		res.FirstError = e.(string)
	}
	if cfg.op == "load" && res.Saves < int64(len(sids)) {
		res.Incomplete = true
	}
	res.Rate = cfg.rate
	if cfg.samples != "" {
		if err := writeSamples(cfg.samples, samples); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// opSample is one successful operation: when it ended (unix ns) and how
// long it took (µs).
type opSample struct{ end, lat int64 }

// writeSamples writes every client's samples as "END_NS LATENCY_US" lines,
// in the order each client made them.
func writeSamples(path string, samples [][]opSample) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--samples: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<16)
	var b []byte
	for _, ss := range samples {
		for _, x := range ss {
			b = strconv.AppendInt(b[:0], x.end, 10)
			b = append(b, ' ')
			b = strconv.AppendInt(b, x.lat, 10)
			b = append(b, '\n')
			if _, err := w.Write(b); err != nil {
				f.Close()
				return fmt.Errorf("--samples: %w", err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("--samples: %w", err)
	}
	return f.Close()
}

// sleepCtx sleeps for d or until ctx ends; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// benchProgress prints the operations so far and the rate once a second
// until ctx ends, then closes done.
func benchProgress(ctx context.Context, w io.Writer, cfg benchConfig, start time.Time, ops, errs *atomic.Int64, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last, lastAt := int64(0), start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n := ops.Load()
			fmt.Fprintf(w, "bench %s %s c=%d: %4.0fs %9d ops, %8.0f/s (avg %.0f/s), %d errors\n",
				cfg.target, cfg.op, cfg.clients, now.Sub(start).Seconds(), n,
				float64(n-last)/now.Sub(lastAt).Seconds(), float64(n)/now.Sub(start).Seconds(), errs.Load())
			last, lastAt = n, now
		}
	}
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// latencyHist is a log-linear histogram of durations in nanoseconds: exact
// below 128 ns, then 64 buckets per power of two (under 1.6% error), so
// percentiles cost no memory per operation however long the run.
type latencyHist struct {
	counts [histBuckets]uint64
	n      uint64
	max    uint64
}

const histBuckets = 64 * 48 // up to 2^47 ns, ~39 hours

func histIndex(v uint64) int {
	if v < 128 {
		return int(v)
	}
	e := bits.Len64(v) - 7
	return min((e+1)*64+int((v>>e)&63), histBuckets-1)
}

// histValue is the middle of bucket i.
func histValue(i int) uint64 {
	if i < 128 {
		return uint64(i)
	}
	e := i/64 - 1
	m := uint64(64 + i%64)
	return m<<e + (uint64(1)<<e)/2
}

func (h *latencyHist) record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[histIndex(v)]++
	h.n++
	h.max = max(h.max, v)
}

func (h *latencyHist) merge(o *latencyHist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantileMS is the q-quantile in milliseconds (0 with no samples).
func (h *latencyHist) quantileMS(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return round3(float64(min(histValue(i), h.max)) / 1e6)
		}
	}
	return round3(float64(h.max) / 1e6)
}

// nodeTarget drives kadosession nodes: through the Go client, through one
// pinned pool of native connections, or with Kado JSON requests.
type nodeTarget struct {
	cfg         benchConfig
	addrs       []string
	store       *client.Store
	pinned      *transport.Pool
	consistency transport.Consistency
}

func newNodeTarget(cfg benchConfig) (*nodeTarget, error) {
	t := &nodeTarget{cfg: cfg}
	for _, a := range strings.Split(cfg.target, ",") {
		t.addrs = append(t.addrs, strings.TrimSpace(a))
	}
	t.consistency, _ = parseConsistency(cfg.consistency)
	var err error
	// The Go client also prepares the sessions restores read.
	ccfg := client.Config{Addrs: t.addrs, PoolSize: cfg.pool, Consistency: t.consistency}
	if cfg.readFrom == "follower" {
		ccfg.Reads = client.ReadFollower
	}
	t.store, err = client.New(ccfg)
	if err != nil {
		return nil, err
	}
	if cfg.pin && cfg.protocol == "native" {
		t.pinned = transport.NewPool(t.addrs[0], max(cfg.pool, client.DefaultPoolSize), transport.ConnConfig{})
	}
	return t, nil
}

func (t *nodeTarget) close() {
	if t.pinned != nil {
		t.pinned.Close()
	}
	t.store.Close()
}

func (t *nodeTarget) prepare(ctx context.Context, sids []string, data []byte) error {
	return parallelPrepare(ctx, sids, 64, func(sid string) error { return t.store.SaveRaw(ctx, sid, data) })
}

// parallelPrepare calls save for every sid from n goroutines and returns
// the first error.
func parallelPrepare(ctx context.Context, sids []string, n int, save func(sid string) error) error {
	var (
		next     atomic.Int64
		firstErr error
		mu       sync.Mutex
		wg       sync.WaitGroup
	)
	for range min(n, len(sids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(sids) || ctx.Err() != nil {
					return
				}
				if err := save(sids[i]); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					next.Store(int64(len(sids)))
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

func (t *nodeTarget) worker() benchWorker {
	switch {
	case t.cfg.protocol == "kado":
		return &kadoWorker{addr: t.addrs[0]}
	case t.pinned != nil:
		return &pinnedWorker{pool: t.pinned, consistency: t.consistency}
	}
	return &clientWorker{store: t.store}
}

// clientWorker uses the Go client, as an application would.
type clientWorker struct{ store *client.Store }

func (w *clientWorker) save(ctx context.Context, sid string, data []byte) error {
	return w.store.SaveRaw(ctx, sid, data)
}

func (w *clientWorker) restore(ctx context.Context, sid string) error {
	_, found, err := w.store.RestoreRaw(ctx, sid)
	if err == nil && !found {
		err = fmt.Errorf("restore %s: not found (it was written before the run)", sid)
	}
	return err
}

func (w *clientWorker) close() {}

// pinnedWorker sends native requests to one node only, whatever it says
// about the leader: a follower must forward.
type pinnedWorker struct {
	pool        *transport.Pool
	consistency transport.Consistency
	req         transport.Request
}

func (w *pinnedWorker) roundTrip(ctx context.Context) (transport.Response, error) {
	deadline := time.Now().Add(benchOpTimeout)
	conn, err := w.pool.GetDeadline(ctx, deadline)
	if err != nil {
		return transport.Response{}, err
	}
	resp, err := conn.RoundTripDeadline(ctx, deadline, &w.req)
	if err == nil && resp.Err != nil {
		err = resp.Err
	}
	return resp, err
}

func (w *pinnedWorker) save(ctx context.Context, sid string, data []byte) error {
	w.req = transport.Request{Op: transport.OpSave, SID: sid, Data: data}
	_, err := w.roundTrip(ctx)
	return err
}

func (w *pinnedWorker) restore(ctx context.Context, sid string) error {
	w.req = transport.Request{Op: transport.OpRestore, SID: sid, Consistency: w.consistency}
	resp, err := w.roundTrip(ctx)
	if err == nil && !resp.Found {
		err = fmt.Errorf("restore %s: not found (it was written before the run)", sid)
	}
	return err
}

func (w *pinnedWorker) close() {}

// kadoWorker makes one Kado JSON request per connection, as Kado's
// SessionStoreLocal does.
type kadoWorker struct{ addr string }

func (w *kadoWorker) save(_ context.Context, sid string, data []byte) error {
	return kadoCall(w.addr, fmt.Sprintf(`{"save":{"sid":%q,"data":%s}}`, sid, data))
}

func (w *kadoWorker) restore(_ context.Context, sid string) error {
	return kadoCall(w.addr, fmt.Sprintf(`{"restore":{"sid":%q}}`, sid))
}

func (w *kadoWorker) close() {}

// kadoCall makes one Kado JSON request and checks the reply is ok.
func kadoCall(addr, req string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(b), `{"status":"ok"`) {
		return fmt.Errorf("node answered %s", b)
	}
	return nil
}
