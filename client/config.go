package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// Consistency is the read guarantee Restore asks the node for. It is an alias
// of transport.Consistency, so the values are interchangeable.
type Consistency = transport.Consistency

// Consistency levels for Config.Consistency.
const (
	// Default lets the node use its configured default (linearizable unless
	// the node is told otherwise).
	Default = transport.Default
	// Linearizable reads what a quorum has confirmed: a logout sticks even
	// across a partition.
	Linearizable = transport.Linearizable
	// Leader reads the leader's state without a quorum check.
	Leader = transport.Leader
	// Stale reads any node's state, possibly behind the leader.
	Stale = transport.Stale
)

// ReadRouting says which nodes Restore and RestoreRaw go to (Config.Reads).
type ReadRouting uint8

const (
	// ReadLeader, the default, sends reads to the leader, like writes.
	ReadLeader ReadRouting = iota
	// ReadFollower sends reads to one of the known nodes other than the one
	// writes go to (the leader, once a node has named it): each Store picks
	// its follower at random, so the reads of many app instances spread
	// over the followers, and the reads of one share the follower's
	// requests to the leader. A follower answers a linearizable read by
	// asking the leader for a read index (one request for every read
	// waiting there) and reading its own state once it has applied that
	// index, so the leader is left its writes and those requests. It pays
	// off only when writes are rare: while the cluster takes writes, a
	// follower has often not yet heard that the latest committed, and has
	// the leader serve the read, one hop more than ReadLeader (with 10%
	// writes, a third fewer operations per second on one machine). A node that fails a
	// read is left out for a while (the read is retried on the leader, the
	// next on another follower), then tried again by one read. Reads go to
	// the leader when no other node is known or healthy, and with
	// Consistency Leader.
	ReadFollower
)

// Defaults for the zero values of Config.
const (
	// DefaultPoolSize is Config.PoolSize's default: connections per node.
	DefaultPoolSize = 4
	// DefaultDialTimeout is Config.DialTimeout's default.
	DefaultDialTimeout = 2 * time.Second
	// DefaultRequestTimeout is Config.RequestTimeout's default.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultMaxRetries is Config.MaxRetries's default.
	DefaultMaxRetries = 5
)

// Backoff between retries: exponential from backoffBase, capped at
// backoffCap, with jitter (each wait is drawn from [d/2, d)).
const (
	backoffBase = 20 * time.Millisecond
	backoffCap  = 500 * time.Millisecond
)

// maxPoolSize bounds Config.PoolSize: more connections per node than this is
// a mistake (pipelining makes a few enough).
const maxPoolSize = 1024

// Config configures a Store. Zero values take the defaults; Validate says
// what is wrong with the rest. A Config is read once by New and may be
// reused afterwards.
type Config struct {
	// Addrs lists any node(s) of the cluster as "host:port". Required. The
	// Store starts with the first and learns the leader's address from the
	// nodes' hints.
	Addrs []string
	// PoolSize is the number of persistent connections per node
	// (DefaultPoolSize). Each carries many requests at once.
	PoolSize int
	// DialTimeout bounds connecting to a node, TLS handshake included
	// (DefaultDialTimeout).
	DialTimeout time.Duration
	// RequestTimeout bounds each attempt of a call when its context has no
	// earlier deadline (DefaultRequestTimeout). An attempt that times out is
	// not retried.
	RequestTimeout time.Duration
	// Consistency is the read guarantee Restore and RestoreRaw ask for
	// (Default: the node's own default).
	Consistency Consistency
	// Reads says which node reads go to: ReadLeader (the default), or
	// ReadFollower (a follower, picked at random per Store; the known
	// nodes are Addrs and the leaders the nodes name, so give every node's
	// address).
	Reads ReadRouting
	// MaxRetries bounds the retries of a call after a retryable failure: a
	// connection that could not be made or was lost, or a node answering
	// not-leader, unavailable or overloaded (DefaultMaxRetries when 0; a
	// negative value disables retries). Following a leader hint counts as a
	// retry but does not wait. However many are allowed, a call is not
	// retried more than 45 s after its first attempt: a node recognises a
	// retried write for a minute after it applied it.
	MaxRetries int
	// TLSConfig, when set, makes every connection TLS: the native protocol
	// runs inside it. When its ServerName is empty, the host of the address
	// dialled is used. Nil means plaintext.
	TLSConfig *tls.Config
	// Dialer, when set, replaces the TCP dial (tests, fault injection, or a
	// custom network). It must honour ctx. Return the *net.TCPConn itself
	// where you can: a request writing to a node that stopped reading
	// gives up at its own deadline only on one (on other connections, and
	// with TLS, it may wait up to the write timeout).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Token is the node's client token (kadosession serve
	// --auth-token-file), presented on every connection; empty for none.
	// A wrong or missing token fails calls with ErrUnauthorized.
	Token string
}

// ErrInvalidConfig is wrapped by the error New returns for a Config that
// fails Validate.
var ErrInvalidConfig = errors.New("kadosession: invalid client config")

// Validate reports the first thing wrong with c, wrapping ErrInvalidConfig,
// or nil. It does not connect to anything.
func (c *Config) Validate() error {
	if len(c.Addrs) == 0 {
		return fmt.Errorf("%w: Addrs is empty: give at least one node address as host:port", ErrInvalidConfig)
	}
	for i, a := range c.Addrs {
		if err := checkAddr(a); err != nil {
			return fmt.Errorf("%w: Addrs[%d]: %v", ErrInvalidConfig, i, err)
		}
	}
	switch {
	case c.PoolSize < 0 || c.PoolSize > maxPoolSize:
		return fmt.Errorf("%w: PoolSize %d is out of range: use 0 (the default, %d) up to %d", ErrInvalidConfig, c.PoolSize, DefaultPoolSize, maxPoolSize)
	case c.DialTimeout < 0:
		return fmt.Errorf("%w: DialTimeout %s is negative", ErrInvalidConfig, c.DialTimeout)
	case c.RequestTimeout < 0:
		return fmt.Errorf("%w: RequestTimeout %s is negative", ErrInvalidConfig, c.RequestTimeout)
	case c.Consistency > Stale:
		return fmt.Errorf("%w: unknown Consistency %d: use Default, Linearizable, Leader or Stale", ErrInvalidConfig, byte(c.Consistency))
	case c.Reads > ReadFollower:
		return fmt.Errorf("%w: unknown Reads %d: use ReadLeader or ReadFollower", ErrInvalidConfig, byte(c.Reads))
	}
	return nil
}

// checkAddr checks that a is host:port with a numeric, non-zero port.
func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", a, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", a)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%q has no valid port (1-65535)", a)
	}
	return nil
}

// withDefaults returns a copy of c with its zero values replaced by the
// defaults and Addrs deduplicated.
func (c *Config) withDefaults() Config {
	out := *c
	seen := make(map[string]bool, len(c.Addrs))
	out.Addrs = nil
	for _, a := range c.Addrs {
		if !seen[a] {
			seen[a] = true
			out.Addrs = append(out.Addrs, a)
		}
	}
	if out.PoolSize == 0 {
		out.PoolSize = DefaultPoolSize
	}
	if out.DialTimeout == 0 {
		out.DialTimeout = DefaultDialTimeout
	}
	if out.RequestTimeout == 0 {
		out.RequestTimeout = DefaultRequestTimeout
	}
	if out.MaxRetries == 0 {
		out.MaxRetries = DefaultMaxRetries
	} else if out.MaxRetries < 0 {
		out.MaxRetries = 0
	}
	if out.TLSConfig != nil {
		out.TLSConfig = out.TLSConfig.Clone()
	}
	return out
}
