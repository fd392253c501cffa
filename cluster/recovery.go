package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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
	conf, err := raft.ReadConfigJSON(path)
	if err != nil {
		return fmt.Errorf("recovery file %s cannot be read: %w (format: [{\"id\":\"n1\",\"address\":\"HOST:PORT\",\"non_voter\":false}, …]); fix it or move it away", path, err)
	}
	self := false
	for _, s := range conf.Servers {
		self = self || s.ID == raft.ServerID(n.id)
	}
	if !self {
		return fmt.Errorf("recovery file %s does not list this node (id %s): list every surviving node, this one included", path, n.id)
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
