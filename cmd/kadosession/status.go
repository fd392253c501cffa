package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
)

func status(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of any node")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = usageWithEnv(fs, "kadosession status [--cluster HOST:PORT] [--json]", "Shows a node's view of itself and its cluster.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	body, err := adminCall(*addr, []byte(`{"op":"status"}`))
	if err != nil {
		return err
	}
	if *asJSON {
		_, err = fmt.Fprintf(stdout, "%s\n", body)
		return err
	}
	var st map[string]any
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("node answered something that is not status JSON: %v", err)
	}
	for _, k := range []string{"id", "address", "state", "leader_id", "leader_address", "term", "commit_index", "applied_index", "sessions", "ready"} {
		fmt.Fprintf(stdout, "%-15s %v\n", k+":", st[k])
	}
	return nil
}
