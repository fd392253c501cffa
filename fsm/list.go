package fsm

import (
	"container/heap"
	"slices"
	"strings"
)

// ListEntry is one session State.List returns.
type ListEntry struct {
	SID string
	// Record is the stored record itself, shared with the State: records
	// are immutable, so reading it is safe, but it must not be modified.
	Record *Record
}

// List returns, in byte order of id, the first limit sessions whose id
// starts with prefix, sorts strictly after after (byte order; "" for from
// the start), and has not expired at now for the given lifetime (ms, judged
// as Get judges it), and whether more such sessions follow them. limit <= 0
// means no limit.
//
// It visits every stored session, one shard at a time under that shard's
// read lock: O(sessions + matches·log limit) per call, with no copy of the
// state. It is safe concurrently with Apply, but it is not one point in
// time across shards: a session written during the call may or may not be
// in the answer (each record returned is one that was stored at some moment
// during the call).
func (s *State) List(prefix, after string, limit int, now, duration int64) (page []ListEntry, more bool) {
	var top entryHeap // the limit smallest matching ids seen so far, largest first
	matches := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for sid, r := range sh.sessions {
			if sid <= after || !strings.HasPrefix(sid, prefix) || r.Expired(now, duration) {
				continue
			}
			matches++
			switch {
			case limit <= 0:
				top = append(top, ListEntry{SID: sid, Record: r}) // no heap needed: all are kept
			case len(top) < limit:
				heap.Push(&top, ListEntry{SID: sid, Record: r})
			case sid < top[0].SID:
				top[0] = ListEntry{SID: sid, Record: r}
				heap.Fix(&top, 0)
			}
		}
		sh.mu.RUnlock()
	}
	page = []ListEntry(top)
	slices.SortFunc(page, func(a, b ListEntry) int { return strings.Compare(a.SID, b.SID) })
	return page, matches > len(page)
}

// entryHeap is a max-heap of entries by id (container/heap).
type entryHeap []ListEntry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].SID > h[j].SID }
func (h entryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *entryHeap) Push(x any)        { *h = append(*h, x.(ListEntry)) }
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
