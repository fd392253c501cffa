// Command demo is a small web app on kadosession: sign in (a user name, no
// password), a counter kept in the session, a page listing the signed-in
// user's sessions across the cluster with a "Revoke all" button, and sign
// out. Server-rendered HTML, no JavaScript.
//
// Against the three-node cluster of scripts/cluster.sh:
//
//	scripts/cluster.sh start
//	go run ./cmd/demo                      # http://127.0.0.1:8080
//	scripts/cluster.sh kill n1             # the app fails over to the new leader
//
// Without any server, sessions in the demo's own memory:
//
//	go run ./cmd/demo --memory
//
// Flags: --listen HOST:PORT (127.0.0.1:8080), --cluster HOST:PORT[,...]
// (127.0.0.1:3001,127.0.0.1:3011,127.0.0.1:3021), --memory.
//
// CSRF: the session cookie is HttpOnly and SameSite=Lax, so a form posted
// from another site arrives without it and cannot act as the user. That is
// enough for a demo; an app facing older browsers or untrusted sibling
// subdomains adds a CSRF token as well.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/middleware"
)

// Defaults of the flags: the addresses scripts/cluster.sh starts its nodes on.
const (
	defaultListen  = "127.0.0.1:8080"
	defaultCluster = "127.0.0.1:3001,127.0.0.1:3011,127.0.0.1:3021"
)

// clientRetries lets one request ride out a leader election: the client
// backs off up to 500 ms between tries, so this is several seconds.
const clientRetries = 10

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// openStore returns the demo's session store: the cluster client over addrs
// or, with memory, an in-process MemoryStore.
func openStore(memory bool, addrs []string) (middleware.UserStore, io.Closer, error) {
	if memory {
		m := middleware.NewMemoryStore(middleware.MemoryOptions{})
		return m, m, nil
	}
	c, err := client.New(client.Config{Addrs: addrs, MaxRetries: clientRetries})
	if err != nil {
		return nil, nil, err
	}
	return c, c, nil
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", defaultListen, "`HOST:PORT` the web app listens on")
	clusterAddrs := fs.String("cluster", defaultCluster, "kadosession node(s) as `HOST:PORT[,HOST:PORT...]`; any node will do, the client finds the leader")
	memory := fs.Bool("memory", false, "keep sessions in this process (middleware.NewMemoryStore) instead of a cluster")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: demo [--listen HOST:PORT] [--cluster HOST:PORT,...] [--memory]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	addrs := splitAddrs(*clusterAddrs)
	logger := log.New(stderr, "demo: ", log.LstdFlags)

	store, closer, err := openStore(*memory, addrs)
	if err != nil {
		return err
	}
	defer closer.Close()
	if c, ok := store.(*client.Store); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if err := c.Ping(ctx); err != nil {
			logger.Printf("warning: no kadosession node answered at %s (%v); start the cluster with scripts/cluster.sh start, or use --memory", strings.Join(addrs, ","), err)
		}
		cancel()
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           newHandler(store, logger),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          logger,
	}
	mode := "cluster " + strings.Join(addrs, ",")
	if *memory {
		mode = "in-memory sessions"
	}
	logger.Printf("listening on http://%s (%s)", ln.Addr(), mode)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Printf("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
