// Command faultcheck runs seeded fault schedules against a 3-node
// kadosession cluster of real OS processes on 127.0.0.1 (scripts/faults.sh
// builds the binary and runs it). Faults: kill -9 and restart, SIGSTOP and
// SIGCONT, and network cuts made by proxies of its own between the nodes
// (each node advertises its proxy's address; a proxy tells which node
// opened a connection by looking up the socket's owner in /proc). A
// workload of Go and Kado JSON clients runs throughout; once healed, the
// history is checked (faultkit: lost acknowledged writes, porcupine
// linearizability, Leader/Stale reads that go back in time: see
// faultkit.CheckMonotonic; KADOSESSION_FAULT_STRICT_STALE=1 also fails a
// Stale read that goes back across a restart of its node) and the replicas
// compared. The last line printed is
//
//	schedules: N, acknowledged writes: W, lost: L, linearizability violations: V
//
// and the exit status is non-zero if L or V (or anything else, a Leader or
// Stale read going back included) failed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/internal/faultkit"
)

func main() {
	bin := flag.String("bin", "", "the kadosession binary (required)")
	schedules := flag.Int("schedules", 1, "how many schedules to run")
	seed := flag.Int64("seed", 0, "seed of the first schedule (0: from the clock); schedule k uses seed+k")
	length := flag.Duration("length", 4*time.Second, "how long faults are injected per schedule")
	workdir := flag.String("dir", "", "where the nodes' data and logs go (default: a temp dir, removed unless something failed)")
	verbose := flag.Bool("v", false, "print each fault as it happens")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "faultcheck: -bin is required")
		os.Exit(2)
	}
	if *seed == 0 {
		*seed = time.Now().UnixNano() % 1_000_000_000
	}
	root := *workdir
	if root == "" {
		var err error
		if root, err = os.MkdirTemp("", "kadosession-faults-"); err != nil {
			fmt.Fprintln(os.Stderr, "faultcheck:", err)
			os.Exit(2)
		}
	}
	var acked, lost, violations, errs, monoReads, monoViolations, monoExcused int
	for k := 0; k < *schedules; k++ {
		s := *seed + int64(k)
		r := &run{bin: *bin, seed: s, length: *length, dir: filepath.Join(root, fmt.Sprintf("seed-%d", s)), verbose: *verbose,
			rng: rand.New(rand.NewSource(s))}
		res, err := r.schedule()
		acked += res.Acked
		lost += res.Lost
		violations += res.Violations
		monoReads += res.MonoReads
		monoViolations += res.MonoViolations
		monoExcused += res.MonoExcused
		status := "ok"
		if err != nil {
			errs++
			status = "ERROR: " + err.Error()
		} else if res.Failed() {
			status = "FAILED"
		}
		fmt.Printf("schedule %d/%d seed %d: %d ops, %d acknowledged writes, %d pending, lost %d, violations %d, checker timeouts %d; Leader/Stale reads %d (%d failed), went backwards %d (+%d across a restart of a pinned Stale reader's node): %s\n",
			k+1, *schedules, s, res.Ops, res.Acked, res.Pending, res.Lost, res.Violations, res.Unknown, res.MonoReads, r.monoFailed, res.MonoViolations, res.MonoExcused, status)
		if err == nil && !res.Failed() && res.MonoExcused > 0 {
			for _, d := range res.Details {
				fmt.Println("  " + d)
			}
		}
		if err != nil || res.Failed() {
			fmt.Printf("  schedule:\n    %s\n", strings.Join(r.log, "\n    "))
			for _, d := range res.Details {
				fmt.Println("  " + d)
			}
			fmt.Printf("  node logs and data: %s; replay: scripts/faults.sh 1 (FAULTS_SEED=%d)\n", r.dir, s)
		} else {
			os.RemoveAll(r.dir)
		}
	}
	if *workdir == "" && errs == 0 && lost == 0 && violations == 0 && monoViolations == 0 {
		os.RemoveAll(root)
	}
	fmt.Printf("Leader/Stale reads checked: %d, went backwards: %d (+%d excused: across a restart of a pinned Stale reader's node)\n", monoReads, monoViolations, monoExcused)
	fmt.Printf("schedules: %d, acknowledged writes: %d, lost: %d, linearizability violations: %d\n", *schedules, acked, lost, violations)
	if lost > 0 || violations > 0 || monoViolations > 0 || errs > 0 {
		os.Exit(1)
	}
}

