package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// Node is one running kadosession node. Its methods are safe for concurrent
// use. Open starts it; Close stops it.
type Node struct {
	cfg    Config
	id     string
	log    hclog.Logger
	fsm    *trackedFSM
	raft   *raft.Raft
	bolt   *raftboltdb.BoltStore
	mapped *mappedPages // the log store's mapped pages (nil: not dropped)
	// freePages gives the log file's free pages back to the file system
	// while the disk is short (nil: it cannot here).
	freePages *freePageReturn
	trans     *raft.NetworkTransport
	stream    *streamLayer
	server    *transport.Server
	ln        net.Listener
	commit    *committer
	reads     *readIndex
	// freads serves linearizable reads on a follower (follower_read.go).
	freads *followerReads
	fwd    *forwarder
	// contacts: when each peer last answered this node as leader (peers.go).
	contacts *peerContacts

	obs     *metrics     // Prometheus metrics (metrics.go)
	httpSrv *adminHTTP   // Config.HTTP endpoint, nil when off (admin_http.go)
	backups *backupStore // backups held for streaming (backup.go)

	clusterID atomic.Pointer[string]
	// caughtUp gates stale reads and readiness after start (watchCatchUp);
	// catchUpTarget is the leader's commit index it waits for (0: not
	// learnt yet).
	caughtUp      atomic.Bool
	catchUpMu     sync.Mutex // one learnCatchUpTarget at a time
	catchUpTried  time.Time  // its last try (catchUpMu)
	catchUpTarget atomic.Uint64
	ledSince      atomic.Int64 // when this node last took office (Unix ns); 0: never
	// leaderLostAt is when raft last reported no leader (Unix ns), 0 while
	// it knows one or has not yet reported (noLeaderFor).
	leaderLostAt atomic.Int64
	leaderMu     sync.Mutex
	leaderCh     chan struct{} // closed when raft reports a new leader
	memberMu     sync.Mutex    // one membership change at a time
	logHealth    logHealth     // whether the raft log can be written
	applied      appliedTrail  // the applied index over the last behindAfter (status: who is behind)
	raftConfMu   sync.Mutex    // one change to raft's ReloadableConfig at a time
	// transferHook, when a test sets it, stands in for raft's leadership
	// transfer in handOver.
	transferHook func(raft.ServerID, raft.ServerAddress) error
	routine      routineLines // routine snapshot lines logged at info now and then
	// versions: the log versions members reported; clusterVersion: the
	// newest all of them apply, as last found (nil: not yet); versionFloor:
	// the newest all of them once applied at the same time (logversion.go).
	versions       logVersions
	clusterVersion atomic.Pointer[foundVersion]
	versionFloor   atomic.Int32
	floorMu        sync.Mutex           // one raiseVersionFloor at a time
	olderWarned    atomic.Int64         // when revokeUser last warned of an older member (Unix ns)
	removedAt      map[string]time.Time // ids this node removed lately (noteRemoved); memberMu
	// removedUntil: once a leader told this node it was removed, the
	// first log index past its removal (0: never told). The leader stops
	// replicating to a node as it removes it, so the node may never see
	// the configuration that leaves it out; one that is re-admitted
	// receives entries past it.
	removedUntil atomic.Uint64
	fatal        chan error

	// peerClusterWarned: peer address -> when verifyPeerCluster last
	// logged its refusal.
	peerClusterWarned sync.Map

	ready     atomic.Bool
	stop      chan struct{}
	bg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	// refuseAtIndex makes the node answer at-index reads as nodes from
	// before them do (tests of the rolling-upgrade fallback).
	refuseAtIndex atomic.Bool
}

// trackedFSM is the fsm.FSM raft applies to, noting the applied index.
type trackedFSM struct {
	*fsm.FSM
	applied *appliedIndex
	opened  atomic.Uint64 // see indexedSnapshots
	growth  *logGrowth
	writing sync.Mutex // held by writeState
	dataDir string     // the node's, for the snapshots' reserveBudget
	// held, when set, holds every apply until it is closed (tests of a
	// node that has entries it has not applied yet).
	held atomic.Pointer[chan struct{}]
}

// wait waits while a test holds applies (held).
func (t *trackedFSM) wait() {
	if h := t.held.Load(); h != nil {
		<-*h
	}
}

// writeState runs write, which writes the whole state (a snapshot's Persist
// or the save file: the same document), one at a time and in the
// background (inBackground). The leader once encoded both at once while a
// follower wrote its own, and saves stalled for 0.9 s.
func (t *trackedFSM) writeState(write func() error) error {
	t.writing.Lock()
	defer t.writing.Unlock()
	return inBackground(write)
}

func (t *trackedFSM) Apply(l *raft.Log) any {
	t.wait()
	r := t.FSM.Apply(l)
	t.applied.set(l.Index)
	t.growth.add(len(l.Data), 1)
	return r
}

