// Package testnet holds network helpers shared by the tests of several
// packages.
package testnet

import (
	"net"
	"testing"
)

// ClosedAddr returns a loopback address nothing listens on (a port the
// kernel handed out and that was closed at once).
func ClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