// run is one schedule.
type run struct {
	bin     string
	seed    int64
	length  time.Duration
	dir     string
	verbose bool
	rng     *rand.Rand
	start   time.Time

	monoFailed int // Leader/Stale reads that failed
	log        []string

	net     *network
	nodes   [3]*proc
	proxies [3]string // advertised addresses
	wl      *faultkit.Workload
}

// proc is one node process.
type proc struct {
	id, listen, data string
	args             []string
	cmd              *exec.Cmd
	done             chan struct{}
	stopped          bool // SIGSTOPped
}

func (r *run) logf(format string, args ...any) {
	line := fmt.Sprintf("%6.3fs ", time.Since(r.start).Seconds()) + fmt.Sprintf(format, args...)
	r.log = append(r.log, line)
	if r.verbose {
		fmt.Println("  " + line)
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (r *run) schedule() (res faultkit.Result, err error) {
	r.start = time.Now()
	r.net = newNetwork()
	defer r.net.close()
	defer r.stopAll()
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return res, err
	}
	for i := range r.nodes {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return res, err
		}
		listen, err := freePort()
		if err != nil {
			return res, err
		}
		r.proxies[i] = ln.Addr().String()
		r.net.serve(ln, i, listen)
		p := &proc{id: fmt.Sprintf("n%d", i+1), listen: listen, data: filepath.Join(r.dir, fmt.Sprintf("n%d", i+1))}
		p.args = []string{"serve", "--id", p.id, "--listen", listen, "--advertise", r.proxies[i], "--data", p.data}
		if i > 0 {
			p.args = append(p.args, "--join", r.proxies[0])
		}
		r.nodes[i] = p
	}
	for i := range r.nodes {
		if err := r.startNode(i); err != nil {
			return res, err
		}
		if i == 0 {
			if _, err := r.waitLeader(20 * time.Second); err != nil {
				return res, err
			}
		}
	}
	if err := r.waitMembers(30 * time.Second); err != nil {
		return res, err
	}
	r.logf("cluster up: %v via proxies %v", []string{r.nodes[0].listen, r.nodes[1].listen, r.nodes[2].listen}, r.proxies)

	rec := faultkit.NewRecorder()
	addrs := r.proxies[:]
	wl := &faultkit.Workload{SIDs: []string{"s0", "s1", "s2"}, Seed: r.seed, Rec: rec, KadoAddrs: addrs}
	r.wl = wl
	for k := 0; k < 3; k++ {
		order := append(append([]string(nil), addrs[k:]...), addrs[:k]...)
		cfg := client.Config{Addrs: order, RequestTimeout: time.Second}
		if k == 2 {
			cfg.Reads = client.ReadFollower // one client reads through a follower
		}
		s, err := client.New(cfg)
		if err != nil {
			return res, err
		}
		defer s.Close()
		wl.Stores = append(wl.Stores, s)
	}
	// Two Go clients each write a grow-only mono session; a Leader reader
	// (every node) and a Stale reader pinned to one node read them and must
	// never see them go back (faultkit.CheckMonotonic).
	wl.Mono = 2
	k := int(uint64(r.seed) % 3)
	for _, m := range []struct {
		name, node string
		addrs      []string
		c          client.Consistency
	}{
		{"leader", "", append(append([]string(nil), addrs[k:]...), addrs[:k]...), client.Leader},
		{fmt.Sprintf("stale@n%d", k+1), addrs[k], []string{addrs[k]}, client.Stale},
	} {
		s, err := client.New(client.Config{Addrs: m.addrs, RequestTimeout: time.Second, Consistency: m.c})
		if err != nil {
			return res, err
		}
		defer s.Close()
		wl.MonoReaders = append(wl.MonoReaders, faultkit.MonoReader{Name: m.name, Node: m.node, Store: s})
	}
	var d net.Dialer
	wl.KadoDials = append(wl.KadoDials, func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	})
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
	defer stopWorkload()

	for time.Since(r.start) < r.length {
		if err := r.step(); err != nil {
			return res, err
		}
	}

	r.net.healAll()
	for i, p := range r.nodes {
		if p.stopped {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			p.stopped = false
		}
		if p.cmd == nil {
			if err := r.startNode(i); err != nil {
				return res, err
			}
		}
	}
	r.logf("healed; connections through the proxies %s", r.net.accepted())
	time.Sleep(300 * time.Millisecond)
	stopWorkload()
	if err := r.waitMembers(30 * time.Second); err != nil {
		return res, err
	}
	final, err := client.New(client.Config{Addrs: addrs})
	if err != nil {
		return res, err
	}
	defer final.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer fcancel()
	if err := faultkit.FinalReads(fctx, final, wl.AllSIDs(), rec, 4); err != nil {
		return res, err
	}
	ops := rec.Ops()
	if err := r.sameReplicas(ops); err != nil {
		return res, err
	}
	res = faultkit.Check(ops, 20*time.Second, r.dir)
	restarts := wl.Restarts()
	if os.Getenv("KADOSESSION_FAULT_STRICT_STALE") != "" {
		restarts = nil
	}
	res.CheckMonotonic(wl.MonoReads(), ops, restarts)
	r.monoFailed = wl.MonoFailed
	return res, nil
}

