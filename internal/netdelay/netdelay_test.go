package netdelay

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestRoundTripTakesTwiceTheDelay: an echo through the proxy comes back
// whole, a half-close passes on, and a round trip costs both directions'
// delay (and a new connection its handshake and ConnectDelay).
func TestRoundTripTakesTwiceTheDelay(t *testing.T) {
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
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	const d, connect = 30 * time.Millisecond, 50 * time.Millisecond
	p, err := Listen("127.0.0.1:0", ln.Addr().String(), Link{Delay: d, ConnectDelay: connect}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := bytes.Repeat([]byte("kado"), 50000)
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	took := time.Since(start)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d bytes of %d, %v", len(got), len(msg), err)
	}
	if want := 4*d + connect; took < want {
		t.Fatalf("first round trip took %s, want at least %s", took, want)
	}
}
