package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// TestProcessBackupRestore: backup of one node's sessions, restored into a
// fresh node, gives the identical document; the admin HTTP endpoint of a
// process answers /readyz and /metrics.
func TestProcessBackupRestore(t *testing.T) {
	src, httpAddr := freeAddr(t), freeAddr(t)
	p := startServe(t, "--listen", src, "--data", t.TempDir(), "--http", httpAddr, "--log-level", "warn")
	waitServing(t, p, src)
	for i := 0; i < 50; i++ {
		if got := kado(src, fmt.Sprintf(`{"save":{"sid":"s%d","data":{"i":%d,"s":"é\"<>"}}}`, i, i)); got != `{"status":"ok"}` {
			t.Fatalf("save: %q", got)
		}
	}

	for _, path := range []string{"/readyz", "/healthz", "/metrics", "/status"} {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		if path == "/metrics" && !strings.Contains(string(body), "kadosession_sessions 50\n") {
			t.Fatalf("/metrics has no kadosession_sessions 50:\n%s", body)
		}
	}

	out := filepath.Join(t.TempDir(), "backup.json")
	stdout, stderr, err := runCLI(t, "backup", "--cluster", src, "--out", out)
	if err != nil {
		t.Fatalf("backup: %v\n%s%s", err, stdout, stderr)
	}
	if !strings.Contains(stdout, "50 sessions") || !strings.Contains(stdout, "sha256 ") {
		t.Fatalf("backup said: %s", stdout)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	records, err := fsm.ReadDocument(f, 0)
	f.Close()
	if err != nil || len(records) != 50 {
		t.Fatalf("backup file: %d records, %v", len(records), err)
	}

	dst := freeAddr(t)
	q := startServe(t, "--listen", dst, "--data", t.TempDir(), "--log-level", "warn")
	waitServing(t, q, dst)
	stdout, stderr, err = runCLI(t, "restore", "--cluster", dst, "--in", out)
	if err != nil {
		t.Fatalf("restore: %v\n%s%s", err, stdout, stderr)
	}
	if !strings.Contains(stdout, "restored 50 sessions") || !strings.Contains(stdout, "identical") {
		t.Fatalf("restore said: %s", stdout)
	}
	// Kado replies carry non-ASCII characters as \u escapes.
	if got := kado(dst, `{"restore":{"sid":"s7"}}`); got != `{"status":"ok","result":{"i":7,"s":"\u00e9\"<>"}}` {
		t.Fatalf("restored s7: %s", got)
	}

	// A damaged file is refused before anything is sent.
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"a":{"x":1},`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := runCLI(t, "restore", "--cluster", dst, "--in", bad); err == nil || !strings.Contains(stderr, "cannot be restored") {
		t.Fatalf("restore of a damaged file: %v %s", err, stderr)
	}

	// Sessions saved longer ago than the cluster's duration are restored
	// (the file is the truth), with a warning that they read as absent.
	old := filepath.Join(t.TempDir(), "old.json")
	if err := os.WriteFile(old, []byte(`{"old1":{"x":1,"_written":1000},"old2":{"_written":2000}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// The cluster holds sessions now: restoring into it needs --replace.
	if _, stderr, err := runCLI(t, "restore", "--cluster", dst, "--in", old); err == nil || !strings.Contains(stderr, "already holds 50 sessions") || !strings.Contains(stderr, "--replace") {
		t.Fatalf("restore into a cluster holding sessions without --replace: %v, stderr %s; want a refusal naming --replace", err, stderr)
	}
	if _, stderr, err := runCLI(t, "restore", "--cluster", dst, "--in", old, "--batch-size", "0"); err == nil || !strings.Contains(stderr, "--batch-size 0") {
		t.Fatalf("restore --batch-size 0: %v, stderr %s", err, stderr)
	}
	if _, stderr, err := runCLI(t, "restore", "--replace", "--cluster", dst, "--in", old); err != nil || !strings.Contains(stderr, "warning: 2 of the cluster's sessions were saved longer ago than its session duration") {
		t.Fatalf("restore of expired sessions: %v, stderr %s; want a warning naming 2", err, stderr)
	}

	// A backup named as an existing directory is refused before anything is
	// captured (it used to fail at the very end, renaming onto it).
	if _, stderr, err := runCLI(t, "backup", "--cluster", src, "--out", t.TempDir()); err == nil || !strings.Contains(stderr, "is a directory") {
		t.Fatalf("backup onto a directory: %v %s", err, stderr)
	}
	// A backup into a directory that does not exist says so, and what to do.
	missing := filepath.Join(t.TempDir(), "no-such-dir", "backup.json")
	if _, stderr, err := runCLI(t, "backup", "--cluster", src, "--out", missing); err == nil || !strings.Contains(stderr, "--out") || !strings.Contains(stderr, "does not exist") {
		t.Fatalf("backup into a missing directory: %v %s", err, stderr)
	}
}

// TestAdminCommandsOnAForeignPort: an admin command pointed at a port where
// no kadosession node listens, but something else does, says so within
// seconds: a server that never answers made status wait 15 s and backup 2
// minutes, then say "context deadline exceeded"; one that greets first
// (SSH, Redis errors) gave a "frame of 759517778 bytes" error.
func TestAdminCommandsOnAForeignPort(t *testing.T) {
	for _, tc := range []struct {
		name, greeting, want string
	}{
		{"silent", "", "no answer within 5s"},
		{"greets first", "SSH-2.0-OpenSSH_9.2\r\n", "does not speak kadosession's protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					defer c.Close()
					if tc.greeting != "" {
						c.Write([]byte(tc.greeting))
					}
					go io.Copy(io.Discard, c)
				}
			}()
			for _, args := range [][]string{
				{"status", "--cluster", ln.Addr().String()},
				{"backup", "--cluster", ln.Addr().String(), "--out", filepath.Join(t.TempDir(), "b.json")},
			} {
				start := time.Now()
				_, stderr, err := runCLI(t, args...)
				if err == nil || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "--listen") {
					t.Fatalf("%s: %v, stderr %s; want a failure saying %q", args[0], err, stderr, tc.want)
				}
				if took := time.Since(start); took > 10*time.Second {
					t.Fatalf("%s took %s to say so", args[0], took)
				}
			}
		})
	}
}

