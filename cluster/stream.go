package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kadosession/kadosession/transport"
)

// streamLayer carries raft's traffic on the node's one port: outgoing
// connections announce themselves with transport.MagicRaft, and the
// transport.Server routes incoming connections that start with it here.
type streamLayer struct {
	addr  net.Addr
	tls   *tls.Config // dial peers with TLS (and our certificate) when set
	token []byte      // sent after MagicRaft when set and TLS is not, or always (tokenToo)
	// tokenToo sends the token over TLS as well (a peer token: a
	// certificate alone does not make a node then).
	tokenToo bool
	conns    chan net.Conn
	done     chan struct{}
	once     sync.Once
	dialer   func(address string, timeout time.Duration) (net.Conn, error)
	// verify, when set, may refuse a peer before it is dialed
	// (Node.verifyPeerCluster).
	verify func(address string, timeout time.Duration) error
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(addr net.Addr, tlsConfig *tls.Config, token []byte) *streamLayer {
	return &streamLayer{
		addr:  addr,
		tls:   tlsConfig,
		token: token,
		conns: make(chan net.Conn, 64),
		done:  make(chan struct{}),
		dialer: func(address string, timeout time.Duration) (net.Conn, error) {
			return net.DialTimeout("tcp", address, timeout)
		},
	}
}

// handoff is the transport.Server route for MagicRaft connections.
func (s *streamLayer) handoff(c net.Conn) {
	select {
	case s.conns <- c:
	case <-s.done:
		c.Close()
	}
}

// Accept returns the next incoming raft connection.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, errors.New("raft stream layer closed")
	}
}

// Close stops Accept; connections already handed out stay open.
func (s *streamLayer) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

// Addr is the node's advertised address.
func (s *streamLayer) Addr() net.Addr { return s.addr }

// Dial opens a raft connection to a peer's one port.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if s.verify != nil {
		if err := s.verify(string(address), timeout); err != nil {
			return nil, err
		}
	}
	c, err := s.dialer(string(address), timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	preamble := []byte{transport.MagicRaft}
	if s.tls != nil {
		cfg := s.tls
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(string(address))
		}
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", address, err)
		}
		c = tc
	}
	if len(s.token) > 0 && (s.tls == nil || s.tokenToo) {
		preamble = transport.AppendRaftToken(preamble, s.token)
	}
	_ = c.SetDeadline(time.Time{})
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write(preamble); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

// advertisedAddr is a net.Addr for the advertised host:port, which may be a
// name rather than an IP.
type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }

// quietShutdown is raft's network transport logger, but for its ERROR on
// every incoming raft connection when the transport shuts down ("failed to
// decode incoming command", raft.ErrTransportShutdown), which it logs at
// DEBUG: a node stopping gracefully logged errors that alerts catch.
// quietRaft is raft's logger with the warnings of routine protocol steps
// logged lower: a node started with --join logs "no known peers" until it
// is admitted; a follower catching up logs "failed to get previous log",
// and its leader "appendEntries rejected", while the leader finds where
// their logs meet; a node that bootstrapped a cluster starts the first
// election on a heartbeat timeout with no leader before it. Operators took
// them for faults (a README walkthrough). An election after a leader was
// lost stays a warning. The snapshot store's routine lines go to debug.
type quietRaft struct {
	hclog.Logger
	// health, when set, is the node's log health: while its appends fail,
	// the messages of each election round it stands in and loses again
	// (electionRound) are logged at debug; watchLogHealth reports the
	// failure instead.
	health *logHealth
	// self is the node's id: a failing node that lost a leader other than
	// itself still warns that it starts an election.
	self string
	// routine, when set, holds raft's lines about a snapshot
	// (routineSnapshot) to one snapshot's at info every routineEvery.
	routine *routineLines
	// errors, when set, lets each of this logger's error lines out once a
	// minute (the snapshot store's: a node whose disk is full tries a
	// snapshot every second, and its "failed to write metadata" came every
	// time).
	errors *sayEachEvery
}

// sayEachEvery is a sayEvery for each message. The zero value is ready.
type sayEachEvery struct {
	mu sync.Mutex
	m  map[string]*sayEvery
}

func (s *sayEachEvery) of(msg string) *sayEvery {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*sayEvery{}
	}
	e := s.m[msg]
	if e == nil {
		e = new(sayEvery)
		s.m[msg] = e
	}
	return e
}

// routineSnapshot is what raft logs about each snapshot it takes.
var routineSnapshot = map[string]bool{
	"starting snapshot up to": true,
	"compacting logs":         true,
	"no logs to truncate":     true,
	"snapshot complete up to": true,
}

// routineEvery is how often a snapshot's lines are logged at info at most.
// On a small disk under a heavy load a snapshot came every 0.1 s (a drill:
// 473 in 40 s, four lines each); at the default sizes they are minutes
// apart.
const routineEvery = 10 * time.Second

// routineLines tells at which level a snapshot's lines go (level): its
// first, raft's "starting snapshot up to", goes to info once every
// routineEvery and to debug in between, and the snapshot's other lines
// (routineSnapshot, and the node's "snapshot taken") follow it, so that
// what is logged at info pairs up.
type routineLines struct {
	mu    sync.Mutex
	last  time.Time // when a snapshot's lines last went to info
	quiet bool      // the current snapshot's lines go to debug
	// failed: raft's "failed to take snapshot". A node whose disk is full
	// tries every second (snapshotOnLogGrowth) and says why once a minute.
	failed sayEvery
}

