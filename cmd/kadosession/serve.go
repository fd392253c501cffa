package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // served only with --pprof
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/cluster"
	"github.com/kadosession/kadosession/internal/gcpace"
	"github.com/kadosession/kadosession/transport"
)

// gcFloor is the least the heap may grow over the live data before a
// collection, whatever --gc-percent says (see package gcpace).
const gcFloor = 64 << 20

func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      cluster.Config
		join     string
		logLevel string
		logJSON  bool
	)
	fs.StringVar(&cfg.ID, "id", "", "node id (letters, digits, - _ .); generated once and kept in the data directory when empty")
	fs.StringVar(&cfg.Listen, "listen", cluster.DefaultListen, "`HOST:PORT` of the node's one port (clients, Kado JSON and raft)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "`HOST:PORT` peers and clients are told to use (default: --listen; never 0.0.0.0)")
	fs.StringVar(&cfg.DataDir, "data", cluster.DefaultDataDir, "data `DIR`: raft log, snapshots, node id, save file")
	fs.StringVar(&cfg.SaveFile, "save-file", "", "Kado-format save file `PATH` (default DIR/sessions.json); imported at first start")
	fs.DurationVar(&cfg.SaveFrequency, "save-frequency", cluster.DefaultSaveFrequency, "how often the save file is rewritten while anything changed (after a write that took long, the next waits at least 4 times as long)")
	fs.DurationVar(&cfg.Duration, "duration", cluster.DefaultDuration, "how long a session lives after its last save")
	fs.DurationVar(&cfg.PruneFrequency, "prune-frequency", cluster.DefaultPruneFrequency, "how often the leader prunes expired sessions")
	fs.StringVar(&join, "join", "", "`HOST:PORT[,HOST:PORT…]` of an existing cluster to join (instead of starting a new one)")
	fs.IntVar(&cfg.MaxSessionSize, "max-session-size", transport.DefaultMaxFrame, "largest session data in bytes (--max-frame follows it)")
	fs.IntVar(&cfg.MaxKeys, "max-keys", 1024, "most keys one session may hold")
	fs.IntVar(&cfg.Server.MaxFrame, "max-frame", 0, "largest native frame or Kado JSON request in bytes (default twice --max-session-size plus 8 KiB: room for a patch replacing a whole session)")
	fs.DurationVar(&cfg.Server.ReadTimeout, "read-timeout", 10*time.Second, "time a client has to finish sending a request it started")
	fs.DurationVar(&cfg.Server.IdleTimeout, "idle-timeout", 5*time.Minute, "close native connections idle this long")
	fs.DurationVar(&cfg.Server.RequestTimeout, "request-timeout", 10*time.Second, "deadline for serving one request")
	fs.IntVar(&cfg.Server.MaxConns, "max-conns", 4096, "most connections open at once; more are refused with an error")
	fs.IntVar(&cfg.Server.MaxInflight, "max-inflight", 256, "most requests in flight on one native connection")
	fs.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", cluster.DefaultHeartbeatTimeout, "raft heartbeat timeout (raise for WAN links, e.g. 1s)")
	fs.DurationVar(&cfg.ElectionTimeout, "election-timeout", cluster.DefaultElectionTimeout, "raft election timeout (raise for WAN links, e.g. 1s)")
	fs.DurationVar(&cfg.LeaderLeaseTimeout, "leader-lease-timeout", cluster.DefaultLeaderLeaseTimeout, "raft leader lease (at most the heartbeat timeout)")
	fs.DurationVar(&cfg.CommitTimeout, "commit-timeout", cluster.DefaultCommitTimeout, "raft commit timeout")
	consistency := fs.String("consistency", "linearizable", "read guarantee for requests that ask for none (every Kado JSON request): linearizable, leader or stale")
	fs.DurationVar(&cfg.MaxStale, "max-stale", 0, "a follower that has not heard from its leader for this long refuses stale reads (0: no bound)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: trace, debug, info, warn or error")
	fs.BoolVar(&logJSON, "log-json", false, "log as JSON lines")
	var sec securityFlags
	fs.StringVar(&sec.cert, "tls-cert", "", "TLS certificate `FILE` (PEM) of this node; with --tls-key and --tls-ca turns TLS on for clients and peers")
	fs.StringVar(&sec.key, "tls-key", "", "TLS private key `FILE` (PEM)")
	fs.StringVar(&sec.ca, "tls-ca", "", "CA certificate `FILE` (PEM): peers must present a certificate it signed (mutual TLS)")
	fs.BoolVar(&sec.allowPlaintext, "tls-allow-plaintext", false, "with TLS on, still accept plaintext clients (not peers)")
	fs.StringVar(&sec.tokenFile, "auth-token-file", "", "`FILE` holding the client token every request must carry (never logged)")
	fs.StringVar(&sec.peerTokenFile, "peer-token-file", "", "`FILE` holding the token nodes present to each other (raft, forwarding) and admin commands (join, remove, backup, restore) must carry; the client token then admits session operations only (default: the client token serves for all)")
	fs.StringVar(&sec.acceptPeerTokenFile, "accept-peer-token-file", "", "`FILE` holding a second token accepted from nodes and admin commands beside the one this node presents (--peer-token-file, else --auth-token-file), "+
		"for a rolling change: the new peer token in the first round of restarts, the token it replaces in the second, none in the third (README: TLS and a client token)")
	fs.StringVar(&cfg.HTTP, "http", "", "serve /metrics (Prometheus), /healthz, /readyz and /status on `HOST:PORT` (off by default; no auth: keep it on loopback or a private network)")
	gcPercent := fs.Int("gc-percent", 25, "Go garbage collector target: how far (`PERCENT`) the heap may grow over the live sessions before a collection, "+
		"and at least 64 MiB; lower keeps resident memory closer to the data, at some CPU (a GOGC environment variable, when set, wins)")
	pprofAddr := fs.String("pprof", "", "serve Go's net/http/pprof profiles on `HOST:PORT` (off by default; keep it on loopback)")
	fs.Usage = usageWithEnv(fs, "kadosession serve [flags]",
		"Runs one node. With no flags it is a single node on 127.0.0.1:3001 keeping its data in ./kadosession-data,\n"+
			"serving Kado's JSON protocol (SessionStoreLocal) and the native protocol (the Go client) on that one port.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	given := setFlags(fs)
	if !given["max-session-size"] {
		cfg.MaxSessionSize = 0 // the default
	}
	// Zero or negative limits and durations are mistakes (a zero used to
	// mean the default without a word, a negative one refused everything).
	for name, v := range map[string]int{"max-keys": cfg.MaxKeys, "max-conns": cfg.Server.MaxConns, "max-inflight": cfg.Server.MaxInflight,
		"max-session-size": cfg.MaxSessionSize, "max-frame": cfg.Server.MaxFrame} {
		if given[name] && v <= 0 {
			return fmt.Errorf("--%s %d: want a positive number", name, v)
		}
	}
	for name, v := range map[string]time.Duration{"duration": cfg.Duration, "save-frequency": cfg.SaveFrequency, "prune-frequency": cfg.PruneFrequency,
		"read-timeout": cfg.Server.ReadTimeout, "idle-timeout": cfg.Server.IdleTimeout, "request-timeout": cfg.Server.RequestTimeout,
		"heartbeat-timeout": cfg.HeartbeatTimeout, "election-timeout": cfg.ElectionTimeout, "leader-lease-timeout": cfg.LeaderLeaseTimeout,
		"commit-timeout": cfg.CommitTimeout} {
		if v <= 0 {
			return fmt.Errorf("--%s %s: want a positive duration", name, v)
		}
	}
	// Positive but too small to work: every connection or request would
	// fail with an error that names something else.
	for _, f := range []struct {
		name string
		v    time.Duration
		min  time.Duration
		why  string
	}{
		{"read-timeout", cfg.Server.ReadTimeout, 100 * time.Millisecond, "a client or peer must send a whole request in it"},
		{"idle-timeout", cfg.Server.IdleTimeout, time.Second, "connections idle this long are closed"},
		{"request-timeout", cfg.Server.RequestTimeout, 10 * time.Millisecond, "a request must be replicated and answered in it"},
	} {
		if f.v < f.min {
			return fmt.Errorf("--%s %s: at least %s (%s)", f.name, f.v, f.min, f.why)
		}
	}
	// Sessions and frames are read whole into memory, a frame as soon as
	// its header names its size.
	if cfg.MaxSessionSize > maxSessionSizeFlag {
		return fmt.Errorf("--max-session-size %d: at most %d (64 MiB); sessions are read whole into memory", cfg.MaxSessionSize, maxSessionSizeFlag)
	}
	if cfg.Server.MaxFrame > maxFrameFlag {
		return fmt.Errorf("--max-frame %d: at most %d (256 MiB)", cfg.Server.MaxFrame, maxFrameFlag)
	}
	if cfg.MaxStale < 0 {
		return fmt.Errorf("--max-stale %s: want 0 (no bound) or a positive duration", cfg.MaxStale)
	}
	switch *consistency {
	case "linearizable":
		cfg.Consistency = transport.Linearizable
	case "leader":
		cfg.Consistency = transport.Leader
	case "stale":
		cfg.Consistency = transport.Stale
	default:
		return fmt.Errorf("--consistency %q: want linearizable, leader or stale", *consistency)
	}
	level := hclog.LevelFromString(logLevel)
	if level == hclog.NoLevel {
		return fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", logLevel)
	}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "kadosession", Level: level, Output: stderr, JSONFormat: logJSON})
	for _, a := range strings.Split(join, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Join = append(cfg.Join, a)
		}
	}
	if err := sec.apply(&cfg); err != nil {
		return err
	}
	if *gcPercent < 10 {
		return fmt.Errorf("--gc-percent %d: want at least 10 (lower would collect garbage almost continuously)", *gcPercent)
	}
	if os.Getenv("GOGC") == "" {
		gcStop := make(chan struct{})
		defer close(gcStop)
		go gcpace.Run(gcStop, *gcPercent, gcFloor, time.Second)
	}
	// pprof first, so that a slow start (restoring a large snapshot,
	// replaying the log) can be profiled too.
	// A busy address stops the start, as for --listen and --http.
	if *pprofAddr != "" {
		ln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return fmt.Errorf("pprof: listen on %s: %w (check --pprof)", *pprofAddr, err)
		}
		defer ln.Close()
		cfg.Logger.Info("serving pprof", "address", ln.Addr().String())
		go func() {
			srv := &http.Server{ReadHeaderTimeout: 5 * time.Second}
			if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				cfg.Logger.Error("pprof server stopped", "error", err)
			}
		}()
	}
	node, err := cluster.Open(cfg)
	if err != nil {
		return fmt.Errorf("%w%s", err, envNote(fs, err))
	}
	// Once it serves: a start refused (--listen 0.0.0.0 without
	// --advertise, say) said first that anyone could forge sessions.
	warnIfExposed(&cfg, cfg.Logger)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	select {
	case sig := <-sigs:
		cfg.Logger.Info("signal received; stopping", "signal", sig.String())
		return node.Close()
	case err := <-node.Fatal():
		node.Close()
		return err
	}
}

// The largest --max-session-size and --max-frame taken.
const (
	maxSessionSizeFlag = 64 << 20
	maxFrameFlag       = 256 << 20
)
