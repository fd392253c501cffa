package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the built binary as a real OS process: the path users take.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kadosession-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kadosession")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// freeAddr returns a loopback address that was free a moment ago, with a
// port below the kernel's ephemeral range (32768 and up on Linux). Tests in
// other packages, running at the same time, bind port 0 and get ephemeral
// ports: one of them could take a port this package freed before its node
// bound it, and the node under test would then be a stranger (CI once
// restored a backup into another package's cluster that way).
// KADOSESSION_TEST_PORTS=LOW-HIGH narrows the range, for a machine whose
// users share out ports.
func freeAddr(t *testing.T) string {
	t.Helper()
	low, high := 20000, 31999
	if r := os.Getenv("KADOSESSION_TEST_PORTS"); r != "" {
		if _, err := fmt.Sscanf(r, "%d-%d", &low, &high); err != nil || low < 1 || high < low || high > 65535 {
			t.Fatalf("KADOSESSION_TEST_PORTS=%q: want LOW-HIGH, such as 20000-21999", r)
		}
	}
	for range 100 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", low+rand.IntN(high-low+1)))
		if err != nil {
			continue
		}
		defer l.Close()
		return l.Addr().String()
	}
	t.Fatalf("no free loopback port in %d-%d after 100 tries", low, high)
	return ""
}

type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	mu     sync.Mutex
	done   chan struct{}
}

