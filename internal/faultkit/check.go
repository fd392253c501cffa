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
	Details    []string // what was lost, what was not linearizable (with a history excerpt)
}

// Failed reports whether anything was lost or not linearizable.
func (r Result) Failed() bool { return r.Lost > 0 || r.Violations > 0 }

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
