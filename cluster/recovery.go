package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
	if err := os.Rename(path, path+".applied"); err != nil {
		return fmt.Errorf("recovered from %s but cannot rename it (remove it before the next start): %w", path, err)
	}
	n.log.Warn("raft configuration replaced from the recovery file", "file", path, "members", len(conf.Servers))
	return nil
}