func (t *trackedFSM) ApplyBatch(logs []*raft.Log) []any {
	t.wait()
	r := t.FSM.ApplyBatch(logs)
	if len(logs) > 0 {
		t.applied.set(logs[len(logs)-1].Index)
	}
	size := 0
	for _, l := range logs {
		size += len(l.Data)
	}
	t.growth.add(size, len(logs))
	return r
}

// Snapshot captures the state; once written, the log it covers no longer
// counts toward the next snapshot (logGrowth).
func (t *trackedFSM) Snapshot() (raft.FSMSnapshot, error) {
	mark := t.growth.captured()
	s, err := t.FSM.Snapshot()
	if err != nil {
		return nil, err
	}
	return &countedSnapshot{FSMSnapshot: s, growth: t.growth, mark: mark, writeState: t.writeState, dataDir: t.dataDir}, nil
}

// Restore restores a snapshot; the applied index becomes the snapshot's
// (noted by indexedSnapshots.Open, which raft calls just before).
func (t *trackedFSM) Restore(rc io.ReadCloser) error {
	c := &countingReader{ReadCloser: rc}
	if err := t.FSM.Restore(c); err != nil {
		return err
	}
	t.applied.set(t.opened.Load())
	t.growth.restored(c.n)
	return nil
}

// countingReader counts what is read through it.
type countingReader struct {
	io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	return n, err
}

var _ raft.BatchingFSM = (*trackedFSM)(nil)

// indexedSnapshots notes the index of the snapshot raft last opened, which
// is the one it restores next (trackedFSM.Restore).
type indexedSnapshots struct {
	raft.SnapshotStore
	opened *atomic.Uint64
}

func (s indexedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err == nil {
		s.opened.Store(meta.Index)
	}
	return meta, rc, err
}

const importMarker = "save-file-imported"

// snapshotsRetained is how many snapshots a node keeps.
const snapshotsRetained = 2