// startServe runs `kadosession serve` with args; the process is killed when
// the test ends if it is still running.
func startServe(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{stderr: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary(t), append([]string{"serve"}, args...)...)
	p.cmd.Stderr = lockedWriter{p}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.stderr.Write(b)
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// kado sends one Kado JSON request and returns the reply ("" when the
// connection failed).
func kado(addr, req string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return ""
	}
	c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

func waitServing(t *testing.T, p *proc, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for kado(addr, `{"restore":{"sid":"probe"}}`) != `{"status":"ok","result":{}}` {
		select {
		case <-p.done:
			t.Fatalf("node exited before serving:\n%s", p.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node at %s not serving after 20s:\n%s", addr, p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProcessKill9KeepsAcknowledgedSaves(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	args := []string{"--listen", addr, "--data", dir, "--log-level", "warn"}
	acked := map[string]string{}
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 3; round++ {
		p := startServe(t, args...)
		waitServing(t, p, addr)
		// Everything acknowledged so far is still there.
		mu.Lock()
		for sid, data := range acked {
			if got := kado(addr, `{"restore":{"sid":"`+sid+`"}}`); got != `{"status":"ok","result":`+data+`}` {
				t.Fatalf("round %d: acknowledged save %s lost after kill -9: got %s", round, sid, got)
			}
		}
		mu.Unlock()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					sid := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					data := fmt.Sprintf(`{"user":"u%d","i":%d}`, w, i)
					if kado(addr, `{"save":{"sid":"`+sid+`","data":`+data+`}}`) == `{"status":"ok"}` {
						mu.Lock()
						acked[sid] = data
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL) // while writes are in flight
		<-p.done
		close(stop)
		wg.Wait()
	}
	if len(acked) < 100 {
		t.Fatalf("only %d saves acknowledged: the test did not exercise the node", len(acked))
	}
	p := startServe(t, args...)
	waitServing(t, p, addr)
	for sid, data := range acked {
		if got := kado(addr, `{"restore":{"sid":"`+sid+`"}}`); got != `{"status":"ok","result":`+data+`}` {
			t.Fatalf("acknowledged save %s lost: got %s", sid, got)
		}
	}
	// A clean stop writes the save file: valid JSON of the documented shape.
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("node did not stop on SIGTERM")
	}
	b, err := os.ReadFile(filepath.Join(dir, "sessions.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("save file is not {sid: {…}}: %v", err)
	}
	for sid, data := range acked {
		rec, ok := doc[sid]
		if !ok {
			t.Fatalf("save file lacks %s", sid)
		}
		if _, ok := rec["_written"]; !ok {
			t.Fatalf("record %s lacks _written", sid)
		}
		var want map[string]json.RawMessage
		json.Unmarshal([]byte(data), &want)
		for k, v := range want {
			if string(rec[k]) != string(v) {
				t.Fatalf("record %s key %s = %s, want %s", sid, k, rec[k], v)
			}
		}
	}
	t.Logf("%d acknowledged saves survived 3 kill -9s", len(acked))
}

func TestProcessImportsKadoSaveFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"abc":{"foo":"bar"}}`), 0o600)
	addr := freeAddr(t)
	p := startServe(t, "--listen", addr, "--data", dir)
	waitServing(t, p, addr)
	if got := kado(addr, `{"restore":{"sid":"abc"}}`); got != `{"status":"ok","result":{"foo":"bar"}}` {
		t.Fatalf("imported session = %s", got)
	}
}

func TestProcessRefusesCorruptSaveFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kado-sessions.json")
	corrupt := []byte(`{"abc":{"foo":"bar"},"def":{"x":`)
	os.WriteFile(path, corrupt, 0o600)
	p := startServe(t, "--listen", freeAddr(t), "--data", dir, "--save-file", path)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("node started with a corrupt save file")
	}
	if p.cmd.ProcessState.ExitCode() == 0 {
		t.Fatal("exit code 0 with a corrupt save file")
	}
	msg := p.log()
	if !strings.Contains(msg, path) || !strings.Contains(msg, "cannot be read") || !strings.Contains(msg, "untouched") {
		t.Fatalf("start-up message does not explain the corrupt save file:\n%s", msg)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, corrupt) {
		t.Fatalf("corrupt save file was changed: %q", got)
	}
}

func TestProcessFlagsFromEnvironmentAndBadFlags(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	cmd := exec.Command(binary(t), "serve")
	cmd.Env = append(os.Environ(), "KADOSESSION_LISTEN="+addr, "KADOSESSION_DATA="+dir, "KADOSESSION_LOG_LEVEL=warn")
	p := &proc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = lockedWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.done })
	waitServing(t, p, addr)
	if _, err := os.Stat(filepath.Join(dir, "node-id")); err != nil {
		t.Fatalf("data directory from KADOSESSION_DATA not used: %v", err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"bad duration", []string{"--duration", "forever"}, "", `--duration "forever": want a duration such as`},
		{"bad number", []string{"--max-keys", "many"}, "", `--max-keys "many": want a whole number`},
		{"unknown flag", []string{"--bogus"}, "", "not defined: --bogus (see --help)"},
		{"pprof address in use", []string{"--pprof", addr}, "", "--pprof"},
		{"frame below the session size", []string{"--max-session-size", "2000000", "--max-frame", "1048576"}, "", "raise --max-frame to at least 2008192"},
		{"frame pinned at the old default", []string{"--max-frame", "1048576"}, "", "raise --max-frame to at least 1056768"},
		{"negative key limit", []string{"--max-keys", "-1"}, "", "--max-keys -1: want a positive number"},
		{"zero duration", []string{"--duration", "0"}, "", "--duration 0s: want a positive duration"},
		{"bad env duration", nil, "KADOSESSION_SAVE_FREQUENCY=soon", "KADOSESSION_SAVE_FREQUENCY"},
		// Refused by the node, not the flag parser: the variable is named too.
		{"bad env listen address", nil, "KADOSESSION_LISTEN=bogus", `(from the environment: KADOSESSION_LISTEN="bogus")`},
		{"bad log level", []string{"--log-level", "loud"}, "", "--log-level"},
		{"unspecified advertise", []string{"--listen", "127.0.0.1:0", "--advertise", "0.0.0.0:3001"}, "", "advertise"},
		{"lease over heartbeat", []string{"--leader-lease-timeout", "2s"}, "", "lease"},
		// No "is another node already running there?" for a port that cannot be.
		{"invalid port", []string{"--listen", "127.0.0.1:99999"}, "", "(check --listen)"},
		// It used to wait silently, forever, for a leader.
		{"join names the node itself", []string{"--listen", "127.0.0.1:7516", "--join", "127.0.0.1:7516"}, "", `join address "127.0.0.1:7516" is this node's own address`},
		// Retried forever before ("missing port in address").
		{"join address without a port", []string{"--join", "bogus"}, "", `join address "bogus": want HOST:PORT`},
		// Positive but unworkable: every connection or request failed with
		// an error that named something else.
		{"read timeout too short", []string{"--read-timeout", "1ns"}, "", "--read-timeout 1ns: at least 100ms"},
		{"request timeout too short", []string{"--request-timeout", "1ns"}, "", "--request-timeout 1ns: at least 10ms"},
		{"idle timeout too short", []string{"--idle-timeout", "10ms"}, "", "--idle-timeout 10ms: at least 1s"},
		{"session size too large", []string{"--max-session-size", "99999999999"}, "", "--max-session-size 99999999999: at most 67108864"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary(t), append([]string{"serve", "--data", t.TempDir()}, tc.args...)...)
			cmd.Env = os.Environ()
			if tc.env != "" {
				cmd.Env = append(cmd.Env, tc.env)
			}
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err %v, output %s; want a failure mentioning %q", err, out, tc.want)
			}
			// The error, not sixty lines of usage that bury it.
			if strings.Contains(string(out), "Usage:") {
				t.Fatalf("a mistake printed the usage:\n%s", out)
			}
		})
	}
}

