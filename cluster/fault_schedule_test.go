package cluster

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/faultkit"
)

var (
	faultSeed      = flag.Int64("faultseed", 0, "fault tests: replay this one schedule seed (also KADOSESSION_FAULTSEED)")
	faultSchedules = flag.Int("faultschedules", 0, "fault tests: how many seeded schedules (default 20; 5 under -race; 3 with -short)")
)

// faultScheduleLength is how long faults are injected per schedule (the
// workload runs throughout).
const faultScheduleLength = 3 * time.Second

// faultWatchdog bounds one schedule, checks included.
const faultWatchdog = 2 * time.Minute

// TestFaultSchedules runs seeded random fault schedules against a 3-node
// in-process cluster under a concurrent workload, then heals and checks:
// no acknowledged write lost, every session's history linearizable
// (porcupine), every replica identical. A failure prints its seed; replay
// it with -faultseed N.
func TestFaultSchedules(t *testing.T) {
	seeds := faultSeeds(t)
	var mu sync.Mutex
	var total faultTotals
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			res := runFaultSchedule(t, seed)
			mu.Lock()
			total.add(res)
			mu.Unlock()
			if t.Failed() {
				t.Errorf("replay with: go test ./cluster -run 'TestFaultSchedules' -faultseed=%d -v", seed)
			}
		})
	}
	t.Logf("schedules: %d, acknowledged writes: %d, lost: %d, linearizability violations: %d (pending writes %d, ops %d, checker timeouts %d); Leader/Stale reads: %d, went backwards: %d (+%d excused: across a restart of a pinned Stale reader's node)",
		total.schedules, total.acked, total.lost, total.violations, total.pending, total.ops, total.unknown, total.monoReads, total.monoViolations, total.monoExcused)
}

type faultTotals struct {
	schedules, acked, lost, violations, pending, ops, unknown int
	monoReads, monoViolations, monoExcused                    int
}

func (f *faultTotals) add(r faultkit.Result) {
	f.schedules++
	f.acked += r.Acked
	f.lost += r.Lost
	f.violations += r.Violations
	f.pending += r.Pending
	f.ops += r.Ops
	f.unknown += r.Unknown
	f.monoReads += r.MonoReads
	f.monoViolations += r.MonoViolations
	f.monoExcused += r.MonoExcused
}

// faultSeeds is -faultseed (or KADOSESSION_FAULTSEED) alone, or
// -faultschedules seeds from a base that changes every run: each run
// explores new schedules, and a failing one names its seed.
func faultSeeds(t *testing.T) []int64 {
	if *faultSeed != 0 {
		return []int64{*faultSeed}
	}
	if s := os.Getenv("KADOSESSION_FAULTSEED"); s != "" {
		seed, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("KADOSESSION_FAULTSEED=%q: %v", s, err)
		}
		return []int64{seed}
	}
	n := 20
	switch {
	case *faultSchedules > 0:
		n = *faultSchedules
	case testing.Short():
		n = 3
	case raceEnabled:
		n = 5
	}
	base := time.Now().UnixNano()%1_000_000*1000 + 1
	seeds := make([]int64, n)
	for i := range seeds {
		seeds[i] = base + int64(i)
	}
	return seeds
}

// faultReads is the consistency of the workload's Go reads: the default,
// unless KADOSESSION_FAULT_READS=stale or leader asks for a weaker one to
// show that the checker catches what those allow (expect violations).
func faultReads(t *testing.T) client.Consistency {
	switch v := os.Getenv("KADOSESSION_FAULT_READS"); v {
	case "":
		return client.Default
	case "stale":
		return client.Stale
	case "leader":
		return client.Leader
	default:
		t.Fatalf("KADOSESSION_FAULT_READS=%q: want stale or leader", v)
		return 0
	}
}

// faultRun is one schedule: the cluster, its network and the workload.
type faultRun struct {
	t       *testing.T
	seed    int64
	tc      *testCluster
	net     *faultNet
	wl      *faultkit.Workload
	clients []int // the clients' "from" indexes in net
	joined  bool  // the 4th node was added (and removed) already
	log     []string
	start   time.Time
}

func (r *faultRun) logf(format string, args ...any) {
	line := fmt.Sprintf("%6.3fs ", time.Since(r.start).Seconds()) + fmt.Sprintf(format, args...)
	r.log = append(r.log, line)
	if testing.Verbose() {
		r.t.Log(line)
	}
}

