package faultkit

import (
	"fmt"
	"hash/fnv"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// state is one session in the model: immutable once built.
type state struct {
	present bool
	data    map[string]string
	text    string // canon(present, data)
}

func newState(present bool, data map[string]string) *state {
	return &state{present: present, data: data, text: canon(present, data)}
}

var absent = newState(false, nil)

// Model is the porcupine model of the store: a map sid → session,
// partitioned by sid, so each partition's state is one session. Inputs are
// *Op; outputs are unused (a read's observation is part of its Op).
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var sids []string
		for _, o := range history {
			sid := o.Input.(*Op).SID
			if _, ok := by[sid]; !ok {
				sids = append(sids, sid)
			}
			by[sid] = append(by[sid], o)
		}
		out := make([][]porcupine.Operation, 0, len(sids))
		for _, sid := range sids {
			out = append(out, by[sid])
		}
		return out
	},
	Init: func() any { return absent },
	Step: func(s, in, _ any) (bool, any) {
		st, op := s.(*state), in.(*Op)
		switch op.Kind {
		case Save:
			return true, newState(true, op.Data)
		case Patch:
			d := maps.Clone(st.data)
			if d == nil {
				d = map[string]string{}
			}
			maps.Copy(d, op.Data)
			for _, k := range op.Del {
				delete(d, k)
			}
			return true, newState(true, d)
		case Delete:
			return true, absent
		case Read:
			return observes(st, op), st
		}
		return false, st
	},
	Equal: func(a, b any) bool { return a.(*state).text == b.(*state).text },
	Hash: func(s any) uint64 {
		h := fnv.New64a()
		h.Write([]byte(s.(*state).text))
		return h.Sum64()
	},
	DescribeOperation: func(in, _ any) string { return in.(*Op).String() },
	DescribeState:     func(s any) string { return s.(*state).text },
}

// observes reports whether read op could have seen st.
func observes(st *state, op *Op) bool {
	switch op.Found {
	case FoundNo:
		return !st.present
	case FoundYes:
		return st.present && st.text == canon(true, op.Data)
	default: // Kado JSON: {} for an unknown sid
		if !st.present {
			return len(op.Data) == 0
		}
		return st.text == canon(true, op.Data)
	}
}

// Result sums up the checks of one history.
type Result struct {
	Ops        int      // operations recorded
	Acked      int      // acknowledged writes
	Pending    int      // writes whose outcome is unknown
	Lost       int      // acknowledged writes missing from the final state though nothing could have overwritten them
	Violations int      // sessions whose history is not linearizable
	Unknown    int      // sessions the checker ran out of time on
	Details    []string // what was lost, what was not linearizable (with a history excerpt), which read went back in time

	MonoReads      int // Leader/Stale reads checked by CheckMonotonic
	MonoViolations int // of which saw a mono session go back in time
	MonoExcused    int // went back in time across a restart of the pinned node (not a failure; see CheckMonotonic)
}

// Failed reports whether anything was lost, not linearizable, or read
// going back in time.
func (r Result) Failed() bool { return r.Lost > 0 || r.Violations > 0 || r.MonoViolations > 0 }

