package cluster

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/internal/faultkit"
)

// TestFaultCheckerCatches shows that the checks the fault schedules rely
// on have teeth: hand-made histories with a stale read, a lost write or a
// resurrected delete fail, and their correct twins pass.
func TestFaultCheckerCatches(t *testing.T) {
	const P = faultkit.Pending
	save := func(c int, sid, v string, call, ret int64) faultkit.Op {
		return faultkit.Op{Client: c, Via: "go", Kind: faultkit.Save, SID: sid, Data: map[string]string{"a": v}, Call: call, Return: ret}
	}
	patch := func(c int, sid, k, v string, call, ret int64) faultkit.Op {
		return faultkit.Op{Client: c, Via: "go", Kind: faultkit.Patch, SID: sid, Data: map[string]string{k: v}, Call: call, Return: ret}
	}
	del := func(c int, sid string, call, ret int64) faultkit.Op {
		return faultkit.Op{Client: c, Via: "go", Kind: faultkit.Delete, SID: sid, Call: call, Return: ret}
	}
	read := func(c int, via, sid string, found faultkit.Found, data map[string]string, call, ret int64) faultkit.Op {
		return faultkit.Op{Client: c, Via: via, Kind: faultkit.Read, SID: sid, Found: found, Data: data, Call: call, Return: ret}
	}
	a := func(v string) map[string]string { return map[string]string{"a": v} }
	tests := []struct {
		name             string
		ops              []faultkit.Op
		lost, violations int
	}{
		{"linearizable", []faultkit.Op{
			save(0, "s", "1", 0, 10), save(1, "s", "2", 20, 30), read(2, "go", "s", faultkit.FoundYes, a("2"), 40, 50),
			read(4, "final", "s", faultkit.FoundYes, a("2"), 100, 110),
		}, 0, 0},
		{"stale read after a newer acknowledged save", []faultkit.Op{
			save(0, "s", "1", 0, 10), save(1, "s", "2", 20, 30), read(2, "go", "s", faultkit.FoundYes, a("1"), 40, 50),
			read(4, "final", "s", faultkit.FoundYes, a("2"), 100, 110),
		}, 0, 1},
		{"stale Kado read after a delete", []faultkit.Op{
			save(0, "s", "1", 0, 10), del(1, "s", 20, 30), read(3, "kado", "s", faultkit.FoundUnknown, a("1"), 40, 50),
			read(4, "final", "s", faultkit.FoundNo, nil, 100, 110),
		}, 0, 1},
		{"lost acknowledged patch", []faultkit.Op{
			patch(0, "ledger", "k1", "1", 0, 10), patch(0, "ledger", "k2", "2", 20, 30),
			read(4, "final", "ledger", faultkit.FoundYes, map[string]string{"k1": "1"}, 100, 110),
		}, 1, 1},
		{"pending write that took effect late", []faultkit.Op{
			save(0, "s", "1", 0, 10), save(1, "s", "2", 20, P), read(2, "go", "s", faultkit.FoundYes, a("1"), 40, 50),
			read(2, "go", "s", faultkit.FoundYes, a("2"), 60, 70), read(4, "final", "s", faultkit.FoundYes, a("2"), 100, 110),
		}, 0, 0},
		{"pending write applied twice around another save", []faultkit.Op{
			save(1, "s", "2", 0, P), read(2, "go", "s", faultkit.FoundYes, a("2"), 10, 20),
			save(0, "s", "3", 30, 40), read(2, "go", "s", faultkit.FoundYes, a("3"), 50, 60),
			read(4, "final", "s", faultkit.FoundYes, a("2"), 100, 110),
		}, 0, 1},
		{"resurrected delete", []faultkit.Op{
			save(0, "s", "1", 0, 10), del(1, "s", 20, 30),
			read(4, "final", "s", faultkit.FoundYes, a("1"), 100, 110),
		}, 1, 1},
		{"overwritten write is not lost", []faultkit.Op{
			save(0, "s", "1", 0, 10), save(1, "s", "2", 5, P),
			read(4, "final", "s", faultkit.FoundYes, a("2"), 100, 110),
		}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := faultkit.Check(tt.ops, 5*time.Second, "")
			if res.Lost != tt.lost || res.Violations != tt.violations {
				t.Errorf("lost %d, violations %d; want %d, %d\n%s", res.Lost, res.Violations, tt.lost, tt.violations, strings.Join(res.Details, "\n"))
			}
		})
	}
}

