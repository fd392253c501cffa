package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kadosession/kadosession/client"
)

// bench drives load at a running node and prints throughput and latency.
func bench(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("cluster", "127.0.0.1:3001", "`HOST:PORT[,HOST:PORT…]` of the cluster's nodes (the Go client fails over between them; Kado JSON uses the first)")
	op := fs.String("op", "save", "operation: save or restore")
	proto := fs.String("protocol", "native", "native (the Go client) or kado (one JSON request per connection, as Kado's SessionStoreLocal)")
	callers := fs.Int("callers", 64, "concurrent callers (requests in flight)")
	dur := fs.Duration("duration", 5*time.Second, "how long to run (bounded to 10m)")
	size := fs.Int("size", 1024, "session size in bytes")
	keys := fs.Int("sessions", 10000, "distinct sessions to spread the load over")
	asJSON := fs.Bool("json", false, "print one JSON object")
	fs.Usage = usageWithEnv(fs, "kadosession bench [flags]", "Measures saves or restores per second against a running node.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *op != "save" && *op != "restore" {
		return fmt.Errorf("--op %q: want save or restore", *op)
	}
	if *callers < 1 || *callers > 4096 || *size < 16 || *size > 1<<20 || *keys < 1 || *dur <= 0 || *dur > 10*time.Minute {
		return fmt.Errorf("out of range: --callers 1..4096, --size 16..1048576, --sessions ≥ 1, --duration (0, 10m]")
	}
	kadoAddr := strings.Split(*addr, ",")[0]
	data := []byte(`{"pad":"` + strings.Repeat("x", *size-10) + `"}`)
	var do func(ctx context.Context, sid string) error
	switch *proto {
	case "native":
		c, err := client.New(client.Config{Addrs: strings.Split(*addr, ",")})
		if err != nil {
			return err
		}
		defer c.Close()
		if *op == "save" {
			do = func(ctx context.Context, sid string) error { return c.SaveRaw(ctx, sid, data) }
		} else {
			do = func(ctx context.Context, sid string) error { _, _, err := c.RestoreRaw(ctx, sid); return err }
		}
	case "kado":
		do = func(ctx context.Context, sid string) error {
			req := fmt.Sprintf(`{"restore":{"sid":%q}}`, sid)
			if *op == "save" {
				req = fmt.Sprintf(`{"save":{"sid":%q,"data":%s}}`, sid, data)
			}
			return kadoCall(kadoAddr, req)
		}
	default:
		return fmt.Errorf("--protocol %q: want native or kado", *proto)
	}
	if *op == "restore" { // something to read
		for i := 0; i < min(*keys, 10000); i++ {
			if err := kadoCall(kadoAddr, fmt.Sprintf(`{"save":{"sid":"bench-%d","data":%s}}`, i, data)); err != nil {
				return fmt.Errorf("preparing sessions: %w", err)
			}
		}
		*keys = min(*keys, 10000)
	}
	var (
		lastOK    atomic.Int64 // unix ns of the latest success, for gaps
		gapMu     sync.Mutex
		gaps      []float64 // ms without any success, when over gapReport
		ops, errs atomic.Int64
		firstErr  atomic.Value
		lat       = make([][]time.Duration, *callers)
		wg        sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	start := time.Now()
	lastOK.Store(start.UnixNano())
	for g := 0; g < *callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; ctx.Err() == nil; i += *callers {
				t0 := time.Now()
				err := do(context.Background(), fmt.Sprintf("bench-%d", i%*keys))
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ops.Add(1)
				now := time.Now()
				lat[g] = append(lat[g], now.Sub(t0))
				if prev := lastOK.Swap(now.UnixNano()); now.UnixNano()-prev > int64(gapReport) {
					gapMu.Lock()
					gaps = append(gaps, float64(now.UnixNano()-prev)/1e6)
					gapMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	res := map[string]any{
		"op": *op, "protocol": *proto, "callers": *callers, "size": *size,
		"ops": ops.Load(), "errors": errs.Load(), "seconds": elapsed.Seconds(),
		"ops_per_sec": float64(ops.Load()) / elapsed.Seconds(),
		"p50_ms":      pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1),
	}
	res["gaps_ms"] = gaps // every stretch over gapReport with no success, in order
	if e := firstErr.Load(); e != nil {
		res["first_error"] = e
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "%s %s, %d callers, %d B: %.0f ops/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms, %d errors\n",
		*op, *proto, *callers, *size, res["ops_per_sec"], res["p50_ms"], res["p99_ms"], res["max_ms"], errs.Load())
	if len(gaps) > 0 {
		fmt.Fprintf(stdout, "stretches with no success (ms): %.0f\n", gaps)
	}
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(stdout, "first error: %v\n", e)
	}
	return nil
}

// gapReport is the shortest stretch without a successful operation that
// bench reports: failovers and stalls show up there.
const gapReport = 100 * time.Millisecond

// kadoCall makes one Kado JSON request and checks the reply is ok.
func kadoCall(addr, req string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(b), `{"status":"ok"`) {
		return fmt.Errorf("node answered %s", b)
	}
	return nil
}
