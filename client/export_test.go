package client

import (
	"testing"
	"time"
)

// SetReaderPause sets how long a node that failed a read is left out of
// the readers, for the test t.
func SetReaderPause(t testing.TB, d time.Duration) {
	old := readerPause
	readerPause = d
	t.Cleanup(func() { readerPause = old })
}

// SetHintPause sets how long a node the Store failed to connect to is not
// moved to, for the test t.
func SetHintPause(t testing.TB, d time.Duration) {
	old := hintPause
	hintPause = d
	t.Cleanup(func() { hintPause = old })
}

// SetRetryWindow sets how long after its first attempt a call is retried
// at most, for the test t.
func SetRetryWindow(t testing.TB, d time.Duration) {
	old := retryWindow
	retryWindow = d
	t.Cleanup(func() { retryWindow = old })
}