// sayEvery lets a line that may repeat every second (a failure tried
// again, a step taken after every snapshot) go out at its own level once
// a minute and at debug otherwise, and sums an amount over the lines that
// went to debug (how many, how many bytes) for the next that goes out.
// The zero value is ready.
type sayEvery struct {
	mu    sync.Mutex
	said  time.Time
	since int64
}

// next notes one more line, of amount, and returns its level (loud, once
// a minute) and the amount since the last loud line, this one's included.
func (s *sayEvery) next(loud hclog.Level, amount int64) (hclog.Level, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.since += amount
	total := s.since
	if time.Since(s.said) < time.Minute {
		return hclog.Debug, total
	}
	s.said, s.since = time.Now(), 0
	return loud, total
}

func (r *routineLines) level(msg string) hclog.Level {
	r.mu.Lock()
	defer r.mu.Unlock()
	if msg == "starting snapshot up to" {
		r.quiet = time.Since(r.last) < routineEvery
		if !r.quiet {
			r.last = time.Now()
		}
	}
	if r.quiet {
		return hclog.Debug
	}
	return hclog.Info
}

func (q quietRaft) Warn(msg string, args ...any) {
	switch {
	case q.inFailingRound(msg, args):
		q.Logger.Debug(msg, args...)
	case msg == "no known peers, aborting election", msg == "failed to get previous log",
		msg == "appendEntries rejected, sending older logs",
		msg == "found temporary snapshot": // the one being written; failed ones are removed (tidySnapshots)
		q.Logger.Debug(msg, args...)
	case msg == "heartbeat timeout reached, starting election" && argOf(args, "last-leader-addr") == "":
		q.Logger.Info(msg, args...)
	default:
		q.Logger.Warn(msg, args...)
	}
}

func (q quietRaft) Info(msg string, args ...any) {
	// The snapshot store's own lines repeat raft's "starting snapshot up
	// to" and "snapshot complete up to".
	if q.inFailingRound(msg, args) || msg == "creating new snapshot" || msg == "reaping snapshot" {
		q.Logger.Debug(msg, args...)
		return
	}
	if routineSnapshot[msg] && q.routine != nil {
		q.Logger.Log(q.routine.level(msg), msg, args...)
		return
	}
	q.Logger.Info(msg, args...)
}

func (q quietRaft) Error(msg string, args ...any) {
	if q.inFailingRound(msg, args) {
		q.Logger.Debug(msg, args...)
		return
	}
	if msg == "failed to take snapshot" && q.routine != nil {
		level, _ := q.routine.failed.next(hclog.Error, 1)
		q.Logger.Log(level, msg, args...)
		return
	}
	if q.errors != nil {
		level, n := q.errors.of(msg).next(hclog.Error, 1)
		if level == hclog.Error && n > 1 {
			args = append(args, "failures_since_last_said", n)
		}
		q.Logger.Log(level, msg, args...)
		return
	}
	q.Logger.Error(msg, args...)
}

// electionRound is what raft logs in an election round of a node that
// cannot append: it stands, wins (alone) or loses, fails to append, and
// steps down.
var electionRound = map[string]bool{
	"heartbeat timeout reached, starting election":           true,
	"entering candidate state":                               true,
	"pre-vote successful, starting election":                 true,
	"pre-vote campaign failed, waiting for election timeout": true,
	"election won":             true,
	"entering leader state":    true,
	"entering follower state":  true,
	"failed to commit logs":    true,
	"failed to append to logs": true,
}

// inFailingRound reports whether msg belongs to an election round while the
// node's log appends fail: not a warning that a leader other than this
// node was lost.
func (q quietRaft) inFailingRound(msg string, args []any) bool {
	if q.health == nil || !electionRound[msg] || q.health.recent() == nil {
		return false
	}
	last := argOf(args, "last-leader-id")
	return msg != "heartbeat timeout reached, starting election" || last == "" || last == q.self
}

// argOf returns the value of key among hclog's key/value args, as text.
func argOf(args []any, key string) string {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			return fmt.Sprint(args[i+1])
		}
	}
	return ""
}

type quietShutdown struct{ hclog.Logger }

func (q quietShutdown) Error(msg string, args ...any) {
	for i := 1; i < len(args); i += 2 {
		if err, ok := args[i].(error); ok && errors.Is(err, raft.ErrTransportShutdown) {
			q.Logger.Debug(msg, args...)
			return
		}
	}
	q.Logger.Error(msg, args...)
}

// noPipeline is raft's network transport without pipelined replication.
// hashicorp/raft's pipeline can deadlock once a follower rejects an append
// (hashicorp/raft#612: its send loop blocks on a response reader that has
// quit): the leader then sends that follower heartbeats, which keep it
// from calling an election, but never another entry, until the leader
// restarts. A disk-full drill left a follower so for over five minutes,
// ready by every check while the cluster had lost its failure tolerance.
// Without the pipeline the leader sends a follower one append at a time,
// as it does anyway with one batch in flight (committer).
type noPipeline struct{ *raft.NetworkTransport }

func (noPipeline) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}
