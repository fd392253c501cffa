package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kadosession/kadosession/client"
)

// session1K is a session of 16 keys whose JSON object is about 1 KiB.
func session1K() map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, 16)
	for i := range 16 {
		m[fmt.Sprintf("key%02d", i)] = json.RawMessage(`"` + strings.Repeat(string(rune('a'+i)), 54) + `"`)
	}
	return m
}

// benchStore serves an in-memory handler on loopback holding one 1 KiB
// session per sid the benchmark uses.
func benchStore(b *testing.B, sids int) (*client.Store, []string) {
	b.Helper()
	h := newMemHandler()
	ts := startServer(b, "127.0.0.1:0", h)
	s := newStore(b, client.Config{Addrs: []string{ts.addr}})
	data := session1K()
	enc, _ := json.Marshal(data)
	b.SetBytes(int64(len(enc)))
	ids := make([]string, sids)
	for i := range ids {
		ids[i] = fmt.Sprintf("%040x", i)
		if err := s.Save(context.Background(), ids[i], data); err != nil {
			b.Fatal(err)
		}
	}
	return s, ids
}

func benchRoundTrip(b *testing.B, goroutines int, op func(s *client.Store, sid string, data map[string]json.RawMessage) error) {
	s, ids := benchStore(b, goroutines)
	data := session1K()
	b.ReportAllocs()
	b.ResetTimer()
	if goroutines == 1 {
		for range b.N {
			if err := op(s, ids[0], data); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism((goroutines + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		sid := ids[int(next.Add(1)-1)%len(ids)]
		for pb.Next() {
			if err := op(s, sid, data); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func restoreOp(s *client.Store, sid string, _ map[string]json.RawMessage) error {
	_, found, err := s.Restore(context.Background(), sid)
	if err == nil && !found {
		err = fmt.Errorf("session %s not found", sid)
	}
	return err
}

func saveOp(s *client.Store, sid string, data map[string]json.RawMessage) error {
	return s.Save(context.Background(), sid, data)
}

func BenchmarkRoundTripRestore1(b *testing.B)  { benchRoundTrip(b, 1, restoreOp) }
func BenchmarkRoundTripRestore64(b *testing.B) { benchRoundTrip(b, 64, restoreOp) }
func BenchmarkRoundTripSave1(b *testing.B)     { benchRoundTrip(b, 1, saveOp) }
func BenchmarkRoundTripSave64(b *testing.B)    { benchRoundTrip(b, 64, saveOp) }