// A start refused for --listen 0.0.0.0 without --advertise says why, and
// not first that anyone who reaches the address can forge sessions (the
// warning came before the refusal: an operator's walkthrough).
func TestProcessRefusedStartDoesNotWarnOfExposure(t *testing.T) {
	_, port, _ := net.SplitHostPort(freeAddr(t))
	p := startServe(t, "--listen", "0.0.0.0:"+port, "--data", t.TempDir())
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("a node on 0.0.0.0 without --advertise started")
	}
	msg := p.log()
	if p.cmd.ProcessState.ExitCode() == 0 || !strings.Contains(msg, "advertise") {
		t.Fatalf("want a refusal naming --advertise:\n%s", msg)
	}
	if strings.Contains(msg, "anyone who reaches") {
		t.Fatalf("a refused start warned that anyone could forge sessions:\n%s", msg)
	}
}

// --peer-token-file sets nodes and admin commands apart from clients: the
// client token still serves status and sessions, but remove needs the peer
// token (an admin command given --peer-token-file sends it), and a peer
// token equal to the client token is refused at start.
func TestProcessPeerToken(t *testing.T) {
	dir := t.TempDir()
	clientFile, peerFile := filepath.Join(dir, "client"), filepath.Join(dir, "peer")
	os.WriteFile(clientFile, []byte("client-token-0123456789\n"), 0o600)
	os.WriteFile(peerFile, []byte("peer-token-0123456789ab\n"), 0o600)

	same := startServe(t, "--listen", freeAddr(t), "--data", t.TempDir(), "--auth-token-file", clientFile, "--peer-token-file", clientFile)
	select {
	case <-same.done:
	case <-time.After(20 * time.Second):
		t.Fatal("a node whose peer token is its client token started")
	}
	if msg := same.log(); same.cmd.ProcessState.ExitCode() == 0 || !strings.Contains(msg, "--peer-token-file") || !strings.Contains(msg, "differs") {
		t.Fatalf("want a refusal naming --peer-token-file:\n%s", msg)
	}

	addr := freeAddr(t)
	startServe(t, "--listen", addr, "--data", filepath.Join(dir, "data"), "--auth-token-file", clientFile, "--peer-token-file", peerFile)
	cmd := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(args, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := cmd("status", "--cluster", addr, "--auth-token-file", clientFile)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status with the client token: exit %d\n%s", code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, out := cmd("remove", "--cluster", addr, "--id", "nobody", "--auth-token-file", clientFile); code == 0 || !strings.Contains(out, "admin request") {
		t.Fatalf("remove with the client token: exit %d\n%s", code, out)
	}
	if code, out := cmd("remove", "--cluster", addr, "--id", "nobody", "--peer-token-file", peerFile); code == 0 || strings.Contains(out, "unauthorized") || !strings.Contains(out, "nobody") {
		t.Fatalf("remove with the peer token: exit %d\n%s; want it taken (and refused for the unknown id)", code, out)
	}
}

