package cluster

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"
)

// readCounter is a log store that counts the entries read from it, and
// fails its appends while failing is set.
type readCounter struct {
	raft.LogStore
	reads   int
	failing bool
}

func (r *readCounter) GetLog(index uint64, l *raft.Log) error {
	r.reads++
	return r.LogStore.GetLog(index, l)
}

func (r *readCounter) StoreLogs(logs []*raft.Log) error {
	if r.failing {
		return errors.New("disk full")
	}
	return r.LogStore.StoreLogs(logs)
}

// TestLogCacheBoundedByBytes: the cache keeps the newest entries up to a
// count and a size (raft.LogCache kept 512 entries of any size: 1 MB
// sessions in 4 MiB batches held a gigabyte), serves them without reading
// the store, forgets only what a compaction or a truncation removes, and
// caches no failed append.
func TestLogCacheBoundedByBytes(t *testing.T) {
	store := &readCounter{LogStore: raft.NewInmemStore()}
	c := newLogCache(store, 8, 10<<20)
	big := make([]byte, 4<<20)
	small := []byte("x")
	stored := map[uint64][]byte{}
	put := func(from, to uint64, data []byte) {
		t.Helper()
		var logs []*raft.Log
		for i := from; i <= to; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: 1, Data: data})
			stored[i] = data
		}
		if err := c.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	// cached reports which of from..to are served from the cache, and
	// checks every entry reads back as stored.
	cached := func(from, to uint64) (got []uint64) {
		t.Helper()
		for i := from; i <= to; i++ {
			before := store.reads
			var l raft.Log
			if err := c.GetLog(i, &l); err != nil || l.Index != i || len(l.Data) != len(stored[i]) {
				t.Fatalf("entry %d: index %d, %d bytes, %v; stored %d bytes", i, l.Index, len(l.Data), err, len(stored[i]))
			}
			if store.reads == before {
				got = append(got, i)
			}
		}
		return got
	}
	same := func(got []uint64, from, to uint64) bool {
		if len(got) != int(to-from+1) {
			return false
		}
		for k, i := range got {
			if i != from+uint64(k) {
				return false
			}
		}
		return true
	}

	put(1, 20, small)
	if got := cached(1, 20); !same(got, 13, 20) {
		t.Fatalf("20 small entries, at most 8 cached: cached %v, want 13..20", got)
	}
	put(21, 23, big)
	if got := cached(1, 23); !same(got, 22, 23) || c.bytes > 10<<20 {
		t.Fatalf("three entries of 4 MiB, at most 10 MiB cached: cached %v (%d bytes), want 22..23", got, c.bytes)
	}
	put(24, 30, small)
	// A compaction forgets only what it removes.
	if err := c.DeleteRange(1, 24); err != nil {
		t.Fatal(err)
	}
	if got := cached(25, 30); !same(got, 25, 30) {
		t.Fatalf("after a compaction to 24: cached %v, want 25..30", got)
	}
	// A follower's truncation too, and the new tail follows on.
	if err := c.DeleteRange(28, 30); err != nil {
		t.Fatal(err)
	}
	put(28, 29, small)
	if got := cached(25, 29); !same(got, 25, 29) {
		t.Fatalf("after a truncation from 28 and a new 28..29: cached %v, want 25..29", got)
	}
	// A failed append is not cached; a gap starts the cache afresh.
	store.failing = true
	if err := c.StoreLogs([]*raft.Log{{Index: 30, Term: 2, Data: small}}); err == nil {
		t.Fatal("a failed append succeeded")
	}
	store.failing = false
	var l raft.Log
	if c.GetLog(30, &l) == nil {
		t.Fatalf("a failed append was cached: %+v", l)
	}
	put(40, 41, small)
	if got := cached(40, 41); !same(got, 40, 41) || len(cached(25, 29)) != 0 {
		t.Fatalf("after a gap: cached %v of 40..41, and some of 25..29", got)
	}
}
