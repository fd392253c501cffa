package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/kadosession/kadosession/cluster"
)

func status(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of any node")
	asJSON := fs.Bool("json", false, `print one JSON object: {"leader_id", "nodes": [{"id", "address", "state", "voter", …}]}`)
	fs.Usage = usageWithEnv(fs, "kadosession status [--cluster HOST:PORT] [--json]",
		"Shows every member of the cluster as the node at --cluster sees it; a member that does not answer is 'unreachable'.\n"+
			"Exits 1 when the cluster has no leader (after printing what the node sees).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	body, err := adminCall(*addr, &cf, []byte(`{"op":"cluster"}`))
	if err != nil {
		return err
	}
	var st cluster.ClusterStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("node answered something that is not status JSON: %v", err)
	}
	// The node asked may know no leader where the members do (it was
	// removed, or is cut off): the cluster has a leader if one reports so.
	leaderID, leaderAddr, note := st.LeaderID, st.Leader, ""
	for _, n := range st.Nodes {
		if leaderID == "" && n.State == "leader" {
			leaderID, leaderAddr = n.ID, n.Address
			why := fmt.Sprintf("is %s removed or cut off?", *addr)
			if st.NotMember {
				why = "it is not a member: removed"
			}
			note = fmt.Sprintf("note: the node at %s knows no leader, but %s reports leading (%s)\n", *addr, n.ID, why)
		}
	}
	if note != "" {
		// Its configuration may be stale too (removed while it was down,
		// it still lists itself as a voter): the leader's view is the
		// cluster's membership and tolerance, not the asked node's.
		if lb, err := adminCall(leaderAddr, &cf, []byte(`{"op":"cluster"}`)); err == nil {
			var ls cluster.ClusterStatus
			if json.Unmarshal(lb, &ls) == nil && ls.LeaderID == leaderID && ls.ClusterID == st.ClusterID {
				body, st = lb, ls
				note = strings.TrimSuffix(note, "\n") + fmt.Sprintf("; the cluster as %s sees it:\n", leaderID)
			}
		}
	}
	st.SetLags() // a node from before NodeStatus.Lag sends none
	if st.NotMember && len(st.Nodes) == 0 && !*asJSON {
		// Added and removed before the configuration admitting it
		// reached it: its readiness and health say it is not a member.
		return fmt.Errorf("the node at %s is not a member of the cluster: it was removed (before it received the cluster's configuration) and serves no requests; ask another node, or re-admit it with kadosession join", *addr)
	}
	if len(st.Nodes) == 0 && !*asJSON {
		// No configuration yet: a node started with --join that its
		// cluster has not admitted (a table of no voters read as a lost
		// cluster).
		return fmt.Errorf("the node at %s is in no cluster yet: started with --join, it waits to be admitted (its log says by whom); ask again in a moment, or ask another node", *addr)
	}
	if *asJSON {
		if _, err := fmt.Fprintf(stdout, "%s\n", body); err != nil {
			return err
		}
	} else {
		leader := "none"
		if leaderID != "" {
			leader = fmt.Sprintf("%s (%s)", leaderID, leaderAddr)
		}
		fmt.Fprintf(stdout, "cluster %s, leader %s\nvoters: %d of %d reachable, quorum %d: %s\n%s\n", st.ClusterID, leader,
			st.VotersReachable, st.Voters, st.Quorum, tolerance(st.FailuresLeft, st.Nodes), note)
		// LAG: log entries the member has yet to apply that the leader
		// has applied (a member falling behind, or catching up).
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tADDRESS\tVOTER\tSTATE\tLAST CONTACT\tAPPLIED\tLAG\tSESSIONS")
		for _, n := range st.Nodes {
			if n.State == "unreachable" {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t-\t-\t-\t-\n", n.ID, n.Address, n.Voter, n.State)
				continue
			}
			lag := "-"
			if n.Lag != nil {
				lag = fmt.Sprint(*n.Lag)
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%d\t%s\t%d\n", n.ID, n.Address, n.Voter, n.State, n.LastContact, n.Applied, lag, n.Sessions)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, n := range st.Nodes {
			if n.LogFailure != "" {
				fmt.Fprintf(stdout, "note: %s: %s\n", n.ID, n.LogFailure)
			}
			if n.Behind != "" {
				fmt.Fprintf(stdout, "note: %s: %s\n", n.ID, n.Behind)
			}
		}
		if note := mixedBuilds(st.Nodes); note != "" {
			fmt.Fprintln(stdout, note)
		}
	}
	if leaderID == "" {
		if f := cannotWrite(st.Nodes); f != nil && len(st.Nodes) == 1 {
			return fmt.Errorf("the node has no leader: %s; while that lasts it refuses writes and linearizable reads", f.LogFailure)
		}
		// Scripts and operators can tell from the exit status, as with
		// health; the table above says which members answer.
		return errors.New("the cluster has no leader: writes and linearizable reads wait until one is elected, which needs a quorum of voters reachable")
	}
	return nil
}

// tolerance says how many more voters may fail before the cluster loses
// its quorum (ClusterStatus.FailuresLeft, which counts voters that answer
// but cannot write their raft log as failed too).
func tolerance(more int, nodes []cluster.NodeStatus) string {
	switch {
	case more < 0:
		if cannotWrite(nodes) != nil {
			return fmt.Sprintf("LOST (%d more must come back or be able to write its raft log)", -more)
		}
		return fmt.Sprintf("LOST (%d more must come back)", -more)
	case more == 0:
		return "no further failure tolerated"
	case more == 1:
		return "1 more may fail"
	default:
		return fmt.Sprintf("%d more may fail", more)
	}
}

func join(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("join", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of any node of the cluster")
	id := fs.String("id", "", "id of the node to add (required)")
	nodeAddr := fs.String("address", "", "`HOST:PORT` the node to add serves on (required)")
	fs.Usage = usageWithEnv(fs, "kadosession join --cluster HOST:PORT --id ID --address HOST:PORT",
		"Adds a node to the cluster as a voter. Idempotent: the same id at the same address changes nothing.\n"+
			"A node started with 'serve --join' does this by itself; use this to re-admit a removed node.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *id == "" || *nodeAddr == "" {
		return fmt.Errorf("--id and --address are required")
	}
	req, _ := json.Marshal(map[string]string{"op": "join", "id": *id, "address": *nodeAddr})
	body, err := adminCall(*addr, &cf, req)
	if err != nil {
		return err
	}
	var reply struct {
		Changed  bool   `json:"changed"`
		LeaderID string `json:"leader_id"`
	}
	_ = json.Unmarshal(body, &reply)
	if reply.Changed {
		fmt.Fprintf(stdout, "node %s (%s) joined; leader %s\n", *id, *nodeAddr, reply.LeaderID)
	} else {
		fmt.Fprintf(stdout, "node %s (%s) was already a member; nothing changed\n", *id, *nodeAddr)
	}
	return nil
}

func remove(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("remove", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT` of any node of the cluster")
	id := fs.String("id", "", "id of the node to remove (required)")
	fs.Usage = usageWithEnv(fs, "kadosession remove --cluster HOST:PORT --id ID",
		"Removes a node from the cluster. Stop the node afterwards. To bring it back, 'kadosession join' re-admits it with its data (it catches up from the leader), or start it with an empty --data and --join.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return fmt.Errorf("--id is required")
	}
	req, _ := json.Marshal(map[string]string{"op": "remove", "id": *id})
	if _, err := adminCall(*addr, &cf, req); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "node %s removed\n", *id)
	return nil
}

// cannotWrite returns a voter that answers but cannot write its raft log
// (NodeStatus.LogFailure), or nil.
func cannotWrite(nodes []cluster.NodeStatus) *cluster.NodeStatus {
	for i := range nodes {
		if nodes[i].Voter && nodes[i].LogFailure != "" {
			return &nodes[i]
		}
	}
	return nil
}

// mixedBuilds notes members that answered with an older raft log version
// than others (a rolling upgrade under way), or returns "".
func mixedBuilds(nodes []cluster.NodeStatus) string {
	newest := 0
	for _, n := range nodes {
		newest = max(newest, n.LogVersion)
	}
	var older []string
	for _, n := range nodes {
		if n.State != "unreachable" && n.LogVersion < newest {
			older = append(older, fmt.Sprintf("%s (%d)", n.ID, n.LogVersion))
		}
	}
	if len(older) == 0 {
		return ""
	}
	return fmt.Sprintf("note: members run different builds: %s apply an older raft log version than %d; until every member is upgraded, the leader writes the older format (a revoke may run twice if retried through another leader, and a patch may bring back a session deleted meanwhile)",
		strings.Join(older, ", "), newest)
}
