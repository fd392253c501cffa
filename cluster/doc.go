// Package cluster runs one kadosession node: the fsm wired to
// hashicorp/raft (a raft-boltdb/v2 log and stable store behind a cache of the newest entries,
// file snapshots, raft traffic on the node's one port through a custom
// StreamLayer), bootstrap of a new single node, the group committer that
// packs many session writes into one log entry, linearizable reads through a
// batched read index, the periodic save file, its import at first start, the
// prune ticker and an orderly shutdown.
package cluster
