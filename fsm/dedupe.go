package fsm

import "sync"

// DedupeWindow is how long (in command time, ms) the state machine
// remembers the RequestIDs it applied. A write retried within it (by a
// client or a node that did not learn the outcome of its first try) is
// answered by the leader instead of proposed again: without this, a retried
// delete could land after another client's later write and undo it, which
// linearizability forbids. Retries end well within a minute (client:
// attempts × request timeout).
const DedupeWindow = 60_000

// dedupe remembers applied RequestIDs in the order they were applied, so
// that forgetting the old ones is a walk from the front. It is not part of
// snapshots (the save-file document has no place for it). A node that
// restarts from its own snapshot refills it from the log entries the
// snapshot left behind (State.RememberApplied), as far back as they reach
// (on a small disk under load, less than the window: cluster's
// trailingFor); a follower that installs a
// snapshot sent by the leader keeps what it had but cannot learn the ids of
// the entries the snapshot replaced, so if it becomes leader within the
// window, a retry of one of those writes may still be applied twice. It
// never changes what Apply does, so replicas cannot diverge over it.
type dedupe struct {
	mu    sync.Mutex
	seen  map[RequestID]int // id → the Count its command returned
	order []dedupeEntry
	head  int
}

type dedupeEntry struct {
	id   RequestID
	time int64
}

// check reports the remembered result of id, forgetting ids older than the
// window at now first.
func (d *dedupe) check(id RequestID, now int64) (int, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.expire(now)
	count, ok := d.seen[id]
	return count, ok
}

// remember records id, applied at now (command time), and forgets the ids
// that fell out of the window by then: a follower never calls check, and
// its table must not grow with every write it ever applied.
func (d *dedupe) remember(id RequestID, now int64, count int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = make(map[RequestID]int)
	}
	d.seen[id] = count
	d.order = append(d.order, dedupeEntry{id: id, time: now})
	d.expire(now)
}

// expire forgets the ids older than the window at now (mu held).
func (d *dedupe) expire(now int64) {
	for d.head < len(d.order) && d.order[d.head].time+DedupeWindow <= now {
		delete(d.seen, d.order[d.head].id)
		d.head++
	}
	if d.head > 4096 && d.head*2 > len(d.order) {
		d.order = append(d.order[:0], d.order[d.head:]...)
		d.head = 0
	}
}

// Len returns how many request ids the state machine remembers.
func (d *dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.seen)
}
