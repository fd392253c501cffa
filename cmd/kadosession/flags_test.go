package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

// Every serve flag may come from the environment; of the other commands'
// flags only the connection flags do: a node's KADOSESSION_DURATION made
// bench's --duration, another flag of the same name, out of range.
func TestOnlyServeAndConnectionFlagsComeFromTheEnvironment(t *testing.T) {
	t.Setenv("KADOSESSION_DURATION", "6h")
	t.Setenv("KADOSESSION_AUTH_TOKEN_FILE", "/run/token")
	for _, tc := range []struct {
		cmd           string
		wantDuration  time.Duration
		wantTokenFile string
	}{
		{"serve", 6 * time.Hour, "/run/token"},
		{"bench", 10 * time.Second, "/run/token"},
	} {
		fs := flag.NewFlagSet(tc.cmd, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		d := fs.Duration("duration", 10*time.Second, "")
		token := fs.String("auth-token-file", "", "")
		if err := parseFlags(fs, nil); err != nil {
			t.Fatalf("%s: %v", tc.cmd, err)
		}
		if *d != tc.wantDuration || *token != tc.wantTokenFile {
			t.Errorf("%s: --duration %s, --auth-token-file %q; want %s, %q", tc.cmd, *d, *token, tc.wantDuration, tc.wantTokenFile)
		}
	}
}