// CheckMonotonic adds to r the check of the mono readers' reads (see
// Workload): per reader and per session, a read must observe everything
// that a read of the same reader which returned before it began observed.
// A mono session only grows (keys are only added), so this is "the reader
// never sees time go backwards", and it holds whatever order pending
// writes take effect in. ops, the recorded history, is used to name the
// write a backwards read missed.
//
// restarts (Workload.Restarts), when not nil, excuses one case: a reader
// pinned to one node (MonoRead.Node) whose node was restarted after the
// earlier read began and before the later one ended. A restarted node
// serves from its last snapshot until it has caught up with the leader, so
// such a step back is what the nodes do today, not a checker error; it is
// counted in r.MonoExcused (and described) but does not fail r. With
// restarts nil nothing is excused.
func (r *Result) CheckMonotonic(reads []MonoRead, ops []Op, restarts map[string][]int64) {
	restartedBetween := func(node string, from, to int64) bool {
		for _, t := range restarts[node] {
			if node != "" && from < t && t < to {
				return true
			}
		}
		return false
	}
	type key struct{ reader, sid string }
	by := map[key][]*MonoRead{}
	var keys []key
	for i := range reads {
		k := key{reads[i].Reader, reads[i].SID}
		if _, ok := by[k]; !ok {
			keys = append(keys, k)
		}
		by[k] = append(by[k], &reads[i])
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].reader != keys[j].reader {
			return keys[i].reader < keys[j].reader
		}
		return keys[i].sid < keys[j].sid
	})
	writeOf := func(sid, k string) string {
		for i := range ops {
			if ops[i].SID == sid && ops[i].Kind != Read {
				if _, ok := ops[i].Data[k]; ok {
					return ops[i].String()
				}
			}
		}
		return "(no recorded write)"
	}
	desc := func(rd *MonoRead) string {
		what := "absent"
		if rd.Found {
			what = fmt.Sprintf("%d keys", len(rd.Data))
		}
		return fmt.Sprintf("[%.3fs..%.3fs] -> %s", float64(rd.Call)/1e9, float64(rd.Return)/1e9, what)
	}
	excused := 0
	for _, k := range keys {
		h := by[k]
		r.MonoReads += len(h)
		sort.SliceStable(h, func(i, j int) bool { return h[i].Call < h[j].Call })
		byRet := append([]*MonoRead(nil), h...)
		sort.SliceStable(byRet, func(i, j int) bool { return byRet[i].Return < byRet[j].Return })
		// The latest (by call) read, among those that returned before the
		// one checked began, that saw each key / found the session.
		seen := map[string]*MonoRead{}
		var found *MonoRead
		j := 0
		for _, b := range h {
			for ; j < len(byRet) && byRet[j].Return < b.Call; j++ {
				a := byRet[j]
				if a.Found && (found == nil || a.Call > found.Call) {
					found = a
				}
				for dk := range a.Data {
					if seen[dk] == nil || a.Call > seen[dk].Call {
						seen[dk] = a
					}
				}
			}
			var why string
			var witness *MonoRead
			if found != nil && !b.Found {
				witness = found
				why = fmt.Sprintf("the session is absent, but read %s found it", desc(found))
			} else {
				var missing []string
				for dk := range seen {
					if _, ok := b.Data[dk]; !ok {
						missing = append(missing, dk)
					}
				}
				if len(missing) > 0 {
					// The latest witness decides whether a restart excuses it.
					sort.Slice(missing, func(x, y int) bool {
						if cx, cy := seen[missing[x]].Call, seen[missing[y]].Call; cx != cy {
							return cx > cy
						}
						return missing[x] < missing[y]
					})
					witness = seen[missing[0]]
					why = fmt.Sprintf("%d key(s) missing that earlier reads saw, e.g. %s, seen by read %s; its write: %s",
						len(missing), missing[0], desc(witness), writeOf(k.sid, missing[0]))
				}
			}
			switch {
			case why == "":
			case restarts != nil && restartedBetween(b.Node, witness.Call, b.Return):
				r.MonoExcused++
				if excused++; excused <= 3 {
					r.Details = append(r.Details, fmt.Sprintf("note: read went backwards across a restart of %s (excused): reader %s, session %s: read %s: %s", b.Node, k.reader, k.sid, desc(b), why))
				}
			default:
				r.MonoViolations++
				if r.MonoViolations <= 10 {
					r.Details = append(r.Details, fmt.Sprintf("READ WENT BACKWARDS: reader %s, session %s: read %s: %s", k.reader, k.sid, desc(b), why))
				}
			}
		}
	}
}