func runFaultSchedule(t *testing.T, seed int64) faultkit.Result {
	// A hang (a node that never stops, a poll without end) must not eat the
	// whole go test timeout: dump every goroutine and die naming the seed.
	watchdog := time.AfterFunc(faultWatchdog, func() {
		buf := make([]byte, 8<<20)
		os.Stderr.Write(buf[:runtime.Stack(buf, true)])
		panic(fmt.Sprintf("fault schedule seed %d still running after %s; replay with -faultseed=%d", seed, faultWatchdog, seed))
	})
	// Stopped by a cleanup registered before the cluster's own: the
	// watchdog also covers the cluster's shutdown (a raft.Shutdown that
	// never returns was seen once).
	t.Cleanup(func() { watchdog.Stop() })
	fn := newFaultNet(seed)
	tc := newTestCluster(t, 3, func(c *Config) {
		i, _ := strconv.Atoi(strings.TrimPrefix(c.ID, "n"))
		c.Dialer = fn.dialer(i - 1)
		// The workload's clients give up after 1 s; a request the network
		// lost (a drop fault loses bytes) is given up here within 2 s, not
		// the default 10, so the cluster goes quiet soon after the
		// workload stops (waitQuiet).
		c.Server.RequestTimeout = 2 * time.Second
	})
	var addrs []string
	for i, n := range tc.nodes {
		fn.register(n.Addr(), i)
		addrs = append(addrs, n.Addr())
	}
	r := &faultRun{t: t, seed: seed, tc: tc, net: fn, start: time.Now()}

	// Three Go clients, each starting at a different node (the last sends
	// its reads to a follower: client.ReadFollower), and one Kado JSON
	// client picking a node per request; all dial through fn.
	rec := faultkit.NewRecorder()
	wl := &faultkit.Workload{SIDs: []string{"s0", "s1", "s2"}, Seed: seed, Rec: rec, KadoAddrs: addrs}
	r.wl = wl
	for k := 0; k < 3; k++ {
		r.clients = append(r.clients, clientBase+k)
		order := append(append([]string(nil), addrs[k:]...), addrs[:k]...)
		cfg := client.Config{Addrs: order, Dialer: fn.dialer(clientBase + k), RequestTimeout: time.Second, Consistency: faultReads(t)}
		if k == 2 {
			cfg.Reads = client.ReadFollower
		}
		s, err := client.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		wl.Stores = append(wl.Stores, s)
	}
	kado := fn.dialer(clientBase + 3)
	r.clients = append(r.clients, clientBase+3)
	wl.KadoDials = append(wl.KadoDials, func(ctx context.Context, addr string) (net.Conn, error) {
		return kado(ctx, "tcp", addr)
	})
	// Two Go clients write each a grow-only "mono" session; two more read
	// them: one with Leader reads (every node, starting at one the seed
	// picks), one with Stale reads pinned to one node (a Stale client that
	// fails over to a follower further behind may legitimately go back).
	wl.Mono = 2
	k := int(uint64(seed) % 3)
	for _, m := range []struct {
		name, node string
		addrs      []string
		c          client.Consistency
	}{
		{"leader", "", append(append([]string(nil), addrs[k:]...), addrs[:k]...), client.Leader},
		{fmt.Sprintf("stale@n%d", k+1), addrs[k], []string{addrs[k]}, client.Stale},
	} {
		from := clientBase + 4 + len(wl.MonoReaders)
		r.clients = append(r.clients, from)
		s, err := client.New(client.Config{Addrs: m.addrs, Dialer: fn.dialer(from), RequestTimeout: time.Second, Consistency: m.c})
		if err != nil {
			t.Fatal(err)
		}
		wl.MonoReaders = append(wl.MonoReaders, faultkit.MonoReader{Name: m.name, Node: m.node, Store: s})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		wl.Run(ctx)
	}()
	stopWorkload := func() {
		cancel()
		<-done
	}
	t.Cleanup(func() { // runs before the cluster's own cleanup
		fn.healAll()
		stopWorkload()
		for _, s := range wl.Stores {
			s.Close()
		}
		for _, m := range wl.MonoReaders {
			m.Store.Close()
		}
		fn.closeAll()
	})

	for time.Since(r.start) < faultScheduleLength {
		r.step()
	}

	// Heal: no fault, every node running, the 4th node gone.
	fn.healAll()
	for i := 0; i < 3; i++ {
		if tc.nodes[i] == nil {
			r.logf("restart n%d", i+1)
			wl.Restarting(tc.cfgs[i].Listen)
			tc.start(i)
		}
	}
	time.Sleep(300 * time.Millisecond) // the workload runs on the healed cluster a moment
	stopWorkload()
	tc.waitMembers(3)
	hash := tc.waitQuiet()
	r.logf("healed: replicas identical (%s)", hash[:12])

	final, err := client.New(client.Config{Addrs: addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer final.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer fcancel()
	if err := faultkit.FinalReads(fctx, final, wl.AllSIDs(), rec, 4); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if h := tc.waitQuiet(); h != hash {
		t.Errorf("seed %d: state changed after the workload stopped: %s then %s", seed, hash, h)
	}

	dir := filepath.Join(os.TempDir(), fmt.Sprintf("kadosession-fault-%d", seed))
	ops := rec.Ops()
	res := faultkit.Check(ops, 20*time.Second, dir)
	restarts := wl.Restarts()
	if os.Getenv("KADOSESSION_FAULT_STRICT_STALE") != "" {
		restarts = nil // a Stale read going back across a restart fails too
	}
	res.CheckMonotonic(wl.MonoReads(), ops, restarts)
	t.Logf("seed %d: %d ops (%d acknowledged writes, %d pending, %d failed reads), lost %d, violations %d, checker timeouts %d; Leader/Stale reads %d (%d failed), went backwards %d (+%d across a restart of a pinned Stale reader's node); took %s",
		seed, res.Ops, res.Acked, res.Pending, wl.Failed, res.Lost, res.Violations, res.Unknown, res.MonoReads, wl.MonoFailed, res.MonoViolations, res.MonoExcused, time.Since(r.start).Round(time.Millisecond))
	if res.MonoExcused > 0 && !res.Failed() {
		for _, d := range res.Details {
			t.Logf("seed %d: %s", seed, d)
		}
	}
	if res.Failed() {
		t.Errorf("seed %d: schedule:\n  %s", seed, strings.Join(r.log, "\n  "))
		for _, d := range res.Details {
			t.Errorf("seed %d: %s", seed, d)
		}
	}
	return res
}

// running lists the indexes of the running nodes.
func (r *faultRun) running() []int {
	var out []int
	for i, n := range r.tc.nodes {
		if n != nil {
			out = append(out, i)
		}
	}
	return out
}

// between sleeps a random time in [lo, hi).
func (r *faultRun) between(lo, hi time.Duration) time.Duration {
	d := lo + time.Duration(r.net.intn(int(hi-lo)/int(time.Millisecond)))*time.Millisecond
	time.Sleep(d)
	return d
}

// pick returns the leader (when leader) or a running follower.
func (r *faultRun) pick(leader bool) int {
	l := r.tc.leader()
	if leader {
		return l
	}
	var fs []int
	for _, i := range r.running() {
		if i != l {
			fs = append(fs, i)
		}
	}
	return fs[r.net.intn(len(fs))]
}

// step runs one random fault and heals it.
func (r *faultRun) step() {
	fn := r.net
	nodes := r.running()
	mode := []fault{faultRefuse, faultDrop}[fn.intn(2)]
	switch k := fn.intn(8); k {
	case 0, 1: // partition the leader from the majority (clients still reach it)
		l := r.pick(true)
		fn.isolate(l, nodes, nil, mode)
		r.logf("partition leader n%d from the others (%s)", l+1, mode)
		r.logf("  healed after %s", r.between(400*time.Millisecond, 1200*time.Millisecond))
	case 2: // isolate a follower
		f := r.pick(false)
		fn.isolate(f, nodes, nil, mode)
		r.logf("isolate follower n%d (%s)", f+1, mode)
		r.logf("  healed after %s", r.between(300*time.Millisecond, 900*time.Millisecond))
	case 3: // flapping link
		a := nodes[fn.intn(len(nodes))]
		b := nodes[(1+fn.intn(len(nodes)-1)+indexOf(nodes, a))%len(nodes)]
		flips := 3 + fn.intn(4)
		r.logf("flap n%d<->n%d %d times (%s)", a+1, b+1, flips, mode)
		for i := 0; i < flips; i++ {
			fn.cut(a, b, mode)
			r.between(50*time.Millisecond, 250*time.Millisecond)
			fn.cut(a, b, faultNone)
			r.between(20*time.Millisecond, 120*time.Millisecond)
		}
	case 4: // kill -9 and restart the leader or a follower
		i := r.pick(fn.intn(2) == 0)
		role := "follower"
		if r.tc.nodes[i].raft.State() == raft.Leader {
			role = "leader"
		}
		r.crash(i)
		r.logf("crash %s n%d", role, i+1)
		d := r.between(200*time.Millisecond, 900*time.Millisecond)
		r.wl.Restarting(r.tc.cfgs[i].Listen)
		r.tc.start(i)
		r.logf("  restarted after %s", d)
	case 5: // pause: cut off completely, in-flight traffic held, longer than the election timeout
		p := r.pick(fn.intn(3) != 0)
		fn.isolate(p, nodes, r.clients, faultHold)
		r.logf("pause n%d (was %s)", p+1, stateName(r.tc.nodes[p].raft.State()))
		r.logf("  resumed after %s", r.between(500*time.Millisecond, 1200*time.Millisecond))
	case 6: // slow links
		n := 1 + fn.intn(3)
		for i := 0; i < n; i++ {
			a, b := nodes[fn.intn(len(nodes))], nodes[fn.intn(len(nodes))]
			if a == b {
				continue
			}
			d := time.Duration(10+fn.intn(90)) * time.Millisecond
			fn.delay(link{a, b}, d)
			r.logf("delay n%d->n%d by %s", a+1, b+1, d)
		}
		r.logf("  undelayed after %s", r.between(400*time.Millisecond, 1000*time.Millisecond))
	case 7: // add a 4th member, then remove it
		if r.joined || len(nodes) < 3 {
			r.logf("(membership change skipped)")
			return
		}
		r.joined = true
		r.addRemove()
	}
	fn.healAll()
	r.between(100*time.Millisecond, 300*time.Millisecond)
}

// crash is tc.crash with a bounded wait for the committer: raft.Shutdown
// runs first there, and with BatchApplyCh an Apply future still sitting in
// raft's buffered apply channel at shutdown is never answered (its
// ShutdownCh is nil), so committer.close, waiting for it, can hang forever
// (seen once in ~15 schedules). The schedule goes on (the stuck goroutine
// holds nothing else) and the event is logged.
func (r *faultRun) crash(i int) {
	tc := r.tc
	n := tc.nodes[i]
	tc.nodes[i] = nil
	close(n.stop)
	n.server.Close()
	n.stream.Close()
	n.trans.Close()
	n.raft.Shutdown().Error()
	closed := make(chan struct{})
	go func() {
		n.commit.close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		r.logf("NOTE: n%d's committer still waits for a raft future 5s after raft.Shutdown (unanswered buffered Apply); going on", i+1)
		r.t.Logf("seed %d: crash of n%d: committer.close hung on a raft Apply future never answered after raft.Shutdown (BatchApplyCh)", r.seed, i+1)
	}
	n.fwd.close()
	n.bg.Wait()
	n.bolt.Close()
}

func indexOf(xs []int, x int) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}

// addRemove starts n4, which joins through the running nodes, waits until
// it is a voter, lets the workload run, then removes it through the leader
// and stops it.
func (r *faultRun) addRemove() {
	tc, fn := r.tc, r.net
	var join []string
	for _, i := range r.running() {
		join = append(join, tc.nodes[i].Addr())
	}
	cfg := Config{ID: "n4", Listen: "127.0.0.1:0", DataDir: r.t.TempDir(), Logger: testLogger(), Join: join, Dialer: fn.dialer(3)}
	tc.cfgs = append(tc.cfgs, cfg)
	tc.nodes = append(tc.nodes, nil)
	n := tc.start(3)
	fn.register(n.Addr(), 3)
	r.logf("add n4 (%s)", n.Addr())
	poll(r.t, func() bool { l := tc.leader(); return tc.nodes[l].voters() == 4 && n.Ready() }, 30*time.Second, "n4 to join")
	r.logf("  n4 is a voter")
	r.between(200*time.Millisecond, 600*time.Millisecond)
	poll(r.t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		err := tc.nodes[tc.leader()].Remove(ctx, "n4")
		// An earlier try may have committed without its answer arriving
		// (leadership changed): then n4 is already gone.
		return err == nil || strings.Contains(err.Error(), "no node")
	}, 30*time.Second, "n4 to be removed")
	tc.stop(3)
	r.logf("  removed and stopped n4")
}
