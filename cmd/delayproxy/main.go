// Command delayproxy forwards TCP connections through links with a one-way
// delay, jitter, an optional bandwidth cap and stalls (internal/netdelay),
// for trying kadosession over WAN-like links on a machine without netem:
// give each node an --advertise address that is a proxy in front of its
// --listen port, and raft, forwarding and peer calls cross the delay.
//
//	delayproxy --delay 40ms --jitter 5ms \
//	    --route 127.0.0.1:22101=127.0.0.1:22001 --route 127.0.0.1:22102=127.0.0.1:22002
//
// It runs until SIGINT or SIGTERM, or for --for.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kadosession/kadosession/internal/netdelay"
)

type routes []string

func (r *routes) String() string     { return strings.Join(*r, ",") }
func (r *routes) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var rs routes
	var l netdelay.Link
	flag.Var(&rs, "route", "LISTEN=TARGET, repeatable")
	flag.DurationVar(&l.Delay, "delay", 0, "one-way delay each direction (half the round trip)")
	flag.DurationVar(&l.Jitter, "jitter", 0, "random extra delay per chunk, 0..jitter")
	flag.IntVar(&l.BytesPerSec, "bandwidth", 0, "bytes per second each direction (0: no cap)")
	flag.DurationVar(&l.StallEvery, "stall-every", 0, "hold a direction about this often")
	flag.DurationVar(&l.StallFor, "stall-for", 0, "for this long")
	life := flag.Duration("for", 0, "exit after this long (0: until a signal)")
	seed := flag.Int64("seed", 1, "random seed for jitter and stalls")
	flag.Parse()
	if len(rs) == 0 {
		fmt.Fprintln(os.Stderr, "delayproxy: give at least one --route LISTEN=TARGET")
		os.Exit(2)
	}
	var ps []*netdelay.Proxy
	for i, r := range rs {
		listen, target, ok := strings.Cut(r, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "delayproxy: --route %q: want LISTEN=TARGET\n", r)
			os.Exit(2)
		}
		p, err := netdelay.Listen(listen, target, l, *seed+int64(i))
		if err != nil {
			fmt.Fprintf(os.Stderr, "delayproxy: %v\n", err)
			os.Exit(1)
		}
		ps = append(ps, p)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var end <-chan time.Time
	if *life > 0 {
		end = time.After(*life)
	}
	select {
	case <-sig:
	case <-end:
	}
	for _, p := range ps {
		p.Close()
	}
}
