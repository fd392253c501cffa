// Package faultkit is the workload, history and checks shared by the
// in-process fault tests (package cluster) and the process-level fault
// runner (cmd/faultcheck): clients doing save/patch/delete/restore on a few
// sessions while faults happen, every call recorded with its start, end and
// result, then checked for lost writes and with porcupine for
// linearizability.
package faultkit

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// Kind is an operation's kind.
type Kind uint8

// Operation kinds.
const (
	Save   Kind = iota + 1 // replace the whole session
	Patch                  // set (and delete) keys
	Delete                 // remove the session
	Read                   // restore
)

func (k Kind) String() string {
	return [...]string{"?", "save", "patch", "delete", "read"}[k]
}

// Found says what a read observed about the session's existence.
type Found uint8

// Read outcomes. FoundUnknown is a Kado JSON read: an unknown sid and an
// empty session both answer {}.
const (
	FoundNo Found = iota
	FoundYes
	FoundUnknown
)

// Pending is the Return time of an operation whose outcome is unknown (a
// timed-out or failed write): it may take effect at any time after its call.
const Pending = math.MaxInt64

// Op is one recorded call. Values are raw JSON as the server stores them.
type Op struct {
	ID     int
	Client int
	Via    string // "go", "kado" or "final"
	Kind   Kind
	SID    string
	Data   map[string]string // Save: the whole data; Patch: keys set; Read: what was observed
	Del    []string          // Patch: keys deleted
	Found  Found             // Read
	Call   int64             // ns since the recorder started
	Return int64             // ns since the recorder started, or Pending
	Err    string            // why a write is pending
	Node   string            // the node address the call went to first
}

// Acked reports whether op is a write the cluster acknowledged.
func (op *Op) Acked() bool { return op.Kind != Read && op.Return != Pending }

func (op *Op) String() string {
	ret := "pending"
	if op.Return != Pending {
		ret = fmt.Sprintf("%.3fs", float64(op.Return)/1e9)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#%d c%d/%s [%.3fs..%s] %s %s", op.ID, op.Client, op.Via, float64(op.Call)/1e9, ret, op.Kind, op.SID)
	switch op.Kind {
	case Save:
		b.WriteString(" " + canon(true, op.Data))
	case Patch:
		b.WriteString(" set " + canon(true, op.Data))
		if len(op.Del) > 0 {
			fmt.Fprintf(&b, " del %v", op.Del)
		}
	case Read:
		switch op.Found {
		case FoundNo:
			b.WriteString(" -> absent")
		case FoundUnknown:
			b.WriteString(" -> (kado) " + canon(true, op.Data))
		default:
			b.WriteString(" -> " + canon(true, op.Data))
		}
	}
	if op.Err != "" {
		b.WriteString(" err: " + op.Err)
	}
	if op.Node != "" {
		b.WriteString(" @" + op.Node)
	}
	return b.String()
}

// Recorder collects a history. Safe for concurrent use.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
}

// NewRecorder starts the history's clock.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Now is the history's clock (monotonic ns).
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

// Add records op (Call and Return already set).
func (r *Recorder) Add(op Op) {
	r.mu.Lock()
	op.ID = len(r.ops)
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Ops returns a copy of the history sorted by call time.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	out := append([]Op(nil), r.ops...)
	r.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Call < out[j].Call })
	return out
}

// canon is a session's canonical text: keys sorted, or "absent".
func canon(present bool, data map[string]string) string {
	if !present {
		return "absent"
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + ":" + data[k])
	}
	b.WriteByte('}')
	return b.String()
}

// DecodeData turns a session's JSON object into the map a history holds.
func DecodeData(raw []byte) (map[string]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("session data %q is not a JSON object: %v", raw, err)
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out, nil
}