// sameReplicas waits until every node's own state (stale reads, straight
// to its port) holds exactly what the final reads saw.
func (r *run) sameReplicas(ops []faultkit.Op) error {
	want := map[string]string{}
	for _, op := range ops {
		if op.Via == "final" {
			want[op.SID] = opText(op.Found == faultkit.FoundYes, op.Data)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for i, p := range r.nodes {
		s, err := client.New(client.Config{Addrs: []string{p.listen}, Consistency: client.Stale, MaxRetries: -1})
		if err != nil {
			return err
		}
		for sid, w := range want {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				data, found, err := s.RestoreRaw(ctx, sid)
				cancel()
				got := ""
				if err == nil && !found {
					got = opText(false, nil)
				} else if err == nil {
					var m map[string]string
					m, err = faultkit.DecodeData(data)
					got = opText(true, m)
				}
				if err == nil && got == w {
					break
				}
				if time.Now().After(deadline) {
					s.Close()
					return fmt.Errorf("replica n%d differs on %s: has %s (%v), the cluster answers %s", i+1, sid, got, err, w)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		s.Close()
	}
	r.logf("replicas identical on %d sessions", len(want))
	return nil
}

func opText(found bool, data map[string]string) string {
	if !found {
		return "absent"
	}
	b, _ := json.Marshal(data) // sorted keys
	return string(b)
}

func (r *run) startNode(i int) error {
	p := r.nodes[i]
	if r.wl != nil {
		r.wl.Restarting(r.proxies[i])
	}
	logf, err := os.OpenFile(filepath.Join(r.dir, p.id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	var last error
	for try := 0; try < 50; try++ { // a killed node's port may linger a moment
		cmd := exec.Command(r.bin, p.args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if last = cmd.Start(); last != nil {
			break
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done: // exited at once (port still taken): try again
			last = fmt.Errorf("node %s exited at start (see %s)", p.id, logf.Name())
			time.Sleep(100 * time.Millisecond)
			continue
		case <-time.After(300 * time.Millisecond):
		}
		p.cmd, p.done = cmd, done
		r.net.setPid(i, cmd.Process.Pid)
		logf.Close()
		return nil
	}
	logf.Close()
	return last
}

// kill sends SIGKILL to node i and waits for it to die.
func (r *run) kill(i int) {
	p := r.nodes[i]
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	p.cmd, p.stopped = nil, false
}

func (r *run) stopAll() {
	for i, p := range r.nodes {
		if p == nil || p.cmd == nil {
			continue
		}
		if p.stopped {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			p.cmd = nil
		case <-time.After(10 * time.Second):
			r.kill(i)
		}
	}
}

// nodeStatus asks node i (directly, not through its proxy) for its status.
func (r *run) nodeStatus(i int, admin string) ([]byte, error) {
	p := r.nodes[i]
	if p.cmd == nil || p.stopped {
		return nil, errors.New("not running")
	}
	s, err := client.New(client.Config{Addrs: []string{p.listen}, MaxRetries: -1, RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return s.Admin(ctx, []byte(admin))
}

type nodeStatus struct {
	State string `json:"state"`
	Term  uint64 `json:"term"`
	Ready bool   `json:"ready"`
}

// leader returns the index of the node that says it leads (the highest
// term wins), or an error after timeout.
func (r *run) waitLeader(timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		best, term := -1, uint64(0)
		for i := range r.nodes {
			body, err := r.nodeStatus(i, `{"op":"status"}`)
			var st nodeStatus
			if err == nil && json.Unmarshal(body, &st) == nil && st.State == "leader" && st.Ready && st.Term >= term {
				best, term = i, st.Term
			}
		}
		if best >= 0 {
			return best, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no leader after %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMembers waits until the leader sees 3 voters, every one answering.
func (r *run) waitMembers(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		l, err := r.waitLeader(timeout)
		if err != nil {
			return err
		}
		body, err := r.nodeStatus(l, `{"op":"cluster"}`)
		var cs struct {
			Nodes []struct {
				Voter bool   `json:"voter"`
				State string `json:"state"`
			} `json:"nodes"`
		}
		ok := 0
		if err == nil && json.Unmarshal(body, &cs) == nil {
			for _, n := range cs.Nodes {
				if n.Voter && (n.State == "leader" || n.State == "follower") {
					ok++
				}
			}
		}
		if ok == 3 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not whole after %s: %s %v", timeout, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *run) sleep(lo, hi time.Duration) time.Duration {
	d := lo + time.Duration(r.rng.Int63n(int64(hi-lo)))
	time.Sleep(d)
	return d
}

// pick returns the leader, or a follower.
func (r *run) pick(leader bool) (int, error) {
	l, err := r.waitLeader(15 * time.Second)
	if err != nil || leader {
		return l, err
	}
	return (l + 1 + r.rng.Intn(2)) % 3, nil
}

// step runs one random fault and heals it.
func (r *run) step() error {
	mode := []fault{faultRefuse, faultDrop}[r.rng.Intn(2)]
	switch r.rng.Intn(6) {
	case 0, 1: // partition the leader from the majority
		l, err := r.pick(true)
		if err != nil {
			return err
		}
		r.net.cut(l, (l+1)%3, mode)
		r.net.cut(l, (l+2)%3, mode)
		r.logf("partition leader n%d from the others (%s)", l+1, mode)
		r.logf("  healed after %s", r.sleep(400*time.Millisecond, 1200*time.Millisecond))
	case 2: // isolate a follower
		f, err := r.pick(false)
		if err != nil {
			return err
		}
		r.net.cut(f, (f+1)%3, mode)
		r.net.cut(f, (f+2)%3, mode)
		r.logf("isolate follower n%d (%s)", f+1, mode)
		r.logf("  healed after %s", r.sleep(300*time.Millisecond, 900*time.Millisecond))
	case 3: // flapping link
		a := r.rng.Intn(3)
		b := (a + 1 + r.rng.Intn(2)) % 3
		flips := 4 + r.rng.Intn(6)
		r.logf("flap n%d<->n%d %d times (%s)", a+1, b+1, flips, mode)
		for k := 0; k < flips; k++ {
			r.net.cut(a, b, mode)
			r.sleep(50*time.Millisecond, 300*time.Millisecond)
			r.net.cut(a, b, faultNone)
			r.sleep(30*time.Millisecond, 200*time.Millisecond)
		}
	case 4: // kill -9 and restart
		i, err := r.pick(r.rng.Intn(2) == 0)
		if err != nil {
			return err
		}
		r.kill(i)
		r.logf("kill -9 n%d", i+1)
		d := r.sleep(200*time.Millisecond, 900*time.Millisecond)
		if err := r.startNode(i); err != nil {
			return err
		}
		r.logf("  restarted after %s", d)
	case 5: // SIGSTOP for longer than the election timeout, then SIGCONT
		i, err := r.pick(r.rng.Intn(3) != 0)
		if err != nil {
			return err
		}
		p := r.nodes[i]
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		p.stopped = true
		r.logf("SIGSTOP n%d", i+1)
		d := r.sleep(500*time.Millisecond, 1200*time.Millisecond)
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		p.stopped = false
		r.logf("  SIGCONT after %s", d)
	}
	r.net.healAll()
	r.sleep(100*time.Millisecond, 300*time.Millisecond)
	return nil
}