// Open validates cfg, opens (or creates) the node's data directory, starts
// raft and serves the node's port. A new data directory without Join
// bootstraps a single-node cluster; its save file, if any, is imported
// before client requests are served. Errors say what to do.
func Open(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger
	n := &Node{cfg: cfg, log: log, stop: make(chan struct{}), fatal: make(chan error, 1), contacts: newPeerContacts()}
	ok := false
	defer func() {
		if !ok {
			n.teardown()
		}
	}()
	// Everything that can refuse a start for a reason the operator then
	// corrects (an address in use, a corrupt save file) comes before the
	// data directory is touched: a failed start that had already written a
	// node id, or bootstrapped a cluster, refused the corrected rerun or
	// left it joining nothing.
	var err error
	if n.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		hint := "check --listen"
		if errors.Is(err, syscall.EADDRINUSE) {
			hint += ": is another node already running there?"
		}
		return nil, fmt.Errorf("listen on %s: %w (%s)", cfg.Listen, err, hint)
	}
	if cfg.Advertise == "" {
		if ip := n.ln.Addr().(*net.TCPAddr).IP; ip.IsUnspecified() {
			return nil, fmt.Errorf("listening on %s (every interface) needs --advertise HOST:PORT: the address peers and clients should use", cfg.Listen)
		}
		cfg.Advertise = n.ln.Addr().String()
		n.cfg.Advertise = cfg.Advertise
	}
	if n.httpSrv, err = listenHTTP(cfg.HTTP, log.Named("http")); err != nil {
		return nil, err
	}
	// The save file is read when it may be imported (no import recorded
	// yet). Once imported it is only written: reading it at every start
	// cost a restart with 1M sessions seconds and a second copy in memory.
	if err := checkSaveFilePath(cfg.SaveFile, cfg.DataDir); err != nil {
		return nil, err
	}
	markerPath := filepath.Join(cfg.DataDir, importMarker)
	_, markerErr := os.Stat(markerPath)
	var imported map[string]*fsm.Record
	if errors.Is(markerErr, os.ErrNotExist) {
		now := time.Now().UnixMilli()
		var badIDs int
		if imported, badIDs, err = readSaveFile(cfg.SaveFile, now); err != nil {
			return nil, err
		}
		if badIDs > 0 {
			log.Warn("sessions of the save file have ids this store cannot hold (empty, or over 512 bytes: Kado took any cookie's value); they are not imported",
				"file", cfg.SaveFile, "sessions", badIDs)
		}
		moved, err := n.screenRecords(imported, now)
		if err != nil {
			return nil, fmt.Errorf("save file %s cannot be imported (it is left untouched): %w", cfg.SaveFile, err)
		}
		if moved > 0 {
			log.Warn("sessions of the save file were saved in the future by this node's clock; they count as saved now", "file", cfg.SaveFile, "sessions", moved)
		}
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "raft.db")); len(cfg.Join) > 0 && len(imported) > 0 && errors.Is(err, os.ErrNotExist) {
			// A new node joining a cluster takes its sessions from the
			// cluster and rewrites its save file with them: a Kado save
			// file copied in for it was lost without a word.
			return nil, fmt.Errorf("save file %s holds %d sessions, but a node started with --join takes its sessions from the cluster it joins, and would overwrite the file: "+
				"load them into the cluster with kadosession restore --cluster %s --in FILE (add --replace if it holds sessions) from a copy kept elsewhere, "+
				"then move %s away and start again (move it away too if the cluster already holds them: this node's own save file from before its raft data was lost); or start without --join to seed a new cluster from it",
				cfg.SaveFile, len(imported), cfg.Join[0], cfg.SaveFile)
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	n.obs, n.backups = newMetrics(n), newBackupStore()
	n.fwd = newForwarder(transport.ConnConfig{Magic: transport.MagicPeer, DialTimeout: n.peerWait(2 * time.Second),
		TLSConfig: cfg.PeerTLS, Token: string(cfg.Server.PeersToken()), Dialer: cfg.Dialer})
	clusterID, err := loadClusterID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	n.bolt, err = raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(cfg.DataDir, "raft.db"),
		// The freelist is rebuilt when the file is opened instead of being
		// written by every commit: one write less per fsync.
		BoltOptions: &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("data directory %s is in use by another kadosession process", cfg.DataDir)
		}
		return nil, fmt.Errorf("open raft log: %w", err)
	}
	n.loadVersionFloor()
	n.mapped = newMappedPages(n.bolt)
	// Opening read every page of the file: bbolt rebuilds its freelist by
	// walking the tree (NoFreelistSync).
	n.mapped.drop()
	n.freePages = newFreePageReturn(n.mapped, filepath.Join(cfg.DataDir, "raft.db"), cfg.DataDir, log.Named("raft-log"))
	n.freePages.ifShort()
	var logStore raft.LogStore = chunkedCompaction{LogStore: n.bolt, mapped: n.mapped, obs: n.obs, free: n.freePages}
	if cfg.wrapLogStore != nil {
		logStore = cfg.wrapLogStore(logStore)
	}
	n.logHealth.changed = make(chan struct{}, 1)
	logStore = healthLog{logStore, &n.logHealth}
	logs := newLogCache(logStore, 512, 64<<20)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, snapshotsRetained, quietRaft{Logger: log.Named("snapshot"), errors: new(sayEachEvery)})
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	hasState, err := raft.HasExistingState(logs, n.bolt, snaps)
	if err != nil {
		return nil, fmt.Errorf("read raft state: %w", err)
	}
	if errors.Is(markerErr, os.ErrNotExist) {
		if v, err := n.bolt.Get(importKey); err == nil && len(v) > 0 {
			// The record file is gone (deleted by hand, or its write
			// failed) but the raft log's copy says the import is done:
			// importing again would bring back sessions changed or
			// deleted since the save file was written.
			log.Info("the record of the save-file import was missing; the raft log says it is done, so the save file is not imported again", "file", markerPath)
			markerErr, imported = nil, nil
			if err := writeFileAtomic(markerPath, v); err != nil {
				log.Warn("cannot write the record of the save-file import again", "file", markerPath, "error", err)
			}
		}
	}
	// A data directory that never became part of a cluster (a --join that
	// never got an answer: no raft state, no cluster id) takes a new --id:
	// no cluster knows the id it kept.
	id, replaced, err := loadNodeID(cfg.DataDir, cfg.ID, !hasState && clusterID == "")
	if err != nil {
		return nil, err
	}
	if replaced != "" {
		log.Info("the data directory's node id was never part of a cluster; using --id", "was", replaced, "id", id)
	}
	n.id = id
	if hasState && clusterID == "" {
		// State from an unrecorded cluster: give it an identity of its own,
		// so that it can never be merged into another cluster by a join.
		clusterID = newClusterID()
		if err := saveClusterID(cfg.DataDir, clusterID); err != nil {
			return nil, err
		}
	}
	if clusterID != "" {
		n.setClusterID(clusterID)
	}

	n.stream = newStreamLayer(advertisedAddr(cfg.Advertise), cfg.PeerTLS, cfg.Server.PeersToken())
	n.stream.tokenToo = len(cfg.Server.PeerToken) > 0
	n.stream.verify = n.verifyPeerCluster
	if cfg.Dialer != nil {
		n.stream.dialer = func(address string, timeout time.Duration) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			return cfg.Dialer(ctx, "tcp", address)
		}
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  n.stream,
		MaxPool: 4,
		Timeout: 5 * time.Second,
		Logger:  quietShutdown{log.Named("raft-net")},
	})
	growth := n.scaleLogToDisk()
	n.fsm = &trackedFSM{FSM: fsm.NewFSM(), applied: newAppliedIndex(), growth: growth, dataDir: cfg.DataDir}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = quietRaft{Logger: log.Named("raft"), health: &n.logHealth, self: id, routine: &n.routine}
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	if cfg.TrailingLogs == 0 {
		rc.TrailingLogs = growth.trailingLogs(time.Now())
	}
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = appendEntriesFor(growth.budget)
	if err := n.recoverFromPeersJSON(rc, logs, snaps); err != nil {
		return nil, err
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, n.bolt, indexedSnapshots{n.obs.snapshotStore(pacedSnapshots{newTidySnapshots(snaps, cfg.DataDir, log.Named("snapshot")), cfg.DataDir, snapshotsRetained}), &n.fsm.opened}, noPipeline{n.trans})
	if err != nil {
		if strings.Contains(err.Error(), "snapshot") {
			return nil, fmt.Errorf("start raft: %w: the snapshots in %s are damaged (truncated or corrupt) and none could be loaded; "+
				"if other members are healthy, remove this node (kadosession remove), empty %s and start it again with --join", err, filepath.Join(cfg.DataDir, "snapshots"), cfg.DataDir)
		}
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if metas, err := snaps.List(); err == nil && len(metas) > 0 {
		start := time.Now()
		read, err := rememberBeforeSnapshot(logs, metas[0].Index, metas[0].Term, n.fsm.State, start)
		if err != nil {
			// Not fatal: retried writes from before the snapshot are then
			// not recognised (fsm.DedupeWindow), as before this existed.
			log.Warn("could not read the log entries before the snapshot to recognise retried writes", "error", err)
		} else if read > 0 {
			log.Debug("recognising retried writes from before the snapshot", "entries", read, "took", time.Since(start))
		}
	}
	bootstrapped := false
	if !hasState && len(cfg.Join) == 0 {
		conf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(id), Address: raft.ServerAddress(cfg.Advertise)}}}
		if err := n.raft.BootstrapCluster(conf).Error(); err != nil {
			return nil, fmt.Errorf("bootstrap single-node cluster: %w", err)
		}
		bootstrapped = true
		clusterID = newClusterID()
		if err := saveClusterID(cfg.DataDir, clusterID); err != nil {
			return nil, err
		}
		n.setClusterID(clusterID)
		log.Info("bootstrapped a new single-node cluster", "id", id, "address", cfg.Advertise, "cluster_id", clusterID)
	}
	needImport := errors.Is(markerErr, os.ErrNotExist) && (bootstrapped || hasState)
	if !needImport && errors.Is(markerErr, os.ErrNotExist) {
		n.recordJoined(markerPath) // a joining node takes its state from the cluster, never from a file
	}

	// Before the goroutines below: watchCatchUp reads it (isCaughtUp).
	n.reads = &readIndex{raft: n.raft, logs: logs, applied: n.fsm.applied, self: raft.ServerID(id), askTerm: n.askTerm,
		confirmWait: n.peerWait(confirmTimeout), barrierSem: make(chan struct{}, 1)}
	n.reads.rounds.do = n.reads.confirmRound
	n.reads.rounds.holds = func(term uint64) bool { return term == n.raft.CurrentTerm() }
	n.leaderCh = make(chan struct{})
	obs := make(chan raft.Observation, 16)
	n.raft.RegisterObserver(raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	}))
	n.bg.Add(1)
	go n.watchLeader(obs)
	votes := make(chan raft.Observation, 16)
	n.raft.RegisterObserver(raft.NewObserver(votes, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.RequestVoteRequest, raft.RequestPreVoteRequest:
			return true
		}
		return false
	}))
	n.bg.Add(1)
	go n.tellStrayVoters(votes)
	n.bg.Add(1)
	go n.probePeers()
	n.bg.Add(1)
	go n.watchLogVersions()
	n.bg.Add(1)
	go n.watchCatchUp()
	n.bg.Add(1)
	go n.snapshotOnLogGrowth()
	n.bg.Add(1)
	go n.watchLogHealth()
	n.bg.Add(1)
	go n.recordApplied()
	if n.freePages != nil {
		n.bg.Add(1)
		go func() {
			defer n.bg.Done()
			n.freePages.run(n.stop)
		}()
	}
	n.commit = newCommitter(n.raft, 10*time.Second, batchBytesFor(growth.budget))
	n.commit.applied = n.fsm.State.Applied
	n.commit.obs = n.obs
	n.commit.logVersion = n.foundLogVersion
	n.freads = &followerReads{n: n}
	n.freads.rounds.do = n.freads.ask
	scfg := cfg.Server
	scfg.Logger = log.Named("server")
	scfg.MaxKeys = cfg.MaxKeys
	scfg.Routes = map[byte]func(net.Conn){transport.MagicRaft: n.stream.handoff}
	n.server = transport.NewServer(observedHandler{n}, scfg)
	go func() {
		if err := n.server.Serve(n.ln); err != nil && !errors.Is(err, transport.ErrServerClosed) {
			log.Error("serving stopped", "error", err)
		}
	}()
	n.startHTTP()
	if last, err := logs.LastIndex(); err == nil && last > 0 {
		n.bg.Add(1)
		go n.dropAfterReplay(last)
	}
	n.bg.Add(1)
	go n.startup(needImport, imported, markerPath, len(cfg.Join) > 0 && !hasState)
	ok = true
	log.Info("node started", "id", id, "listen", n.ln.Addr().String(), "advertise", cfg.Advertise, "data", cfg.DataDir)
	return n, nil
}

