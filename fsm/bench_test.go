package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// kib1 is a 1 KiB session object.
var kib1 = func() []byte {
	head := `{"user":"alice","roles":["admin","dev"],"pad":"`
	tail := `"}`
	return []byte(head + strings.Repeat("x", 1024-len(head)-len(tail)) + tail)
}()

func benchSIDs(n int) []string {
	sids := make([]string, n)
	for i := range sids {
		sids[i] = fmt.Sprintf("%040x", i*2654435761)
	}
	return sids
}

func stateWith(n int) *State {
	s := NewState()
	for i, sid := range benchSIDs(n) {
		s.Apply(&Command{Op: OpSave, Time: int64(i), SID: sid, Data: kib1})
	}
	return s
}

func BenchmarkApplySave(b *testing.B) {
	s := NewState()
	sids := benchSIDs(10_000)
	b.SetBytes(int64(len(kib1)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Apply(&Command{Op: OpSave, Time: int64(i), SID: sids[i%len(sids)], Data: kib1})
		i++
	}
}

// BenchmarkApplyBatch64 measures one raft log entry of 64 saves of 1 KiB
// through the FSM adapter, decoding included.
func BenchmarkApplyBatch64(b *testing.B) {
	f := NewFSM()
	sids := benchSIDs(64 * 128)
	entries := make([][]byte, 128)
	for e := range entries {
		c := Command{Op: OpBatch, Time: int64(e)}
		for j := range 64 {
			c.Batch = append(c.Batch, Command{Op: OpSave, Time: int64(e), SID: sids[e*64+j], Data: kib1})
		}
		entries[e] = c.Encode(nil)
	}
	b.SetBytes(64 * int64(len(kib1)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: entries[i%len(entries)]})
		i++
	}
}

// BenchmarkApplyPatch sets two keys of a 20-key session.
func BenchmarkApplyPatch(b *testing.B) {
	s := NewState()
	var fields []Field
	for k := range 20 {
		fields = append(fields, Field{Key: fmt.Sprintf("key%02d", k), Value: []byte(`"some value of moderate length"`)})
	}
	sids := benchSIDs(1000)
	for _, sid := range sids {
		s.Apply(&Command{Op: OpSave, SID: sid, Data: EncodeObject(fields)})
	}
	set := []Field{{Key: "key05", Value: []byte(`42`)}, {Key: "fresh", Value: []byte(`"v"`)}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c := Command{Op: OpPatch, Time: int64(i), SID: sids[i%len(sids)], Duration: 1 << 40, MaxSize: DefaultMaxSessionSize, Set: set}
		if r := s.Apply(&c); r.Err != nil {
			b.Fatal(r.Err)
		}
		i++
	}
}

func BenchmarkCapture100k(b *testing.B) {
	s := stateWith(100_000)
	b.ReportAllocs()
	for b.Loop() {
		if v := s.Capture(); v.Len() != 100_000 {
			b.Fatal(v.Len())
		}
	}
}

func BenchmarkSnapshotWrite100k(b *testing.B) {
	v := stateWith(100_000).Capture()
	n, _ := v.WriteTo(io.Discard)
	b.SetBytes(n)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadDocument100k(b *testing.B) {
	var doc bytes.Buffer
	if _, err := stateWith(100_000).Capture().WriteTo(&doc); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(doc.Len()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadDocument(bytes.NewReader(doc.Bytes()), 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCaptureStall100k captures and writes 100k sessions of 1 KiB
// while another goroutine applies saves as fast as it can, and reports the
// longest gap between two consecutive Apply completions seen during the
// capture and write (max-stall-µs), the applies made meanwhile, and, for
// scale, the longest gap seen over an equally long window with no capture
// (baseline-stall-µs: GC and scheduling noise).
func BenchmarkCaptureStall100k(b *testing.B) {
	s := stateWith(100_000)
	sids := benchSIDs(200_000)
	var (
		measuring atomic.Bool
		maxStall  atomic.Int64 // ns
		applied   atomic.Int64
		stop      = make(chan struct{})
		done      = make(chan struct{})
	)
	go func() {
		defer close(done)
		last := time.Now()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.Apply(&Command{Op: OpSave, Time: int64(i), SID: sids[i%len(sids)], Data: kib1})
			now := time.Now()
			if measuring.Load() {
				applied.Add(1)
				if gap := now.Sub(last).Nanoseconds(); gap > maxStall.Load() {
					maxStall.Store(gap)
				}
			}
			last = now
		}
	}()
	window := func(during func()) (stall int64, applies int64) {
		maxStall.Store(0)
		applied.Store(0)
		measuring.Store(true)
		during()
		measuring.Store(false)
		return maxStall.Load(), applied.Load()
	}
	var written, worst, worstBase, applies int64
	for b.Loop() {
		start := time.Now()
		stall, n := window(func() {
			var err error
			if written, err = s.Capture().WriteTo(io.Discard); err != nil {
				b.Fatal(err)
			}
		})
		elapsed := time.Since(start)
		worst, applies = max(worst, stall), applies+n
		b.StopTimer()
		base, _ := window(func() { time.Sleep(elapsed) })
		worstBase = max(worstBase, base)
		b.StartTimer()
	}
	close(stop)
	<-done
	b.SetBytes(written)
	b.ReportMetric(float64(worst)/1e3, "max-stall-µs")
	b.ReportMetric(float64(worstBase)/1e3, "baseline-stall-µs")
	b.ReportMetric(float64(applies)/float64(b.N), "applies/op")
}

// BenchmarkNormalizeObject normalizes a 1 KiB session object, as a node does
// for every save it receives.
func BenchmarkNormalizeObject(b *testing.B) {
	b.SetBytes(int64(len(kib1)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NormalizeObject(kib1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompactValue is a patched value's check on its way in (a node's
// Patch, MemoryStore's Save and Patch): a 1 KiB compact JSON object, by
// CompactValue and by json.Compact, which they used before.
func BenchmarkCompactValue(b *testing.B) {
	v := []byte(`{"cart":[` + strings.Repeat(`{"sku":"A-1042","qty":2,"price":19.99,"note":"gift \"wrap\""},`, 15) + `{"sku":"Z","qty":1}],"user":"alice"}`)
	b.Run("CompactValue", func(b *testing.B) {
		b.SetBytes(int64(len(v)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := CompactValue(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json.Compact", func(b *testing.B) {
		b.SetBytes(int64(len(v)))
		b.ReportAllocs()
		for b.Loop() {
			var buf bytes.Buffer
			if err := json.Compact(&buf, v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
