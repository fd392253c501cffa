package fsm

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// poll waits until cond is true, failing the test if timeout passes first.
func poll(t testing.TB, cond func() bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := 100 * time.Microsecond; !cond(); wait = min(2*wait, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(wait)
	}
}

// applyLog hands one encoded command to f as raft would.
func applyLog(t testing.TB, f *FSM, index uint64, data []byte) any {
	t.Helper()
	return f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data})
}
