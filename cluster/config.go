package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

// Config configures a Node. Zero values take the defaults documented on each
// field; Validate reports what is wrong with the rest.
type Config struct {
	// ID is the node's raft id. Empty: generated once and kept in DataDir.
	ID string
	// Listen is the address of the node's one port (127.0.0.1:3001).
	Listen string
	// Advertise is the address peers and clients are told (the bound Listen
	// address when empty). It must name a host others can reach, never
	// 0.0.0.0.
	Advertise string
	// DataDir holds the raft log, snapshots and node id (./kadosession-data).
	DataDir string
	// SaveFile is the Kado-format save file (DataDir/sessions.json).
	SaveFile string
	// SaveFrequency is how often the save file is rewritten while anything
	// changed (15 s).
	SaveFrequency time.Duration
	// Duration is how long a session lives after its last save (6 h).
	Duration time.Duration
	// PruneFrequency is how often the leader prunes expired sessions (1 min).
	PruneFrequency time.Duration
	// Join lists nodes of an existing cluster to join (cluster issue).
	Join []string
	// Consistency is the read guarantee for requests that ask for the
	// default (every Kado JSON request): transport.Linearizable unless set.
	Consistency transport.Consistency
	// MaxStale bounds how long a follower may go without hearing from its
	// leader and still answer Stale reads (0: no bound).
	MaxStale time.Duration
	// MaxSessionSize bounds one session's data in bytes (1 MiB).
	MaxSessionSize int
	// MaxKeys bounds the keys of one session (1024).
	MaxKeys int
	// Server holds the connection limits (frame size, deadlines, counts),
	// and Server.TLS / Server.Token / Server.PeerToken /
	// Server.AllowPlaintext the security of the node's port. The node sets
	// Server.MaxKeys to MaxKeys.
	Server transport.ServerConfig
	// Dialer, when set, replaces the TCP dial for every connection this node
	// opens to a peer (raft and forwarding): the fault-injection hook of the
	// tests. It must honour ctx.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// PeerTLS is what this node dials its peers with (raft and forwarding):
	// its certificate and the cluster CA. Required when Server.TLS is set.
	PeerTLS *tls.Config
	// Raft timeouts (LAN defaults: 200 ms heartbeat, election and lease,
	// 10 ms commit).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot (8192).
	SnapshotThreshold uint64
	// SnapshotLogBytes: a snapshot is also taken when the log entries
	// applied since the last one add up to this many bytes, or to the last
	// snapshot's size if that is larger, times a random 1 to 1.5 (0: a
	// sixteenth of the data directory's file system, between 4 MiB and
	// 256 MiB; loggrowth.go).
	SnapshotLogBytes uint64
	// TrailingLogs is how many entries a snapshot leaves in the log, for
	// followers that lag a little and for recognising retried writes after
	// a restart (0: up to 4096, as many as the log's share of the data
	// directory's disk holds at the size of the entries seen lately, or
	// those of the last minute up to twice that; at least 1; loggrowth.go
	// logBudget, trailingFor).
	TrailingLogs uint64
	// HTTP is the HOST:PORT of the admin HTTP endpoint (/metrics, /healthz,
	// /readyz, /status; see admin_http.go). Empty: off. It has no auth:
	// keep it on loopback or a private network.
	HTTP string
	// Logger receives every log line; nil writes at info level to stderr.
	Logger hclog.Logger

	// wrapLogStore lets tests put a failing layer under raft's log.
	wrapLogStore func(raft.LogStore) raft.LogStore
	// logVersion stands in for another build's log version in tests
	// (0: fsm.LogVersion; -1: none reported; ownLogVersion).
	logVersion int
}

// Defaults used for zero Config fields.
const (
	DefaultListen         = "127.0.0.1:3001"
	DefaultDataDir        = "kadosession-data"
	DefaultSaveFrequency  = 15 * time.Second
	DefaultDuration       = 6 * time.Hour
	DefaultPruneFrequency = time.Minute
	// LAN raft timeouts: kill -9 of a leader measured 0.37 s median, 0.61 s
	// worst failover over 10 kills on this project's 2-core machines (250 ms
	// gave 0.65 s median), with no election under a minute of saturating
	// writes. A 100 ms lease made busy idle leaders step down; the lease only
	// bounds how long a cut-off leader keeps believing it leads (reads verify
	// leadership with a quorum anyway), so it is as long as allowed.
	DefaultHeartbeatTimeout   = 200 * time.Millisecond
	DefaultElectionTimeout    = 200 * time.Millisecond
	DefaultLeaderLeaseTimeout = 200 * time.Millisecond
	DefaultCommitTimeout      = 10 * time.Millisecond
	// FrameHeadroom is what a request carries besides session data (its sid,
	// the Kado JSON around the data): an unset Server.MaxFrame is twice
	// MaxSessionSize (a patch replacing a whole session) plus this, and at
	// least 1 MiB; an explicit one must be at least MaxSessionSize plus this.
	FrameHeadroom = 8 << 10
)