// TestAdminCommandsOnANodesHTTPPort: a node's --http port given where its
// --listen port was meant, to any admin command, or as the address join
// adds, is named as such at once. join --address said "no node answers
// (… context deadline exceeded)" after 3 s; status and the others waited
// for the HTTP server's 5 s header timeout, racing their own 5 s probe.
func TestAdminCommandsOnANodesHTTPPort(t *testing.T) {
	addr, httpAddr := freeAddr(t), freeAddr(t)
	p := startServe(t, "--id", "n1", "--listen", addr, "--http", httpAddr, "--data", t.TempDir(), "--log-level", "error")
	waitServing(t, p, addr)
	backup := filepath.Join(t.TempDir(), "backup.json")
	if err := os.WriteFile(backup, []byte(`{"s1":{"a":1,"_written":1795629654509}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"status", "--cluster", httpAddr},
		{"health", "--cluster", httpAddr},
		{"remove", "--cluster", httpAddr, "--id", "n2"},
		{"backup", "--cluster", httpAddr, "--out", filepath.Join(t.TempDir(), "b.json")},
		{"restore", "--cluster", httpAddr, "--in", backup},
		{"join", "--cluster", httpAddr, "--id", "n2", "--address", addr},
		{"join", "--cluster", addr, "--id", "n2", "--address", httpAddr},
	} {
		start := time.Now()
		_, stderr, err := runCLI(t, args...)
		took := time.Since(start)
		if err == nil || !strings.Contains(stderr, httpAddr+": the server there answered in HTTP: is that a node's --http (admin) port? Give its --listen port") {
			t.Fatalf("%s: %v after %s, stderr %s; want it to name %s an HTTP port", strings.Join(args, " "), err, took, stderr, httpAddr)
		}
		if took > 2500*time.Millisecond {
			t.Fatalf("%s took %s to say so", strings.Join(args, " "), took)
		}
	}
	if _, _, err := runCLI(t, "status", "--cluster", addr); err != nil {
		t.Fatalf("status of the node after: %v", err)
	}
}

// TestAdminCommandOnAFullNode: a node that refuses the connection itself
// (over --max-conns) is a kadosession node: the command says what the node
// said, not that the port speaks another protocol.
func TestAdminCommandOnAFullNode(t *testing.T) {
	addr := freeAddr(t)
	p := startServe(t, "--listen", addr, "--data", t.TempDir(), "--log-level", "error", "--max-conns", "1")
	waitServing(t, p, addr)
	// An idle native client holds the only slot. It may be refused while
	// waitServing's last connection still holds the slot: it holds it when
	// the node says nothing to it within 300 ms.
	var hold net.Conn
	for try := 0; hold == nil; try++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte{transport.MagicNative, transport.VersionNative}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			hold = c
		} else if c.Close(); try == 20 {
			t.Fatalf("could not hold the node's only connection slot: %v", err)
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	defer hold.Close()
	_, stderr, err := runCLI(t, "status", "--cluster", addr)
	if err == nil || !strings.Contains(stderr, "too many connections") || strings.Contains(stderr, "does not speak") {
		t.Fatalf("status on a node at its connection limit: %v, stderr %s; want the node's own refusal", err, stderr)
	}
}

// TestRestoreOfSaveTimesInTheFuture: a file written on a machine whose
// clock was ahead restores (those sessions as saved now, or they would
// never expire), and restore says so instead of failing its check that
// the cluster is identical to the file.
func TestRestoreOfSaveTimesInTheFuture(t *testing.T) {
	addr := freeAddr(t)
	p := startServe(t, "--listen", addr, "--data", t.TempDir(), "--log-level", "error")
	waitServing(t, p, addr)
	file := filepath.Join(t.TempDir(), "ahead.json")
	ahead := time.Now().Add(2 * time.Hour).UnixMilli()
	if err := os.WriteFile(file, []byte(fmt.Sprintf(`{"a":{"x":1,"_written":%d},"b":{"x":2}}`, ahead)), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runCLI(t, "restore", "--cluster", addr, "--in", file)
	if err != nil || !strings.Contains(stderr, "1 sessions were saved more than a minute in the future") || !strings.Contains(stdout, "restored 2 sessions") {
		t.Fatalf("restore: %v\nstdout %s\nstderr %s", err, stdout, stderr)
	}
}