// Check checks a history whose last operations are one successful final
// read per session (Via "final", made once the cluster was healed):
// acknowledged writes not overwritten must be in the final state, and every
// session's history must be linearizable. timeout bounds porcupine per
// session; dir, when set, receives (created if need be) an HTML
// visualisation and the full history of any violation.
func Check(ops []Op, timeout time.Duration, dir string) Result {
	var res Result
	res.Ops = len(ops)
	bySID := map[string][]*Op{}
	var sids []string
	for i := range ops {
		op := &ops[i]
		if _, ok := bySID[op.SID]; !ok {
			sids = append(sids, op.SID)
		}
		bySID[op.SID] = append(bySID[op.SID], op)
		if op.Acked() {
			res.Acked++
		} else if op.Kind != Read {
			res.Pending++
		}
	}
	sort.Strings(sids)
	for _, sid := range sids {
		h := bySID[sid]
		lost := lostWrites(h)
		res.Lost += len(lost)
		res.Details = append(res.Details, lost...)

		hist := make([]porcupine.Operation, len(h))
		for i, op := range h {
			hist[i] = porcupine.Operation{ClientId: op.Client, Input: op, Call: op.Call, Return: op.Return}
		}
		r, info := porcupine.CheckOperationsVerbose(Model, hist, timeout)
		switch r {
		case porcupine.Unknown:
			res.Unknown++
		case porcupine.Illegal:
			res.Violations++
			res.Details = append(res.Details, excerpt(sid, h, info, dir))
		}
	}
	return res
}

// lostWrites lists the acknowledged writes of one session's history that
// the final read contradicts although no other write could have been
// ordered after them (one that did not finish before they began).
func lostWrites(h []*Op) []string {
	var final *Op
	for _, op := range h {
		if op.Via == "final" && op.Kind == Read {
			final = op
		}
	}
	if final == nil {
		return nil
	}
	var out []string
	for _, w := range h {
		if !w.Acked() {
			continue
		}
		// later reports whether another write touching key (or, for "",
		// any write) may be ordered after w.
		later := func(key string) bool {
			for _, o := range h {
				if o == w || o.Kind == Read || o.Return < w.Call {
					continue
				}
				switch o.Kind {
				case Save, Delete:
					return true
				case Patch:
					if key == "" {
						return true
					}
					if _, ok := o.Data[key]; ok {
						return true
					}
					for _, k := range o.Del {
						if k == key {
							return true
						}
					}
				}
			}
			return false
		}
		present := final.Found != FoundNo && !(final.Found == FoundUnknown && len(final.Data) == 0)
		var why string
		switch w.Kind {
		case Save, Patch:
			for k, v := range w.Data {
				if !later(k) && (!present || final.Data[k] != v) {
					why = fmt.Sprintf("key %s=%s missing from the final state %s", k, v, canon(present, final.Data))
					break
				}
			}
			for _, k := range w.Del {
				if _, ok := final.Data[k]; ok && !later(k) {
					why = fmt.Sprintf("deleted key %s back in the final state %s", k, canon(present, final.Data))
				}
			}
		case Delete:
			if present && !later("") {
				why = fmt.Sprintf("deleted session present in the final state %s", canon(present, final.Data))
			}
		}
		if why != "" {
			out = append(out, fmt.Sprintf("LOST %s: %s", w, why))
		}
	}
	return out
}

// excerpt describes a linearizability violation: the end of the longest
// linearizable prefix and the operations that could not follow it.
func excerpt(sid string, h []*Op, info porcupine.LinearizationInfo, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "NOT LINEARIZABLE: session %s (%d ops)\n", sid, len(h))
	var best []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, lin := range part {
			if len(lin) > len(best) {
				best = lin
			}
		}
	}
	in := map[int]bool{}
	for _, o := range best {
		in[o.Input.(*Op).ID] = true
	}
	b.WriteString("  longest linearizable prefix ends:\n")
	for _, o := range best[max(0, len(best)-8):] {
		fmt.Fprintf(&b, "    %s\n", o.Input.(*Op))
	}
	b.WriteString("  first operations that cannot follow it:\n")
	n := 0
	for _, op := range h {
		if !in[op.ID] && n < 10 {
			fmt.Fprintf(&b, "    %s\n", op)
			n++
		}
	}
	if dir != "" && os.MkdirAll(dir, 0o755) == nil {
		path := filepath.Join(dir, "porcupine-"+sid+".html")
		if err := porcupine.VisualizePath(Model, info, path); err == nil {
			fmt.Fprintf(&b, "  visualisation: %s\n", path)
		}
		var all strings.Builder
		for _, op := range h {
			all.WriteString(op.String() + "\n")
		}
		path = filepath.Join(dir, "history-"+sid+".txt")
		if err := os.WriteFile(path, []byte(all.String()), 0o644); err == nil {
			fmt.Fprintf(&b, "  full history: %s\n", path)
		}
	}
	return b.String()
}
