package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
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
	var st struct {
		ID       string  `json:"id"`
		State    string  `json:"state"`
		Ready    bool    `json:"ready"`
		Reason   *string `json:"reason"` // set by "ready" when not ready
		LeaderID string  `json:"leader_id"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("node answered something that is not status JSON: %v", err)
	}
	switch {
	case st.Reason != nil && *st.Reason != "":
		return fmt.Errorf("node %s (%s) is not ready: %s", st.ID, st.State, *st.Reason)
	case !st.Ready:
		return fmt.Errorf("node %s is starting", st.ID)
	case st.LeaderID == "":
		return fmt.Errorf("node %s (%s) knows no leader", st.ID, st.State)
	}
	fmt.Fprintf(stdout, "ok: node %s is %s, leader %s\n", st.ID, st.State, st.LeaderID)
	return nil
}