// dropAfterReplay drops the log store's mapped pages once raft has applied
// the log a restart found (up to index last): raft replays the
// entries after the snapshot through bbolt's mapping, and they stayed
// resident (1M sessions, single node: 510 MB, VmRSS 2.1 GB at its peak)
// until the next compaction.
func (n *Node) dropAfterReplay(last uint64) {
	defer n.bg.Done()
	// Raft's applied index, not the state machine's: the log may end in
	// entries the state machine never sees (a new leader's no-op).
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for n.raft.AppliedIndex() < last {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
	n.mapped.drop()
}

// soleVoterJoinCheck is how long a node that is the only voter of its
// cluster, started with --join, waits for --join's nodes to say which
// cluster they belong to before it serves anyway.
const soleVoterJoinCheck = 10 * time.Second

// startup waits for a leader, imports the save file when this is the node's
// first start, then lets client requests in and starts the timers.
func (n *Node) startup(needImport bool, records map[string]*fsm.Record, markerPath string, mustJoin bool) {
	defer n.bg.Done()
	if len(n.cfg.Join) == 0 && !mustJoin && n.removed() {
		// Removed while it was down (or after the leader's notice was
		// lost), and restarted without --join: nothing else says why it
		// serves nothing, but raft's own warnings.
		n.log.Warn("this node is not a member of its cluster's configuration (it was removed): it serves no requests until it is a member again (kadosession join --cluster <a member> --id "+n.id+" --address "+n.cfg.Advertise+" re-admits it, or restart it with --join <a member>); a node removed for good should be stopped",
			"id", n.id, "members", n.memberList())
	}
	if len(n.cfg.Join) > 0 {
		// ok reports whether err is nil; a join error is fatal to the node.
		ok := func(err error) bool {
			if err == nil {
				return true
			}
			select {
			case <-n.stop:
			default:
				n.log.Error("cannot join the cluster", "error", err)
				n.fatal <- err
			}
			return false
		}
		confirmed := false
		if !mustJoin && n.voters() == 1 && n.isMember() {
			// The only voter of its cluster, started with --join: before it
			// serves, --join's nodes must confirm that cluster is theirs, or
			// it would serve a cluster apart (checkJoinCluster). If none of
			// them answers for a while (a lone survivor after a disaster
			// recovery, its seeds gone for good), it serves, and goes on
			// asking in the background.
			var err error
			if confirmed, err = n.checkJoinCluster(soleVoterJoinCheck); !ok(err) {
				return
			}
		}
		switch {
		case mustJoin:
			if !ok(n.joinLoop()) { // a new node serves once it is a member
				return
			}
			if !n.awaitAdmission() {
				return
			}
		case !confirmed:
			// Already a member: re-joining is a no-op, but --join's nodes
			// must be of its cluster (checkJoinCluster).
			n.bg.Add(1)
			go func() { defer n.bg.Done(); ok(n.joinLoop()) }()
		}
	}
	if needImport && !n.waitImporter(markerPath) {
		select {
		case <-n.stop:
			return
		default:
		}
		needImport = false
	}
	if needImport {
		if err := n.importRecords(records); err != nil {
			n.log.Error("import of the save file failed; the node will not serve clients until restarted", "file", n.cfg.SaveFile, "error", err)
			return
		}
		if err := n.recordImport(markerPath, "imported\n"); err != nil {
			n.log.Error("cannot record the save-file import", "error", err)
		}
		if len(records) > 0 {
			n.log.Info("imported the save file", "file", n.cfg.SaveFile, "sessions", len(records))
			if expired := fsm.CountExpired(records, time.Now().UnixMilli(), n.cfg.Duration.Milliseconds()); expired > 0 {
				n.log.Warn("sessions of the save file were saved longer ago than --duration: they read as absent, and the next prune removes them",
					"file", n.cfg.SaveFile, "expired", expired, "sessions", len(records), "duration", n.cfg.Duration)
			}
		}
	}
	n.ready.Store(true)
	select {
	case <-n.stop:
		return
	default:
	}
	n.bg.Add(2)
	go n.saveLoop()
	go n.pruneLoop()
}

// awaitAdmission waits, after a join was granted, until this node's own
// log holds the configuration that admits it: the leader committed it,
// then replicates it here. Until then the node's configuration does not
// name it, and it would answer requests as a node removed from the cluster
// (removed). It reports false when the node stops first.
func (n *Node) awaitAdmission() bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	since := time.Now()
	for {
		if _, ok, err := n.member(); err == nil && ok {
			return true
		}
		select {
		case <-n.stop:
			return false
		case <-t.C:
		}
		if time.Since(since) >= 10*time.Second {
			if n.toldRemoved() {
				n.log.Warn("removed from the cluster before the configuration admitting this node reached it; it serves once a join re-admits it")
			} else {
				n.log.Warn("admitted to the cluster, but the configuration naming this node has not reached it yet; it serves once it has")
			}
			since = time.Now()
		}
	}
}