// TestProcessPeerTokenRollingChange: --accept-peer-token-file refuses
// combinations that cannot work, and real processes in the middle of a
// rolling change (README: TLS and a client token) form a cluster, forward
// writes and keep admin commands working with the client token until the
// last round, which sets them apart.
func TestProcessPeerTokenRollingChange(t *testing.T) {
	dir := t.TempDir()
	clientFile, peerFile := filepath.Join(dir, "client"), filepath.Join(dir, "peer")
	const clientTok = "client-token-0123456789"
	os.WriteFile(clientFile, []byte(clientTok+"\n"), 0o600)
	os.WriteFile(peerFile, []byte("peer-token-0123456789ab\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no token to change from", []string{"--accept-peer-token-file", peerFile}, "presents none"},
		{"the client token it presents", []string{"--auth-token-file", clientFile, "--accept-peer-token-file", clientFile}, "holds the client token of --auth-token-file"},
		{"the peer token it presents", []string{"--auth-token-file", clientFile, "--peer-token-file", peerFile, "--accept-peer-token-file", peerFile}, "holds the token of --peer-token-file"},
		{"a missing file", []string{"--auth-token-file", clientFile, "--accept-peer-token-file", filepath.Join(dir, "none")}, "--accept-peer-token-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startServe(t, append([]string{"--listen", freeAddr(t), "--data", t.TempDir()}, tc.args...)...)
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				t.Fatal("the node started")
			}
			if msg := p.log(); p.cmd.ProcessState.ExitCode() == 0 || !strings.Contains(msg, tc.want) {
				t.Fatalf("want a refusal saying %q:\n%s", tc.want, msg)
			}
		})
	}

	cmd := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(args, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	save := func(addr, sid string) string {
		return kado(addr, `{"token":"`+clientTok+`","save":{"sid":"`+sid+`","data":{"a":1}}}`)
	}
	waitTwo := func(addr string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, out := cmd("status", "--cluster", addr, "--json", "--auth-token-file", clientFile)
			var st statusJSON
			up := 0
			if code == 0 && json.Unmarshal([]byte(out), &st) == nil {
				for _, n := range st.Nodes {
					if n.Voter && (n.State == "leader" || n.State == "follower") {
						up++
					}
				}
			}
			if up == 2 && st.LeaderID != "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("two nodes not both up through %s: exit %d\n%s", addr, code, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// n1 in the first round (accepts the peer token, presents the client
	// token), n2 in the second (presents the peer token, accepts the client
	// token): they must talk both ways.
	a, b := freeAddr(t), freeAddr(t)
	round1 := []string{"--id", "n1", "--listen", a, "--data", filepath.Join(dir, "n1"), "--log-level", "warn",
		"--auth-token-file", clientFile, "--accept-peer-token-file", peerFile}
	n1 := startServe(t, round1...)
	startServe(t, "--id", "n2", "--listen", b, "--data", filepath.Join(dir, "n2"), "--log-level", "warn", "--join", a,
		"--auth-token-file", clientFile, "--peer-token-file", peerFile, "--accept-peer-token-file", clientFile)
	waitTwo(b)
	for i, addr := range []string{a, b} {
		if got := save(addr, fmt.Sprintf("mid-%d", i)); got != `{"status":"ok"}` {
			t.Fatalf("a save through %s mid-change: %s", addr, got)
		}
	}
	// Mid-change, admin commands work with either token.
	for _, tok := range []string{"--auth-token-file", "--peer-token-file"} {
		file := map[string]string{"--auth-token-file": clientFile, "--peer-token-file": peerFile}[tok]
		if code, out := cmd("remove", "--cluster", b, "--id", "nobody", tok, file); code == 0 || strings.Contains(out, "unauthorized") || strings.Contains(out, "admin request") || !strings.Contains(out, "nobody") {
			t.Fatalf("remove mid-change with %s: exit %d\n%s; want it taken (and refused for the unknown id)", tok, code, out)
		}
	}
	// n1 to the last round: only the peer token.
	n1.cmd.Process.Signal(syscall.SIGTERM)
	<-n1.done
	startServe(t, "--id", "n1", "--listen", a, "--data", filepath.Join(dir, "n1"), "--log-level", "warn",
		"--auth-token-file", clientFile, "--peer-token-file", peerFile)
	waitTwo(a)
	for i, addr := range []string{a, b} {
		if got := save(addr, fmt.Sprintf("late-%d", i)); got != `{"status":"ok"}` {
			t.Fatalf("a save through %s after n1's last restart: %s", addr, got)
		}
	}
	for _, sid := range []string{"mid-0", "mid-1"} {
		if got := kado(a, `{"token":"`+clientTok+`","restore":{"sid":"`+sid+`"}}`); got != `{"status":"ok","result":{"a":1}}` {
			t.Fatalf("%s after n1's restart: %s", sid, got)
		}
	}
	if code, out := cmd("remove", "--cluster", a, "--id", "nobody", "--auth-token-file", clientFile); code == 0 || !strings.Contains(out, "admin request") {
		t.Fatalf("remove with the client token on a node in the last round: exit %d\n%s", code, out)
	}
}