func (c *Config) withDefaults() Config {
	out := *c
	if out.Listen == "" {
		out.Listen = DefaultListen
	}
	if out.DataDir == "" {
		out.DataDir = DefaultDataDir
	}
	if out.SaveFile == "" {
		out.SaveFile = filepath.Join(out.DataDir, "sessions.json")
	}
	if out.SaveFrequency == 0 {
		out.SaveFrequency = DefaultSaveFrequency
	}
	if out.Duration == 0 {
		out.Duration = DefaultDuration
	}
	if out.PruneFrequency == 0 {
		out.PruneFrequency = DefaultPruneFrequency
	}
	if out.MaxKeys == 0 {
		out.MaxKeys = fsm.DefaultMaxKeys
	}
	if out.Consistency == transport.Default {
		out.Consistency = transport.Linearizable
	}
	if out.MaxSessionSize == 0 {
		out.MaxSessionSize = transport.DefaultMaxFrame
	}
	if out.Server.MaxFrame == 0 {
		// Room for any request that leaves a session within the size
		// limit: a patch may delete every key of one (their names, up to
		// the size) and set a whole new one, plus its sid and the Kado JSON
		// around the data (FrameHeadroom). With both at 1 MiB, a session
		// just under the size limit was refused as a frame too large, with
		// another error than the size limit's.
		out.Server.MaxFrame = max(transport.DefaultMaxFrame, 2*out.MaxSessionSize+FrameHeadroom)
	}
	if out.HeartbeatTimeout == 0 {
		out.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if out.ElectionTimeout == 0 {
		out.ElectionTimeout = DefaultElectionTimeout
	}
	if out.LeaderLeaseTimeout == 0 {
		out.LeaderLeaseTimeout = DefaultLeaderLeaseTimeout
	}
	if out.CommitTimeout == 0 {
		out.CommitTimeout = DefaultCommitTimeout
	}
	if out.SnapshotThreshold == 0 {
		out.SnapshotThreshold = 8192
	}
	if out.Logger == nil {
		out.Logger = hclog.New(&hclog.LoggerOptions{Name: "kadosession", Level: hclog.Info})
	}
	return out
}

// Validate reports every problem with the configuration (after defaults).
func (c *Config) Validate() error {
	d := c.withDefaults()
	var errs []error
	if _, _, err := net.SplitHostPort(d.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen address %q: %v (want HOST:PORT)", d.Listen, err))
	}
	if d.Advertise == "" {
		// Derived from the bound listener at Open.
	} else if host, port, err := net.SplitHostPort(d.Advertise); err != nil {
		errs = append(errs, fmt.Errorf("advertise address %q: %v (want HOST:PORT)", d.Advertise, err))
	} else if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		errs = append(errs, fmt.Errorf("advertise address %q names no reachable host: set --advertise to an address peers and clients can reach", d.Advertise))
	} else if port == "0" {
		errs = append(errs, fmt.Errorf("advertise address %q has port 0: give the real port", d.Advertise))
	}
	for _, j := range d.Join {
		if checkPeerAddr(j) != nil {
			errs = append(errs, fmt.Errorf("join address %q: want HOST:PORT of a node already in the cluster", j))
		} else if j == d.Listen || j == d.Advertise {
			errs = append(errs, fmt.Errorf("join address %q is this node's own address: join through a node already in the cluster", j))
		}
	}
	for name, v := range map[string]time.Duration{
		"save frequency": d.SaveFrequency, "duration": d.Duration, "prune frequency": d.PruneFrequency,
		"heartbeat timeout": d.HeartbeatTimeout, "election timeout": d.ElectionTimeout,
		"leader lease timeout": d.LeaderLeaseTimeout, "commit timeout": d.CommitTimeout,
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s is negative (%s)", name, v))
		}
	}
	if d.LeaderLeaseTimeout > d.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("leader lease timeout (%s) must not exceed the heartbeat timeout (%s)", d.LeaderLeaseTimeout, d.HeartbeatTimeout))
	}
	if d.ElectionTimeout < d.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("election timeout (%s) must be at least the heartbeat timeout (%s)", d.ElectionTimeout, d.HeartbeatTimeout))
	}
	if d.ID != "" {
		if err := validateID(d.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.Server.CheckPeerTokens(); err != nil {
		errs = append(errs, err)
	}
	if d.Server.TLS != nil && d.PeerTLS == nil {
		errs = append(errs, errors.New("TLS is on for the port but no peer TLS configuration is given: peers could not be reached"))
	}
	if d.MaxSessionSize < 0 {
		errs = append(errs, fmt.Errorf("max session size is negative (%d)", d.MaxSessionSize))
	}
	if c.Server.MaxFrame < 0 {
		errs = append(errs, fmt.Errorf("max frame is negative (%d)", c.Server.MaxFrame))
	} else if c.Server.MaxFrame > 0 && c.Server.MaxFrame < d.MaxSessionSize+FrameHeadroom {
		errs = append(errs, fmt.Errorf("max frame (%d bytes) leaves no room for a session of the max session size (%d bytes): "+
			"raise --max-frame to at least %d (%d lets a patch replace a whole session), lower --max-session-size, or leave --max-frame out (it then follows --max-session-size)",
			c.Server.MaxFrame, d.MaxSessionSize, d.MaxSessionSize+FrameHeadroom, 2*d.MaxSessionSize+FrameHeadroom))
	}
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("max keys is negative (%d)", c.MaxKeys))
	}
	return errors.Join(errs...)
}