// recordJoined records at markerPath (importMarker) that this node takes
// its state from the cluster, never from its save file.
func (n *Node) recordJoined(markerPath string) {
	if err := n.recordImport(markerPath, "joined\n"); err != nil {
		n.log.Warn("cannot record that this node takes its state from the cluster", "file", markerPath, "error", err)
	}
}

// importKey is where the raft log's store keeps a copy of the import
// record (importMarker): a node whose record file is lost does not import
// its save file again.
var importKey = []byte("kadosession-save-file-import")

// recordImport writes the import record what at markerPath and its copy
// under importKey.
func (n *Node) recordImport(markerPath, what string) error {
	errKey := n.bolt.Set(importKey, []byte(what))
	if err := writeFileAtomic(markerPath, []byte(what)); err != nil {
		return err
	}
	return errKey
}

// waitImporter waits for a leader and reports whether it is this node,
// which then imports its save file. A node that lacks the record of an
// import (importMarker) but holds state may be a follower (the record's
// write failed, or it was deleted): the cluster's state is the truth then,
// and its save file only a copy. Waiting to lead, as the bootstrapping
// node does, kept such a follower from ever serving. It reports false too
// when the node stops.
func (n *Node) waitImporter(markerPath string) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if n.raft.State() == raft.Leader {
			return true
		}
		if addr, id := n.raft.LeaderWithID(); addr != "" && string(id) != n.id { // itself: State says Leader at the next tick
			n.recordJoined(markerPath)
			n.log.Info("another node leads: this node takes its state from the cluster, not from its save file", "leader", addr)
			return false
		}
		select {
		case <-n.stop:
			return false
		case <-t.C:
		}
	}
}

