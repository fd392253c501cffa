// Command benchhttp is the HTTP server scripts/bench_http.sh drives with wrk
// (issue 5, "End to end over HTTP"): one handler, the same in every stack,
// that reads a counter from the session, increments it and saves it
// (/write), and a read-only variant (/read), behind one of these session
// layers:
//
//	none          no session layer: the counter is one in-process atomic
//	kado-memory   kadosession's middleware on a middleware.MemoryStore
//	kado-node     kadosession's middleware on the Go client (--nodes)
//	scs-memstore  alexedwards/scs v2 with its memstore
//	scs-redis     alexedwards/scs v2 with its redisstore (redigo pool, --redis)
//
// With --cookies FILE it first makes --precreate sessions through its own
// /write handler and writes one "Cookie" header value a line to FILE, for
// wrk's Lua script to rotate through. It serves until SIGINT or SIGTERM.
//
// It is its own Go module (scripts/benchhttp/go.mod, the main module
// replaced by ../..) so that scs's redisstore and the Redis client it needs
// are not dependencies of kadosession itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // only with --pprof
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alexedwards/scs/redisstore"
	"github.com/alexedwards/scs/v2"
	"github.com/alexedwards/scs/v2/memstore"
	"github.com/gomodule/redigo/redis"
	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/middleware"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchhttp:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:8080", "`HOST:PORT` to serve on")
	stack := flag.String("stack", "kado-memory", "session layer: none, kado-memory, kado-node, scs-memstore or scs-redis")
	nodes := flag.String("nodes", "", "kado-node: `HOST:PORT[,HOST:PORT…]` of kadosession nodes")
	redisAddr := flag.String("redis", "", "scs-redis: `HOST:PORT` of Redis")
	precreate := flag.Int("precreate", 1000, "sessions to make before serving (with --cookies)")
	cookies := flag.String("cookies", "", "write the pre-created sessions' Cookie header values to `FILE`, one a line")
	reads := flag.String("reads", "leader", "kado-node: where the Go client sends reads: leader or follower (client.Config.Reads)")
	pprofAddr := flag.String("pprof", "", "serve Go's net/http/pprof profiles on `HOST:PORT` (for profiling a stack; off by default)")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { fmt.Fprintln(os.Stderr, "benchhttp: pprof:", http.ListenAndServe(*pprofAddr, nil)) }()
	}

	var (
		h       http.Handler
		closeFn = func() {}
	)
	logger := hclog.New(&hclog.LoggerOptions{Name: "session", Level: hclog.Warn, Output: os.Stderr})
	switch *stack {
	case "none":
		var counter atomic.Int64
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := counter.Load()
			if r.URL.Path == "/write" {
				n = counter.Add(1)
			}
			reply(w, n)
		})
	case "kado-memory", "kado-node":
		var store middleware.Store
		if *stack == "kado-memory" {
			m := middleware.NewMemoryStore(middleware.MemoryOptions{})
			store, closeFn = m, func() { m.Close() }
		} else {
			if *nodes == "" {
				return errors.New("--stack kado-node needs --nodes")
			}
			cfg := client.Config{Addrs: strings.Split(*nodes, ",")}
			switch *reads {
			case "leader":
			case "follower":
				cfg.Reads = client.ReadFollower
			default:
				return fmt.Errorf("--reads %q: want leader or follower", *reads)
			}
			c, err := client.New(cfg)
			if err != nil {
				return err
			}
			store, closeFn = c, func() { c.Close() }
		}
		h = middleware.New(middleware.Options{Store: store, Logger: logger})(http.HandlerFunc(kadoHandler))
	case "scs-memstore", "scs-redis":
		sm := scs.New()
		sm.Lifetime = 6 * time.Hour
		if *stack == "scs-memstore" {
			sm.Store = memstore.New()
		} else {
			if *redisAddr == "" {
				return errors.New("--stack scs-redis needs --redis")
			}
			pool := &redis.Pool{
				MaxIdle: 256, MaxActive: 1024, IdleTimeout: 5 * time.Minute, Wait: true,
				Dial: func() (redis.Conn, error) { return redis.Dial("tcp", *redisAddr) },
			}
			sm.Store = redisstore.New(pool)
			closeFn = func() { pool.Close() }
		}
		h = sm.LoadAndSave(scsHandler(sm))
	default:
		return fmt.Errorf("--stack %q: want none, kado-memory, kado-node, scs-memstore or scs-redis", *stack)
	}
	defer closeFn()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	if *cookies != "" && *stack == "none" { // no sessions: the same cookies, ignored
		var b strings.Builder
		for i := 0; i < *precreate; i++ {
			fmt.Fprintf(&b, "session=none-%d\n", i)
		}
		if err := os.WriteFile(*cookies, []byte(b.String()), 0o600); err != nil {
			srv.Close()
			return err
		}
	} else if *cookies != "" {
		if err := makeSessions(ln.Addr().String(), *precreate, *cookies); err != nil {
			srv.Close()
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "benchhttp: %s serving on %s\n", *stack, ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// kadoHandler is the handler behind kadosession's middleware.
func kadoHandler(w http.ResponseWriter, r *http.Request) {
	s := middleware.FromContext(r.Context())
	var n int64
	if err := s.GetInto("counter", &n); err != nil && !errors.Is(err, middleware.ErrKeyNotFound) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if r.URL.Path == "/write" {
		n++
		s.Set("counter", n)
	}
	reply(w, n)
}

// scsHandler is the same handler on scs.
func scsHandler(sm *scs.SessionManager) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int64(sm.GetInt(r.Context(), "counter"))
		if r.URL.Path == "/write" {
			n++
			sm.Put(r.Context(), "counter", int(n))
		}
		reply(w, n)
	})
}

func reply(w http.ResponseWriter, n int64) {
	w.Header().Set("Content-Type", "text/plain")
	b := strconv.AppendInt(make([]byte, 0, 24), n, 10)
	w.Write(append(b, '\n'))
}

// makeSessions makes n sessions through /write and writes their Cookie
// header values to path.
func makeSessions(addr string, n int, path string) error {
	c := &http.Client{Timeout: 10 * time.Second}
	var out strings.Builder
	for i := 0; i < n; i++ {
		resp, err := c.Get("http://" + addr + "/write")
		if err != nil {
			return fmt.Errorf("making session %d: %w", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("making session %d: HTTP %s", i, resp.Status)
		}
		cs := resp.Cookies()
		if len(cs) == 0 {
			return fmt.Errorf("making session %d: no Set-Cookie in the answer", i)
		}
		out.WriteString(cs[0].Name + "=" + cs[0].Value + "\n")
	}
	return os.WriteFile(path, []byte(out.String()), 0o600)
}
