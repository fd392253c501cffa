package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
)

// PeersJSON is the file in a node's data directory that, when present at
// start, replaces the raft configuration this node holds (disaster
// recovery after a quorum is lost for good), through raft.RecoverCluster.
// Its format is raft's:
//
//	[{"id": "n1", "address": "10.0.0.1:3001", "non_voter": false}, …]
//
// Put the same file on every surviving node (stopped), then start them:
// they form a cluster of the listed members, keeping the sessions each
// holds (the most up-to-date one wins the election). After use the file is
// renamed peers.json.applied so a later restart does not apply it again.
// The recovered cluster gets a new cluster id (recoveredClusterID).
const PeersJSON = "peers.json"

// recoverFromPeersJSON applies DataDir/peers.json, if any, before raft
// starts. It must be called with the stores raft will use.
func (n *Node) recoverFromPeersJSON(rc *raft.Config, logs raft.LogStore, snaps raft.SnapshotStore) error {
	path := filepath.Join(n.cfg.DataDir, PeersJSON)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	conf, err := n.readPeersJSON(path)
	if err != nil {
		return fmt.Errorf("recovery file %s: %w (format: [{\"id\":\"n1\",\"address\":\"HOST:PORT\",\"non_voter\":false}, …]); fix it or move it away", path, err)
	}
	if err := raft.RecoverCluster(rc, n.fsm, logs, n.bolt, snaps, n.trans, conf); err != nil {
		return fmt.Errorf("recover the cluster from %s: %w", path, err)
	}
	// A recovered cluster is another cluster than the one its data came
	// from: a node holding a copy of that data (or the original cluster,
	// still running elsewhere) must not be able to join it, nor it them.
	// Every survivor given the same file derives the same new id, also
	// when a start was interrupted after the new id was kept but before
	// the file was marked applied (recoveredFrom).
	old, err := n.recoveredFrom(path, conf)
	if err != nil {
		return err
	}
	recovered := recoveredClusterID(old, conf)
	if err := saveClusterID(n.cfg.DataDir, recovered); err != nil {
		return fmt.Errorf("recovered from %s but cannot record the new cluster id: %w", path, err)
	}
	n.setClusterID(recovered)
	if err := os.Rename(path, path+".applied"); err != nil {
		return fmt.Errorf("recovered from %s but cannot rename it (remove it before the next start): %w", path, err)
	}
	_ = os.Remove(filepath.Join(n.cfg.DataDir, recoveredFromFile))
	n.log.Warn("raft configuration replaced from the recovery file; this is now a cluster of its own", "file", path, "members", len(conf.Servers),
		"old_cluster_id", old, "cluster_id", recovered)
	return nil
}

// readPeersJSON reads and checks the recovery file: applied, it cannot be
// undone, so a member at an address nobody serves, a misspelt field (its
// value silently taken as false) or this node listed as a non-voter or
// elsewhere than --advertise must be refused now, not found out later.
func (n *Node) readPeersJSON(path string) (raft.Configuration, error) {
	f, err := os.Open(path)
	if err != nil {
		return raft.Configuration{}, err
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, 1<<20))
	dec.DisallowUnknownFields()
	var peers []struct {
		ID       *string `json:"id"`
		Address  *string `json:"address"`
		NonVoter bool    `json:"non_voter"`
	}
	if err := dec.Decode(&peers); err != nil {
		return raft.Configuration{}, fmt.Errorf("not a JSON array of members: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return raft.Configuration{}, errors.New("data after the array of members")
	}
	var conf raft.Configuration
	ids, addrs := map[string]bool{}, map[string]bool{}
	self := false
	for i, p := range peers {
		if p.ID == nil || p.Address == nil {
			return conf, fmt.Errorf("member #%d: \"id\" and \"address\" are both required", i+1)
		}
		id, addr := *p.ID, *p.Address
		if err := validateID(id); err != nil {
			return conf, fmt.Errorf("member #%d: %w", i+1, err)
		}
		if checkPeerAddr(addr) != nil {
			return conf, fmt.Errorf("member %s: address %q is not HOST:PORT", id, addr)
		}
		if ids[id] || addrs[addr] {
			return conf, fmt.Errorf("member %s: its id or its address %s is listed twice", id, addr)
		}
		ids[id], addrs[addr] = true, true
		suffrage := raft.Voter
		if p.NonVoter {
			suffrage = raft.Nonvoter
		}
		if id == n.id {
			self = true
			if p.NonVoter {
				return conf, fmt.Errorf("this node (id %s) is listed as a non-voter: list it as a voter, in every survivor's file alike", id)
			}
			if addr != n.cfg.Advertise {
				return conf, fmt.Errorf("this node (id %s) is listed at %s, but peers and clients reach it at %s (--advertise)", id, addr, n.cfg.Advertise)
			}
		}
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: suffrage})
	}
	if !self {
		return conf, fmt.Errorf("this node (id %s) is not listed: list every surviving node, this one included", n.id)
	}
	return conf, nil
}

// recoveredFromFile keeps, while a recovery is applied, the cluster id it
// started from and the members it names.
const recoveredFromFile = "cluster-id.before-recovery"

// recoveredFrom returns the cluster id the recovery to conf starts from:
// the node's, recorded first, or the one recorded by an earlier attempt at
// the same recovery (same members) that stopped before it was complete.
// Deriving from the node's id again would then give this survivor another
// id than the others'.
func (n *Node) recoveredFrom(path string, conf raft.Configuration) (string, error) {
	file := filepath.Join(n.cfg.DataDir, recoveredFromFile)
	key := recoveredClusterID("", conf) // names the members
	if b, err := os.ReadFile(file); err == nil {
		if old, k, ok := strings.Cut(strings.TrimSpace(string(b)), " "); ok && k == key {
			return old, nil
		}
	}
	old := n.ClusterID()
	if err := writeFileAtomic(file, []byte(old+" "+key+"\n")); err != nil {
		return "", fmt.Errorf("recovering from %s: cannot record the cluster id it starts from: %w", path, err)
	}
	return old, nil
}

// recoveredClusterID is the id of the cluster recovered from the cluster
// old with the members conf: the same for every survivor given the same
// members, in any order, and another for any other recovery.
func recoveredClusterID(old string, conf raft.Configuration) string {
	members := make([]string, 0, len(conf.Servers))
	for _, s := range conf.Servers {
		members = append(members, fmt.Sprintf("%s\x00%s\x00%d", s.ID, s.Address, s.Suffrage))
	}
	slices.Sort(members)
	h := sha256.Sum256([]byte("kadosession recovery\x00" + old + "\x00" + strings.Join(members, "\x00")))
	return hex.EncodeToString(h[:8])
}