// futureSlack is how far past this node's clock a save time in a save file
// or backup may be (the clocks of the machines that wrote it) before it is
// taken for now.
const futureSlack = time.Minute

// screenRecords holds records from a save file or a backup to what a live
// save is held to: a session over --max-session-size or --max-keys is
// refused (every later patch of it would fail, and with the middleware
// every request on it), and a save time in the future becomes now (such a
// session would never expire). It reports how many save times it moved.
// Its errors name no session id: ids are credentials.
func (n *Node) screenRecords(records map[string]*fsm.Record, now int64) (moved int, err error) {
	var big, many, biggest, most int
	for _, r := range records {
		if len(r.Data) > n.cfg.MaxSessionSize {
			big++
			biggest = max(biggest, len(r.Data))
		}
		if keys := fsm.CountKeys(r.Data); keys > n.cfg.MaxKeys {
			many++
			most = max(most, keys)
		}
		if r.Written > now+futureSlack.Milliseconds() {
			r.Written = now
			moved++
		}
	}
	var over []string
	if big > 0 {
		over = append(over, fmt.Sprintf("%d over --max-session-size %d bytes (the largest %d bytes)", big, n.cfg.MaxSessionSize, biggest))
	}
	if many > 0 {
		over = append(over, fmt.Sprintf("%d over --max-keys %d (the most %d keys)", many, n.cfg.MaxKeys, most))
	}
	if over != nil {
		return moved, fmt.Errorf("sessions over this node's limits, which every later change to them would fail: %s; raise the limits on every node, or remove those sessions", strings.Join(over, ", "))
	}
	return moved, nil
}

