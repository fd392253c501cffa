package cluster

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/transport"
)

// testLogger discards logs unless KADOSESSION_TEST_LOG is set.
func testLogger() hclog.Logger {
	if os.Getenv("KADOSESSION_TEST_LOG") != "" {
		return hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: os.Stderr})
	}
	return hclog.New(&hclog.LoggerOptions{Output: io.Discard})
}

// startNode opens a node on a free loopback port with a temp data dir
// (unless cfg names one) and closes it when the test ends.
func startNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	n, err := Open(cfg)
	if err != nil {
		t.Fatalf("open node: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	poll(t, n.Ready, 10*time.Second, "node ready")
	return n
}

// poll waits until cond holds, failing the test after timeout.
func poll(t testing.TB, cond func() bool, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kadoRequest sends one Kado JSON request the way Kado's SessionStoreLocal
// does (write, half-close, read to EOF) and returns the reply.
func kadoRequest(t *testing.T, addr string, req []byte) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(req); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatalf("half-close: %v", err)
	}
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply to %q: %v", req, err)
	}
	return string(out)
}

func asError(err error, target **transport.Error) bool { return errors.As(err, target) }