// TestFaultNetCuts checks the fault layer itself: a refused link fails
// dials and the connections it had (also those dialled before the peer's
// address was registered), one direction only; a held link
// delivers after the heal; a dropped link loses what is written.
func TestFaultNetCuts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	fn := newFaultNet(1)
	defer fn.closeAll()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	echo := func(c net.Conn, msg string) error {
		_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		_, err := c.Read(buf)
		if err == nil && string(buf) != msg {
			err = errors.New("echo " + string(buf))
		}
		return err
	}
	c, err := fn.dialer(0)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echo(c, "one"); err != nil {
		t.Fatalf("healthy link: %v", err)
	}
	// Registered after the dial, as a test cluster's addresses are after
	// it formed: the connection is on link 0 -> 1 from now on.
	fn.register(ln.Addr().String(), 1)

	fn.set(link{1, 0}, faultRefuse) // the other direction: no effect on 0 -> 1
	if err := echo(c, "two"); err != nil {
		t.Fatalf("cutting 1->0 broke 0->1: %v", err)
	}
	fn.set(link{0, 1}, faultRefuse)
	if err := echo(c, "three"); err == nil {
		t.Fatal("refused link still carries data")
	}
	if _, err := fn.dialer(0)(ctx, "tcp", ln.Addr().String()); !errors.Is(err, errCut) {
		t.Fatalf("dial on a refused link: %v", err)
	}
	fn.healAll()

	c2, err := fn.dialer(0)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fn.set(link{0, 1}, faultDrop)
	if err := echo(c2, "four"); err == nil {
		t.Fatal("dropped link delivered")
	}
	fn.healAll()

	c3, err := fn.dialer(0)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	fn.set(link{0, 1}, faultHold)
	go func() { time.Sleep(100 * time.Millisecond); fn.healAll() }()
	_ = c3.SetDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	if _, err := c3.Write([]byte("five")); err != nil {
		t.Fatalf("held write: %v", err)
	}
	if time.Since(start) < 80*time.Millisecond {
		t.Error("held write went through before the heal")
	}
	buf := make([]byte, 4)
	if _, err := c3.Read(buf); err != nil || string(buf) != "five" {
		t.Fatalf("after the heal: %q %v", buf, err)
	}
}

// TestFaultMonotonicCatches shows that the Leader/Stale read check fails a
// reader that sees a mono session lose a key or vanish, allows overlapping
// reads to disagree, and excuses a step back across a restart of a pinned
// reader's node only when told of the restart.
func TestFaultMonotonicCatches(t *testing.T) {
	rd := func(reader, node string, call, ret int64, keys ...string) faultkit.MonoRead {
		r := faultkit.MonoRead{Reader: reader, Node: node, SID: "mono", Call: call, Return: ret}
		if keys != nil {
			r.Found, r.Data = true, map[string]string{}
			for _, k := range keys {
				r.Data[k] = "1"
			}
		}
		return r
	}
	none := []string(nil)
	restarts := map[string][]int64{"n1": {25}}
	tests := []struct {
		name                string
		reads               []faultkit.MonoRead
		restarts            map[string][]int64
		violations, excused int
	}{
		{"growing", []faultkit.MonoRead{rd("r", "", 0, 10, none...), rd("r", "", 20, 30, "a"), rd("r", "", 40, 50, "a", "b")}, nil, 0, 0},
		{"key lost", []faultkit.MonoRead{rd("r", "", 0, 10, "a", "b"), rd("r", "", 20, 30, "a")}, nil, 1, 0},
		{"session vanished", []faultkit.MonoRead{rd("r", "", 0, 10, "a"), rd("r", "", 20, 30, none...)}, nil, 1, 0},
		{"lost key stays lost", []faultkit.MonoRead{rd("r", "", 0, 10, "a", "b"), rd("r", "", 20, 30, "a"), rd("r", "", 40, 50, "a", "c")}, nil, 2, 0},
		{"overlapping reads may disagree", []faultkit.MonoRead{rd("r", "", 0, 30, "a", "b"), rd("r", "", 20, 40, "a")}, nil, 0, 0},
		{"two readers are independent", []faultkit.MonoRead{rd("r1", "", 0, 10, "a", "b"), rd("r2", "", 20, 30, "a")}, nil, 0, 0},
		{"back across a restart, excused", []faultkit.MonoRead{rd("s", "n1", 0, 10, "a"), rd("s", "n1", 20, 30, none...)}, restarts, 0, 1},
		{"back across a restart, strict", []faultkit.MonoRead{rd("s", "n1", 0, 10, "a"), rd("s", "n1", 20, 30, none...)}, nil, 1, 0},
		{"back after the restart is not excused", []faultkit.MonoRead{rd("s", "n1", 0, 10, "a"), rd("s", "n1", 30, 35, "a", "b"), rd("s", "n1", 40, 50, "a")}, restarts, 1, 0},
		{"another node's restart excuses nothing", []faultkit.MonoRead{rd("s", "n2", 0, 10, "a"), rd("s", "n2", 20, 30, none...)}, restarts, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var res faultkit.Result
			res.CheckMonotonic(tt.reads, nil, tt.restarts)
			if res.MonoViolations != tt.violations || res.MonoExcused != tt.excused || res.MonoReads != len(tt.reads) || res.Failed() != (tt.violations > 0) {
				t.Errorf("reads %d, violations %d, excused %d, failed %v; want %d, %d, %d\n%s", res.MonoReads, res.MonoViolations, res.MonoExcused, res.Failed(), len(tt.reads), tt.violations, tt.excused, strings.Join(res.Details, "\n"))
			}
		})
	}
}