// importRecords replicates records in batches of about 1 MiB, each keeping
// its own save time.
func (n *Node) importRecords(records map[string]*fsm.Record) error {
	batch := fsm.Command{Op: fsm.OpBatch}
	size := 0
	flush := func() error {
		if len(batch.Batch) == 0 {
			return nil
		}
		err := n.raft.Apply(batch.Encode(make([]byte, 0, batch.EncodedLen())), 30*time.Second).Error()
		batch.Batch, size = batch.Batch[:0], 0
		return err
	}
	for sid, r := range records {
		batch.Batch = append(batch.Batch, fsm.Command{Op: fsm.OpSave, Time: r.Written, SID: sid, Data: r.Data})
		if size += len(sid) + len(r.Data) + 16; size >= 1<<20 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// Fatal delivers an error that stops the node from ever serving (a join
// refused for good); the caller should report it and Close the node.
func (n *Node) Fatal() <-chan error { return n.fatal }

// ID returns the node's raft id.
func (n *Node) ID() string { return n.id }

// Addr returns the address the node's port is bound to.
func (n *Node) Addr() string { return n.ln.Addr().String() }

// Ready reports whether the node serves client requests.
func (n *Node) Ready() bool { return n.ready.Load() }

// State returns the node's state machine (for tests and status).
func (n *Node) State() *fsm.State { return n.fsm.State }

// Raft returns the node's raft instance (for tests and status).
func (n *Node) Raft() *raft.Raft { return n.raft }

// SaveNow writes the save file if anything changed since the last write.
func (n *Node) SaveNow() error {
	_, err := n.saveIfChanged(0)
	return err
}

func (n *Node) saveIfChanged(last uint64) (uint64, error) {
	if err := n.stateIncomplete(); err != nil {
		return last, err
	}
	v := n.fsm.State.Version()
	if v == last && last != 0 {
		return last, nil
	}
	start := time.Now()
	budget, err := saveFileBudget(n.cfg.SaveFile, n.cfg.DataDir)
	if err == nil {
		err = n.fsm.writeState(func() error { return writeSaveFile(n.cfg.SaveFile, n.fsm.State.Capture(), budget) })
	}
	n.obs.observeSaveFile(time.Since(start), err)
	if err != nil {
		return last, fmt.Errorf("write save file %s: %w (%s)", n.cfg.SaveFile, err, previousSaveFile(n.cfg.SaveFile))
	}
	return v, nil
}

// errStateIncomplete marks why the save file was not written: the state
// may lack what the node's log, or the save file being imported, holds.
var errStateIncomplete = errors.New("the state is not complete yet")

// stateIncomplete says why the state may not be written as the save file
// yet (nil: it may). Until the node has applied its own log since it
// started, written now the save file lost the sessions since the last
// snapshot (a node restarted on a full disk wrote {} over it once it had
// room); until the save file's import is done, it lost those not yet
// imported, and the next start imported the partial file.
func (n *Node) stateIncomplete() error {
	switch {
	case !n.ready.Load():
		return fmt.Errorf("save file %s not written: %w: the node has not finished starting (importing the save file, or admitted to its cluster); the file is left as it was", n.cfg.SaveFile, errStateIncomplete)
	case !n.isCaughtUp(false):
		return fmt.Errorf("save file %s not written: %w: %s; the file is left as it was", n.cfg.SaveFile, errStateIncomplete, n.catchingUp())
	}
	return nil
}

func (n *Node) saveLoop() {
	defer n.bg.Done()
	t := time.NewTicker(n.cfg.SaveFrequency)
	defer t.Stop()
	var last uint64
	var rested, logged, waited time.Time
	failures := 0 // writes failed in a row
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			if time.Now().Before(rested) {
				continue
			}
			start := time.Now()
			v, err := n.saveIfChanged(last)
			took := time.Since(start)
			// A large save file is a long write on the disk the raft log
			// fsyncs to: the next waits saveRest times as long (1M sessions
			// took 5.5 s a write; every 15 s, three nodes on one disk kept
			// it busy a third of the time and acknowledged writes stalled),
			// times a random 1-1.5, so that nodes started together do not
			// keep writing theirs at the same moment.
			rest := time.Duration(float64(saveRest*took) * (1 + rand.Float64()/2))
			rested = time.Now().Add(rest)
			if took > n.cfg.SaveFrequency/saveRest {
				n.log.Debug("save file write was long; the next one waits", "took", took, "rest", rest)
			}
			if err != nil {
				// Once, then once a minute: a full disk failed every write,
				// every --save-frequency (30 lines a minute at 2 s).
				// kadosession_save_file_writes_total counts each.
				if errors.Is(err, errStateIncomplete) {
					// Nothing failed: the file is left until the node has
					// the whole state (a follower that has not reached its
					// leader since it started). Once a minute.
					if time.Since(waited) >= time.Minute {
						n.log.Warn("save file not written yet; still serving", "reason", err)
						waited = time.Now()
					}
					continue
				}
				if failures++; failures == 1 || time.Since(logged) >= time.Minute {
					n.log.Error("save file not written; still serving", "error", err, "failed_writes", failures)
					logged = time.Now()
				}
				continue
			}
			if failures > 0 {
				n.log.Info("save file written again", "failed_writes", failures)
				failures = 0
			}
			last = v
		}
	}
}

// saveRest is how many times the duration of a save-file write the node
// waits, at least, before the next one.
const saveRest = 4

func (n *Node) pruneLoop() {
	defer n.bg.Done()
	t := time.NewTicker(n.cfg.PruneFrequency)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			if n.raft.State() != raft.Leader {
				continue
			}
			if _, err := n.Prune(context.Background()); err != nil {
				n.log.Warn("prune failed", "error", err)
			}
		}
	}
}

// Prune removes the sessions expired at this leader's time and returns how
// many it removed. The expired sessions are found here, off the goroutine
// that applies, and removed by OpExpire commands naming them (at most
// pruneBatch each), which check each one again when applied; while a
// member's build predates OpExpire, by one OpPrune (logversion.go).
func (n *Node) Prune(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n.raft.State() != raft.Leader {
		return 0, notLeader(n.raft)
	}
	duration := n.cfg.Duration.Milliseconds()
	if v, _ := n.cachedLogVersion(ctx); v < 1 {
		// A member's build predates OpExpire: the slower OpPrune, which
		// scans every session where it is applied (logversion.go).
		r, err := n.commit.submit(ctx, fsm.Command{Op: fsm.OpPrune, Duration: duration})
		n.obs.observePrune(r.Count, err)
		return r.Count, err
	}
	expired := n.fsm.State.ExpiredSessions(time.Now().UnixMilli(), duration)
	total := 0
	var err error
	for len(expired) > 0 && err == nil {
		k := min(len(expired), pruneBatch)
		var r fsm.Result
		r, err = n.commit.submit(ctx, fsm.Command{Op: fsm.OpExpire, Duration: duration, Del: expired[:k]})
		total += r.Count
		expired = expired[k:]
	}
	n.obs.observePrune(total, err)
	if total > 0 {
		n.log.Debug("pruned expired sessions", "count", total)
	}
	return total, err
}

