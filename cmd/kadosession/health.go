package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/kadosession/kadosession/cluster"
)

// health exits 0 when the node answers and is ready, as /readyz says (a
// member, a leader known and heard from, caught up since its start): the
// container health check.
func health(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of the node to check")
	fs.Usage = usageWithEnv(fs, "kadosession health [--cluster HOST:PORT]",
		"Exits 0 when the node is ready for traffic (as its /readyz would say: serving, a member of the cluster, its leader known and heard from); 1 otherwise, saying why.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// The node's readiness, as /readyz gives it (a node from before the
	// "ready" op: its status).
	body, err := adminCall(*addr, &cf, []byte(`{"op":"ready"}`))
	if err != nil && strings.Contains(err.Error(), "unknown admin op") {
		body, err = adminCall(*addr, &cf, []byte(`{"op":"status"}`))
	}
	if err != nil {
		return err
	}
	// Both answers decode as a Readiness (a status has no reason).
	var st cluster.Readiness
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("node answered something that is not status JSON: %v", err)
	}
	switch {
	case st.Reason != "":
		return fmt.Errorf("node %s (%s) is not ready: %s", st.ID, st.State, st.Reason)
	case !st.Ready:
		return fmt.Errorf("node %s is starting", st.ID)
	case st.Leader == "":
		return fmt.Errorf("node %s (%s) knows no leader", st.ID, st.State)
	}
	fmt.Fprintf(stdout, "ok: node %s is %s, leader %s\n", st.ID, st.State, st.Leader)
	return nil
}