// pruneBatch is how many sessions one OpExpire names at most.
const pruneBatch = 4096

// Close stops the node: it stops accepting connections, hands leadership to
// a peer when it leads a multi-node cluster, writes the save file, shuts raft
// down and closes the stores. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.log.Info("shutting down")
		close(n.stop)
		if n.raft.State() == raft.Leader && n.voters() > 1 {
			start := time.Now()
			if to, err := n.handOver(); err != nil {
				n.log.Warn("leadership transfer failed; the others elect a leader when this node's heartbeats stop", "error", err)
			} else {
				n.log.Info("handed leadership over before stopping", "to", to, "took", time.Since(start).Round(time.Millisecond))
			}
		}
		n.server.Close()
		n.commit.close()
		n.fwd.close()
		n.bg.Wait()
		if n.ready.Load() && !n.isCaughtUp(false) {
			// Stopped just after it was elected: its barrier, which the
			// stop cut short, is what the final save file waits for.
			n.leaderCatchUp()
		}
		switch err := n.SaveNow(); {
		case errors.Is(err, errStateIncomplete):
			// Stopped before it had the whole state: the file on disk is
			// the last whole one, which is not a failure to stop.
			n.log.Warn("final save file not written", "reason", err)
		case err != nil:
			n.log.Error("final save file not written", "error", err)
			n.closeErr = err
		}
		n.teardown()
		n.log.Info("stopped")
	})
	return n.closeErr
}

// handOver hands leadership to the voter that answers now and has applied
// the most: raft's own choice (the furthest replicated) may be a follower
// that has just stopped, and the transfer then failed, leaving an election
// to the others (operator review: 3 of 9 trials).
func (n *Node) handOver() (raft.ServerID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.peerWait(500*time.Millisecond))
	defer cancel()
	cs := n.ClusterStatus(ctx)
	var best *NodeStatus
	for i, s := range cs.Nodes {
		if s.Voter && s.ID != n.id && s.State != "unreachable" && (best == nil || s.Applied > best.Applied) {
			best = &cs.Nodes[i]
		}
	}
	if best == nil {
		return "", errors.New("no other voter answers")
	}
	id := raft.ServerID(best.ID)
	var err error
	if n.transferHook != nil {
		err = n.transferHook(id, raft.ServerAddress(best.Address))
	} else {
		err = n.raft.LeadershipTransferToServer(id, raft.ServerAddress(best.Address)).Error()
	}
	if err == nil {
		return id, nil
	}
	// Raft gives up on a transfer after an election timeout (200 ms) for
	// its TimeoutNow to be answered, and another for the target's election
	// to depose this node: on a busy machine the target then takes over a
	// moment later (-race beside busy loops: this node was deposed 18 ms
	// after it logged that the transfer failed). This node deposed
	// meanwhile has handed over; it names the new leader once it hears
	// from it, else the target.
	deadline := time.Now().Add(handOverGrace * max(n.cfg.ElectionTimeout, n.raft.ReloadableConfig().ElectionTimeout))
	for n.raft.State() == raft.Leader {
		if time.Now().After(deadline) {
			return id, err
		}
		time.Sleep(5 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		if _, lid := n.raft.LeaderWithID(); lid != "" && lid != raft.ServerID(n.id) {
			return lid, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return id, nil
}

// handOverGrace is how many election timeouts a stopping leader waits, after
// raft gave up on its transfer, to be deposed all the same.
const handOverGrace = 3

func (n *Node) voters() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	return votersIn(f.Configuration())
}

// votersIn counts the voters of c.
func votersIn(c raft.Configuration) int {
	v := 0
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

// teardown releases whatever Open managed to open.
func (n *Node) teardown() {
	n.stopHTTP()
	if n.server != nil {
		n.server.Close()
	} else if n.ln != nil {
		n.ln.Close()
	}
	if n.raft != nil {
		// Raft waits for its replication goroutines; one stuck on a peer
		// that swallows traffic must not hold the node open forever:
		// after a while, close the transport under it and wait again.
		done := make(chan error, 1)
		go func() { done <- n.raft.Shutdown().Error() }()
		select {
		case err := <-done:
			if err != nil {
				n.log.Warn("raft shutdown", "error", err)
			}
		case <-time.After(10 * time.Second):
			n.log.Warn("raft is slow to shut down; closing its transport")
			if n.stream != nil {
				n.stream.Close()
			}
			if n.trans != nil {
				n.trans.Close()
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				n.log.Error("raft did not shut down; closing the stores anyway")
			}
		}
	}
	if n.stream != nil {
		n.stream.Close()
	}
	if n.trans != nil {
		n.trans.Close()
	}
	if n.bolt != nil {
		n.bolt.Close()
	}
}
