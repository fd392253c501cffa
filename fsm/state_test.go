package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func save(sid, data string, at int64) Command {
	return Command{Op: OpSave, Time: at, SID: sid, Data: []byte(data)}
}

func patch(sid string, at int64, set map[string]string, del ...string) Command {
	c := Command{Op: OpPatch, Time: at, SID: sid, Del: del}
	// Maps have no order; callers that care about Set order build it by hand.
	for k, v := range set {
		c.Set = append(c.Set, Field{Key: k, Value: []byte(v)})
	}
	return c
}

// want is one expected session: its data and Written time.
type want struct {
	data    string
	written int64
}

// checkSessions asserts that s holds exactly the sessions in w (expired ones
// included: they are read with no lifetime).
func checkSessions(t *testing.T, s *State, w map[string]want) {
	t.Helper()
	if s.Len() != len(w) {
		t.Errorf("Len() = %d, want %d", s.Len(), len(w))
	}
	for sid, exp := range w {
		r, ok := s.Get(sid, 0, 0)
		if !ok {
			t.Errorf("session %q missing", sid)
			continue
		}
		if string(r.Data) != exp.data || r.Written != exp.written {
			t.Errorf("session %q = %s @%d, want %s @%d", sid, r.Data, r.Written, exp.data, exp.written)
		}
	}
}

func TestApply(t *testing.T) {
	cases := []struct {
		name    string
		setup   []Command
		cmd     Command
		count   int
		errIs   error
		errText string
		after   map[string]want
	}{
		{
			name:  "save creates",
			cmd:   save("s", `{"a":1}`, 100),
			after: map[string]want{"s": {`{"a":1}`, 100}},
		},
		{
			name:  "save replaces the whole session",
			setup: []Command{save("s", `{"a":1,"b":2}`, 100)},
			cmd:   save("s", `{"c":3}`, 200),
			after: map[string]want{"s": {`{"c":3}`, 200}},
		},
		{
			name:  "save leaves other sessions alone",
			setup: []Command{save("s", `{"a":1}`, 100), save("t", `{"t":1}`, 100)},
			cmd:   save("s", `{}`, 200),
			after: map[string]want{"s": {`{}`, 200}, "t": {`{"t":1}`, 100}},
		},
		{
			name:  "patch sets and deletes in one step",
			setup: []Command{save("s", `{"a":1,"b":2,"c":3}`, 100)},
			cmd: Command{Op: OpPatch, Time: 150, SID: "s",
				Set: []Field{{Key: "b", Value: []byte(`20`)}, {Key: "d", Value: []byte(`"4"`)}},
				Del: []string{"a"}},
			after: map[string]want{"s": {`{"b":20,"c":3,"d":"4"}`, 150}},
		},
		{
			name:  "patch keeps key order and appends new keys",
			setup: []Command{save("s", `{"z":1,"a":2,"m":3}`, 100)},
			cmd: Command{Op: OpPatch, Time: 150, SID: "s",
				Set: []Field{{Key: "new", Value: []byte(`0`)}, {Key: "z", Value: []byte(`9`)}}},
			after: map[string]want{"s": {`{"z":9,"a":2,"m":3,"new":0}`, 150}},
		},
		{
			name:  "patch creates an absent session",
			cmd:   patch("s", 100, map[string]string{"k": `"v"`}),
			after: map[string]want{"s": {`{"k":"v"}`, 100}},
		},
		{
			name:  "patch deleting a missing key creates an empty session",
			cmd:   patch("s", 100, nil, "nope"),
			after: map[string]want{"s": {`{}`, 100}},
		},
		{
			name:  "patch deleting every key keeps an empty session",
			setup: []Command{save("s", `{"a":1}`, 100)},
			cmd:   patch("s", 150, nil, "a"),
			after: map[string]want{"s": {`{}`, 150}},
		},
		{
			name:  "patch over MaxSize is refused and changes nothing",
			setup: []Command{save("s", `{"a":1}`, 100)},
			cmd: Command{Op: OpPatch, Time: 150, SID: "s", MaxSize: 20,
				Set: []Field{{Key: "big", Value: []byte(`"0123456789"`)}}},
			errIs:   ErrSessionTooLarge,
			errText: "the limit is 20",
			after:   map[string]want{"s": {`{"a":1}`, 100}},
		},
		{
			name:    "patch over MaxSize on an absent session creates nothing",
			cmd:     Command{Op: OpPatch, Time: 150, SID: "s", MaxSize: 5, Set: []Field{{Key: "big", Value: []byte(`12345`)}}},
			errIs:   ErrSessionTooLarge,
			errText: "13 bytes",
			after:   map[string]want{},
		},
		{
			name: "patch exactly at MaxSize is accepted",
			// {"a":1,"b":22} is 14 bytes.
			setup: []Command{save("s", `{"a":1}`, 100)},
			cmd:   Command{Op: OpPatch, Time: 150, SID: "s", MaxSize: 14, Set: []Field{{Key: "b", Value: []byte(`22`)}}},
			after: map[string]want{"s": {`{"a":1,"b":22}`, 150}},
		},
		{
			name:  "patch shrinking a session over MaxSize is accepted",
			setup: []Command{save("s", `{"a":"0123456789012345678901234567890123456789"}`, 100)},
			cmd:   Command{Op: OpPatch, Time: 150, SID: "s", MaxSize: 10, Del: []string{"a"}},
			after: map[string]want{"s": {`{}`, 150}},
		},
		{
			name:  "patch treats an expired record as absent",
			setup: []Command{save("s", `{"old":1}`, 0)},
			cmd:   Command{Op: OpPatch, Time: 1000, SID: "s", Duration: 1000, Set: []Field{{Key: "new", Value: []byte(`2`)}}},
			after: map[string]want{"s": {`{"new":2}`, 1000}},
		},
		{
			name:  "patch merges into a record one ms before expiry",
			setup: []Command{save("s", `{"old":1}`, 0)},
			cmd:   Command{Op: OpPatch, Time: 999, SID: "s", Duration: 1000, Set: []Field{{Key: "new", Value: []byte(`2`)}}},
			after: map[string]want{"s": {`{"old":1,"new":2}`, 999}},
		},
		{
			name:  "patch if exists changes a live session and counts it",
			setup: []Command{save("s", `{"old":1}`, 0)},
			cmd:   Command{Op: OpPatch, Time: 999, SID: "s", Duration: 1000, Set: []Field{{Key: "new", Value: []byte(`2`)}}, IfExists: true},
			count: 1,
			after: map[string]want{"s": {`{"old":1,"new":2}`, 999}},
		},
		{
			name:  "patch if exists does not bring back a deleted session",
			setup: []Command{save("s", `{"old":1}`, 0), {Op: OpDelete, Time: 10, SID: "s"}, save("t", `{}`, 0)},
			cmd:   Command{Op: OpPatch, Time: 20, SID: "s", Set: []Field{{Key: "new", Value: []byte(`2`)}}, IfExists: true},
			after: map[string]want{"t": {`{}`, 0}},
		},
		{
			name:  "patch if exists leaves an expired session alone",
			setup: []Command{save("s", `{"old":1}`, 0)},
			cmd:   Command{Op: OpPatch, Time: 1000, SID: "s", Duration: 1000, Set: []Field{{Key: "new", Value: []byte(`2`)}}, IfExists: true},
			after: map[string]want{"s": {`{"old":1}`, 0}},
		},
		{
			name:  "patch with no duration never treats a record as expired",
			setup: []Command{save("s", `{"old":1}`, 0)},
			cmd:   Command{Op: OpPatch, Time: 1 << 50, SID: "s", Set: []Field{{Key: "new", Value: []byte(`2`)}}},
			after: map[string]want{"s": {`{"old":1,"new":2}`, 1 << 50}},
		},
		{
			name:  "delete removes",
			setup: []Command{save("s", `{"a":1}`, 100), save("t", `{}`, 100)},
			cmd:   Command{Op: OpDelete, Time: 150, SID: "s"},
			count: 1,
			after: map[string]want{"t": {`{}`, 100}},
		},
		{
			name:  "delete of a missing session counts nothing",
			setup: []Command{save("t", `{}`, 100)},
			cmd:   Command{Op: OpDelete, Time: 150, SID: "s"},
			after: map[string]want{"t": {`{}`, 100}},
		},
		{
			name:  "touch renews Written only",
			setup: []Command{save("s", `{"a":1}`, 100)},
			cmd:   Command{Op: OpTouch, Time: 500, SID: "s", Duration: 1000},
			count: 1,
			after: map[string]want{"s": {`{"a":1}`, 500}},
		},
		{
			name:  "touch of a missing session creates nothing",
			cmd:   Command{Op: OpTouch, Time: 500, SID: "s"},
			after: map[string]want{},
		},
		{
			name:  "touch does not bring an expired session back",
			setup: []Command{save("s", `{"a":1}`, 0)},
			cmd:   Command{Op: OpTouch, Time: 1000, SID: "s", Duration: 1000},
			after: map[string]want{"s": {`{"a":1}`, 0}},
		},
		{
			name: "prune removes exactly the expired sessions",
			setup: []Command{save("w0", `{}`, 0), save("w10", `{}`, 10), save("w20", `{}`, 20),
				save("w21", `{}`, 21), save("w30", `{}`, 30)},
			// Written+10 <= 30 for w0, w10 and w20.
			cmd:   Command{Op: OpPrune, Time: 30, Duration: 10},
			count: 3,
			after: map[string]want{"w21": {`{}`, 21}, "w30": {`{}`, 30}},
		},
		{
			name:  "prune with no duration removes nothing",
			setup: []Command{save("s", `{}`, 0)},
			cmd:   Command{Op: OpPrune, Time: 1 << 60},
			after: map[string]want{"s": {`{}`, 0}},
		},
		{
			name: "expire removes the named sessions that are expired, and only those",
			setup: []Command{save("w0", `{}`, 0), save("w10", `{}`, 10), save("w21", `{}`, 21),
				save("w30", `{}`, 30)},
			// w0 expired and named; w10 expired, not named; w21 named, saved
			// again since (not expired at 30); "absent" was never there.
			cmd:   Command{Op: OpExpire, Time: 30, Duration: 10, Del: []string{"w0", "w21", "absent"}},
			count: 1,
			after: map[string]want{"w10": {`{}`, 10}, "w21": {`{}`, 21}, "w30": {`{}`, 30}},
		},
		{
			name:  "expire with no duration removes nothing",
			setup: []Command{save("s", `{}`, 0)},
			cmd:   Command{Op: OpExpire, Time: 1 << 60, Del: []string{"s"}},
			after: map[string]want{"s": {`{}`, 0}},
		},
		{
			name:  "prune of an empty state",
			cmd:   Command{Op: OpPrune, Time: 100, Duration: 1},
			after: map[string]want{},
		},
		{
			name:  "batch applies in order and sums counts",
			setup: []Command{save("x", `{}`, 0), save("y", `{}`, 0)},
			cmd: Command{Op: OpBatch, Time: 10, Batch: []Command{
				save("a", `{"a":1}`, 10),
				{Op: OpDelete, Time: 10, SID: "x"},
				patch("a", 11, map[string]string{"b": "2"}),
				{Op: OpTouch, Time: 12, SID: "y"},
				{Op: OpDelete, Time: 12, SID: "missing"},
			}},
			count: 2,
			after: map[string]want{"a": {`{"a":1,"b":2}`, 11}, "y": {`{}`, 12}},
		},
		{
			name:    "unknown op",
			setup:   []Command{save("s", `{}`, 0)},
			cmd:     Command{Op: Op(99), SID: "s"},
			errIs:   ErrCorrupt,
			errText: "unknown op 99",
			after:   map[string]want{"s": {`{}`, 0}},
		},
		{
			name: "sids that are JavaScript property names are ordinary",
			setup: []Command{save("__proto__", `{"p":1}`, 1), save("constructor", `{"c":1}`, 1),
				save("hasOwnProperty", `{}`, 1)},
			cmd:   patch("__proto__", 2, map[string]string{"q": "2"}),
			after: map[string]want{"__proto__": {`{"p":1,"q":2}`, 2}, "constructor": {`{"c":1}`, 1}, "hasOwnProperty": {`{}`, 1}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewState()
			for i := range tc.setup {
				if r := s.Apply(&tc.setup[i]); r.Err != nil {
					t.Fatalf("setup %d: %v", i, r.Err)
				}
			}
			before := s.Version()
			r := s.Apply(&tc.cmd)
			if s.Version() <= before {
				t.Errorf("Version went %d -> %d, want it to grow", before, s.Version())
			}
			switch {
			case tc.errIs == nil && r.Err != nil:
				t.Fatalf("Apply: unexpected error %v", r.Err)
			case tc.errIs != nil && !errors.Is(r.Err, tc.errIs):
				t.Fatalf("Apply: error %v, want %v", r.Err, tc.errIs)
			case tc.errIs != nil && !strings.Contains(r.Err.Error(), tc.errText):
				t.Fatalf("Apply: error %q does not mention %q", r.Err, tc.errText)
			}
			if r.Count != tc.count {
				t.Errorf("Count = %d, want %d", r.Count, tc.count)
			}
			checkSessions(t, s, tc.after)
		})
	}
}

func TestApplyBatchResults(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, Time: 1, SID: "x", Data: []byte(`{}`)})
	res := s.ApplyBatch([]Command{
		{Op: OpDelete, Time: 2, SID: "x"},
		{Op: OpPatch, Time: 2, SID: "p", MaxSize: 3, Set: []Field{{Key: "k", Value: []byte(`1`)}}},
		{Op: OpBatch, Time: 2, Batch: []Command{{Op: OpDelete, SID: "y"}}},
		{Op: OpSave, Time: 2, SID: "y", Data: []byte(`{"y":1}`)},
	})
	if len(res) != 4 {
		t.Fatalf("%d results, want 4", len(res))
	}
	if res[0].Err != nil || res[0].Count != 1 {
		t.Errorf("delete: %+v, want Count 1", res[0])
	}
	if !errors.Is(res[1].Err, ErrSessionTooLarge) {
		t.Errorf("patch: %+v, want ErrSessionTooLarge", res[1])
	}
	if !errors.Is(res[2].Err, ErrCorrupt) || !strings.Contains(res[2].Err.Error(), "nested batch") {
		t.Errorf("nested batch: %+v, want ErrCorrupt nested batch", res[2])
	}
	if res[3].Err != nil {
		t.Errorf("save after a failed element: %v", res[3].Err)
	}
	checkSessions(t, s, map[string]want{"y": {`{"y":1}`, 2}})
}

func TestGetNeverReturnsExpired(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, Time: 1000, SID: "s", Data: []byte(`{"a":1}`)})
	cases := []struct {
		name     string
		now, dur int64
		found    bool
	}{
		{"fresh", 1000, 500, true},
		{"one ms before expiry", 1499, 500, true},
		{"at expiry", 1500, 500, false},
		{"long after", 1 << 40, 500, false},
		{"no lifetime", 1 << 40, 0, true},
		{"negative lifetime", 1 << 40, -1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := s.Get("s", tc.now, tc.dur)
			if ok != tc.found {
				t.Fatalf("Get found = %v, want %v", ok, tc.found)
			}
			if !ok && r != nil {
				t.Fatalf("Get returned a record with found = false")
			}
		})
	}
	if s.Len() != 1 {
		t.Fatalf("Len() = %d: Get must not remove anything", s.Len())
	}
	if _, ok := s.Get("missing", 0, 0); ok {
		t.Fatal("Get of a missing sid found something")
	}
}

// TestRecordsImmutable checks that a record handed out by Get (or held by a
// View) is never changed by later commands.
func TestRecordsImmutable(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, Time: 1, SID: "s", Data: []byte(`{"a":1}`)})
	r, _ := s.Get("s", 0, 0)
	v := s.Capture()
	s.Apply(&Command{Op: OpPatch, Time: 2, SID: "s", Set: []Field{{Key: "a", Value: []byte(`2`)}}})
	s.Apply(&Command{Op: OpTouch, Time: 3, SID: "s"})
	if string(r.Data) != `{"a":1}` || r.Written != 1 {
		t.Fatalf("held record changed to %s @%d", r.Data, r.Written)
	}
	vr, _ := v.Get("s")
	if string(vr.Data) != `{"a":1}` || vr.Written != 1 {
		t.Fatalf("view record changed to %s @%d", vr.Data, vr.Written)
	}
	now, _ := s.Get("s", 0, 0)
	if string(now.Data) != `{"a":2}` || now.Written != 3 {
		t.Fatalf("live record = %s @%d", now.Data, now.Written)
	}
}

func TestCaptureIsPointInTime(t *testing.T) {
	s := NewState()
	for i := range 100 {
		s.Apply(&Command{Op: OpSave, Time: int64(i), SID: fmt.Sprint("s", i), Data: []byte(`{}`)})
	}
	v := s.Capture()
	hash := v.Hash()
	s.Apply(&Command{Op: OpDelete, SID: "s1"})
	s.Apply(&Command{Op: OpSave, SID: "new", Data: []byte(`{}`)})
	s.Apply(&Command{Op: OpPrune, Time: 50, Duration: 1})
	if v.Len() != 100 {
		t.Fatalf("view Len() = %d, want 100", v.Len())
	}
	if _, ok := v.Get("s1"); !ok {
		t.Fatal("view lost a session deleted after the capture")
	}
	if _, ok := v.Get("new"); ok {
		t.Fatal("view sees a session saved after the capture")
	}
	if v.Hash() != hash {
		t.Fatal("view hash changed after later commands")
	}
	if s.Capture().Hash() == hash {
		t.Fatal("state hash did not change")
	}
}

func TestReplace(t *testing.T) {
	s := NewState()
	s.Apply(&Command{Op: OpSave, SID: "old", Data: []byte(`{}`)})
	v0 := s.Version()
	s.Replace(map[string]*Record{"a": {Data: []byte(`{"a":1}`), Written: 5}, "b": {Data: []byte(`{}`), Written: 6}})
	if s.Version() == v0 {
		t.Error("Replace did not bump Version")
	}
	checkSessions(t, s, map[string]want{"a": {`{"a":1}`, 5}, "b": {`{}`, 6}})
	s.Replace(nil)
	if s.Len() != 0 {
		t.Fatalf("Replace(nil) left %d sessions", s.Len())
	}
}

// TestDeterminism feeds two States and a reference model the same random
// command sequence and checks they agree on every result and end
// byte-identical; a third State fed the same commands through their log
// encoding and the raft adapter must agree too.
func TestDeterminism(t *testing.T) {
	const steps = 5000
	rng := rand.New(rand.NewPCG(1, 2))
	cmds := randomCommands(rng, steps)

	a, b := NewState(), NewState()
	f := NewFSM()
	m := newModel()
	for i := range cmds {
		ra := a.Apply(&cmds[i])
		rb := b.Apply(&cmds[i])
		rm := m.apply(&cmds[i])
		raw := cmds[i].Encode(nil)
		rf := applyLog(t, f, uint64(i+1), raw)
		if !sameResult(ra, rb) || !sameResult(ra, rm) {
			t.Fatalf("step %d (%s): results differ: state %+v, state %+v, model %+v", i, cmds[i].Op, ra, rb, rm)
		}
		if cmds[i].Op == OpBatch {
			if _, ok := rf.([]Result); !ok {
				t.Fatalf("step %d: FSM.Apply of a batch returned %T", i, rf)
			}
		} else if r, ok := rf.(Result); !ok || !sameResult(r, ra) {
			t.Fatalf("step %d: FSM.Apply returned %+v, want %+v", i, rf, ra)
		}
		if i%500 == 0 || i == len(cmds)-1 {
			want := m.hash()
			for name, st := range map[string]*State{"a": a, "b": b, "fsm": f.State} {
				if got := st.Capture().Hash(); got != want {
					t.Fatalf("step %d: state %s hash %s, model %s", i, name, got, want)
				}
			}
		}
	}
	var da, db bytes.Buffer
	if _, err := a.Capture().WriteTo(&da); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Capture().WriteTo(&db); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da.Bytes(), db.Bytes()) {
		t.Fatal("the two states' documents differ")
	}
	if a.Len() == 0 || a.Len() == len(cmds) {
		t.Fatalf("suspicious final size %d: the generator does not exercise enough", a.Len())
	}
	// The document restores to the same state.
	restored, err := ReadDocument(bytes.NewReader(da.Bytes()), 0)
	if err != nil {
		t.Fatal(err)
	}
	c := NewState()
	c.Replace(restored)
	if c.Capture().Hash() != a.Capture().Hash() {
		t.Fatal("the restored state differs from the one written")
	}
}

func sameResult(a, b Result) bool {
	if a.Count != b.Count || (a.Err == nil) != (b.Err == nil) {
		return false
	}
	return a.Err == nil || a.Err.Error() == b.Err.Error()
}

// randomCommands builds a seeded mix of every op over a small set of sids
// and keys, so sessions are created, grown, expired, pruned and refused.
func randomCommands(rng *rand.Rand, n int) []Command {
	var now int64 = 1_700_000_000_000
	const life = 2000
	sid := func() string {
		switch rng.IntN(50) {
		case 0:
			return "__proto__"
		case 1:
			return "constructor"
		case 2:
			return `q"uo\te`
		}
		return fmt.Sprintf("sid-%d", rng.IntN(200))
	}
	key := func() string { return fmt.Sprintf("k%d", rng.IntN(8)) }
	value := func() []byte {
		switch rng.IntN(4) {
		case 0:
			return []byte(fmt.Sprint(rng.IntN(1000)))
		case 1:
			return []byte(fmt.Sprintf(`"%s"`, strings.Repeat("x", rng.IntN(40))))
		case 2:
			return []byte(`{"n":[1,2,{"m":null}]}`)
		}
		return []byte(`true`)
	}
	one := func() Command {
		now += int64(rng.IntN(30))
		switch p := rng.IntN(100); {
		case p < 30:
			var fields []Field
			for range rng.IntN(5) {
				fields = append(fields, Field{Key: key(), Value: value()})
			}
			obj, _ := NormalizeObject(EncodeObject(fields)) // dedupes keys
			return Command{Op: OpSave, Time: now, SID: sid(), Data: obj}
		case p < 65:
			c := Command{Op: OpPatch, Time: now, SID: sid(), Duration: life}
			if rng.IntN(10) == 0 {
				c.Duration = 0
			}
			c.MaxSize = []int64{0, 0, 60, 200}[rng.IntN(4)]
			for range rng.IntN(4) {
				c.Set = append(c.Set, Field{Key: key(), Value: value()})
			}
			for range rng.IntN(3) {
				c.Del = append(c.Del, key())
			}
			return c
		case p < 75:
			return Command{Op: OpDelete, Time: now, SID: sid()}
		case p < 90:
			return Command{Op: OpTouch, Time: now, SID: sid(), Duration: life * int64(rng.IntN(2))}
		default:
			return Command{Op: OpPrune, Time: now, Duration: life}
		}
	}
	out := make([]Command, 0, n)
	for len(out) < n {
		if rng.IntN(10) == 0 {
			b := Command{Op: OpBatch, Time: now}
			for range 1 + rng.IntN(8) {
				b.Batch = append(b.Batch, one())
			}
			out = append(out, b)
			continue
		}
		out = append(out, one())
	}
	return out
}

// model is a deliberately naive reference implementation of the command
// semantics, to check State against.
type model struct {
	sessions map[string]*modelRec
}

type modelRec struct {
	fields  []Field
	written int64
}

func newModel() *model { return &model{sessions: map[string]*modelRec{}} }

func (m *model) live(sid string, now, dur int64) (*modelRec, bool) {
	r, ok := m.sessions[sid]
	if !ok || (dur > 0 && r.written+dur <= now) {
		return nil, false
	}
	return r, true
}

func (m *model) apply(c *Command) Result {
	switch c.Op {
	case OpSave:
		fields, err := ParseObject(c.Data)
		if err != nil {
			panic(err)
		}
		m.sessions[c.SID] = &modelRec{fields: fields, written: c.Time}
	case OpPatch:
		var fields []Field
		if r, ok := m.live(c.SID, c.Time, c.Duration); ok {
			fields = append(fields, r.fields...)
		}
	set:
		for _, f := range c.Set {
			for i := range fields {
				if fields[i].Key == f.Key {
					fields[i].Value = f.Value
					continue set
				}
			}
			fields = append(fields, f)
		}
		for _, k := range c.Del {
			for i := range fields {
				if fields[i].Key == k {
					fields = append(fields[:i:i], fields[i+1:]...)
					break
				}
			}
		}
		if size := len(EncodeObject(fields)); c.MaxSize > 0 && int64(size) > c.MaxSize {
			return Result{Err: fmt.Errorf("%w: the patch makes session data %d bytes, the limit is %d",
				ErrSessionTooLarge, size, c.MaxSize)}
		}
		m.sessions[c.SID] = &modelRec{fields: fields, written: c.Time}
	case OpDelete:
		if _, ok := m.sessions[c.SID]; ok {
			delete(m.sessions, c.SID)
			return Result{Count: 1}
		}
	case OpTouch:
		if r, ok := m.live(c.SID, c.Time, c.Duration); ok {
			m.sessions[c.SID] = &modelRec{fields: r.fields, written: c.Time}
			return Result{Count: 1}
		}
	case OpPrune:
		n := 0
		for sid, r := range m.sessions {
			if c.Duration > 0 && r.written+c.Duration <= c.Time {
				delete(m.sessions, sid)
				n++
			}
		}
		return Result{Count: n}
	case OpBatch:
		n := 0
		for i := range c.Batch {
			n += m.apply(&c.Batch[i]).Count
		}
		return Result{Count: n}
	}
	return Result{}
}

func (m *model) hash() string {
	s := NewState()
	recs := make(map[string]*Record, len(m.sessions))
	for sid, r := range m.sessions {
		recs[sid] = &Record{Data: EncodeObject(r.fields), Written: r.written}
	}
	s.Replace(recs)
	return s.Capture().Hash()
}

// gateWriter blocks its first Write until release is closed, then passes
// everything through.
type gateWriter struct {
	w       *bytes.Buffer
	started chan struct{}
	release chan struct{}
	once    atomic.Bool
}

func (g *gateWriter) Write(p []byte) (int, error) {
	if g.once.CompareAndSwap(false, true) {
		close(g.started)
		<-g.release
	}
	return g.w.Write(p)
}

// TestCaptureDoesNotBlockApply writes a 100k-session snapshot through a
// writer that stops mid-document until Apply has made progress: if the write
// held any lock Apply needs, the test would time out instead.
func TestCaptureDoesNotBlockApply(t *testing.T) {
	const n = 100_000
	s := NewState()
	data := []byte(`{"user":"alice","n":12345}`)
	for i := range n {
		s.Apply(&Command{Op: OpSave, Time: int64(i), SID: fmt.Sprintf("sid-%06d", i), Data: data})
	}
	var applied atomic.Int64
	stop := make(chan struct{})
	applierDone := make(chan struct{})
	go func() {
		defer close(applierDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sid := fmt.Sprintf("sid-%06d", i%(2*n)) // overwrite old and add new sessions
			s.Apply(&Command{Op: OpSave, Time: int64(n + i), SID: sid, Data: []byte(`{"changed":true}`)})
			if i%97 == 0 {
				s.Apply(&Command{Op: OpDelete, Time: int64(n + i), SID: fmt.Sprintf("sid-%06d", i%n+1)})
			}
			applied.Add(1)
		}
	}()

	g := &gateWriter{w: &bytes.Buffer{}, started: make(chan struct{}), release: make(chan struct{})}
	type result struct {
		view *View
		err  error
	}
	done := make(chan result, 1)
	go func() {
		v := s.Capture()
		_, err := v.WriteTo(g)
		done <- result{v, err}
	}()

	select {
	case <-g.started:
	case <-time.After(10 * time.Second):
		t.Fatal("WriteTo never started writing")
	}
	// The write is now stalled mid-document; Apply must keep going.
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(g.release) }) }
	t.Cleanup(release)
	atStart := applied.Load()
	poll(t, func() bool { return applied.Load() >= atStart+1000 }, 10*time.Second)
	release()
	r := <-done
	close(stop)
	<-applierDone
	if r.err != nil {
		t.Fatal(r.err)
	}
	// The document is the captured view, untouched by the applies made
	// during the write: writing the view again gives the same bytes.
	var again bytes.Buffer
	if _, err := r.view.WriteTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g.w.Bytes(), again.Bytes()) {
		t.Fatal("the document written during Apply differs from the captured view")
	}
	if r.view.Len() < n*99/100 {
		t.Fatalf("the view holds %d sessions, want about %d", r.view.Len(), n)
	}
}

// TestCaptureSharesAndWritesCopy: a Capture copies no session map (raft
// calls it on the applying goroutine, so a copy held every write), and
// writes after it, of every kind, change neither that view nor a later
// one, while the state ends exactly where a state that was never captured
// ends.
func TestCaptureSharesAndWritesCopy(t *testing.T) {
	captured, plain := NewState(), NewState()
	apply := func(c Command) {
		c1, c2 := c, c
		captured.Apply(&c1)
		plain.Apply(&c2)
	}
	for i := range 5000 {
		apply(Command{Op: OpSave, Time: int64(i), SID: fmt.Sprint("s", i), Data: []byte(fmt.Sprintf(`{"user":"u%d","n":%d}`, i%50, i))})
	}
	if allocs := testing.AllocsPerRun(10, func() { captured.Capture() }); allocs > 2 {
		t.Fatalf("Capture made %.0f allocations; it should share the shards, not copy them", allocs)
	}
	round := func(k int) {
		for i := 0; i < 5000; i += 7 {
			sid := fmt.Sprint("s", (i+k)%6000)
			switch i % 5 {
			case 0:
				apply(Command{Op: OpSave, Time: int64(10000 + k), SID: sid, Data: []byte(fmt.Sprintf(`{"k":%d}`, k))})
			case 1:
				apply(Command{Op: OpPatch, Time: int64(10000 + k), SID: sid, Set: []Field{{Key: "p", Value: []byte(fmt.Sprint(k))}}})
			case 2:
				apply(Command{Op: OpTouch, Time: int64(10000 + k), SID: sid})
			case 3:
				apply(Command{Op: OpDelete, Time: int64(10000 + k), SID: sid})
			case 4:
				apply(Command{Op: OpDeleteUser, Time: int64(10000 + k), SID: fmt.Sprint("u", i%50)})
			}
		}
		apply(Command{Op: OpPrune, Time: int64(10000 + k), Duration: int64(9000 - 1000*k)})
	}
	var views []*View
	var hashes []string
	for k := range 3 {
		v := captured.Capture()
		views, hashes = append(views, v), append(hashes, v.Hash())
		round(k)
	}
	for k, v := range views {
		if v.Hash() != hashes[k] {
			t.Fatalf("view %d changed after the writes that followed it", k)
		}
	}
	if hashes[0] == hashes[1] || hashes[1] == hashes[2] {
		t.Fatal("the rounds of writes changed nothing; the test proves nothing")
	}
	if got, want := captured.Capture().Hash(), plain.Capture().Hash(); got != want {
		t.Fatal("the captured state differs from one that was never captured")
	}
	if captured.Len() != plain.Len() {
		t.Fatalf("Len %d, want %d", captured.Len(), plain.Len())
	}
}

func TestExpiredSessions(t *testing.T) {
	s := NewState()
	for i := range 100 {
		s.Apply(&Command{Op: OpSave, Time: int64(i), SID: fmt.Sprintf("s%d", i), Data: []byte(`{}`)})
	}
	// Written+10 <= 50: s0..s40.
	got := s.ExpiredSessions(50, 10)
	slices.Sort(got)
	var want []string
	for i := 0; i <= 40; i++ {
		want = append(want, fmt.Sprintf("s%d", i))
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("ExpiredSessions(50, 10) = %v, want %v", got, want)
	}
	if got := s.ExpiredSessions(50, 0); len(got) != 0 {
		t.Fatalf("no lifetime: %v expired, want none", got)
	}
	// Named at a time when none had expired, none goes; at 50, all do,
	// and the scan then finds none.
	if r := s.Apply(&Command{Op: OpExpire, Time: 5, Duration: 10, Del: want}); r.Count != 0 {
		t.Fatalf("expire at 5 removed %d, want 0", r.Count)
	}
	if r := s.Apply(&Command{Op: OpExpire, Time: 50, Duration: 10, Del: want}); r.Count != 41 || s.Len() != 59 {
		t.Fatalf("expire removed %d, %d left; want 41 and 59", r.Count, s.Len())
	}
	if got := s.ExpiredSessions(50, 10); len(got) != 0 {
		t.Fatalf("after the expire, %v still expired", got)
	}
}

// referencePatch is what a patch does to a session's fields, done the
// plain way: each set replaces the key in place or appends it, then each
// delete removes the key.
func referencePatch(fields []Field, set []Field, del []string) []Field {
	fields = slices.Clone(fields)
	for _, s := range set {
		if i := slices.IndexFunc(fields, func(f Field) bool { return f.Key == s.Key }); i >= 0 {
			fields[i].Value = s.Value
		} else {
			fields = append(fields, s)
		}
	}
	for _, d := range del {
		if i := slices.IndexFunc(fields, func(f Field) bool { return f.Key == d }); i >= 0 {
			fields = slices.Delete(fields, i, i+1)
		}
	}
	return fields
}

// TestPatchMatchesTheReference: patches small enough for linear lookups
// and large enough for the map give what referencePatch gives, with
// repeated keys, keys both set and deleted, and deletes of absent keys.
func TestPatchMatchesTheReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	key := func() string { return fmt.Sprintf("k%d", rng.IntN(60)) }
	for round := range 400 {
		var start []Field
		seen := map[string]bool{}
		for range rng.IntN(40) {
			if k := key(); !seen[k] {
				seen[k] = true
				start = append(start, Field{Key: k, Value: []byte(strconv.Itoa(rng.IntN(100)))})
			}
		}
		var set []Field
		var del []string
		for range rng.IntN(2 * patchLinearMax) {
			set = append(set, Field{Key: key(), Value: []byte(strconv.Itoa(100 + rng.IntN(100)))})
		}
		for range rng.IntN(patchLinearMax) {
			del = append(del, key())
		}
		st := NewState()
		if r := st.Apply(&Command{Op: OpSave, Time: 1, SID: "s", Data: EncodeObject(start)}); r.Err != nil {
			t.Fatal(r.Err)
		}
		if r := st.Apply(&Command{Op: OpPatch, Time: 2, SID: "s", Set: set, Del: del, MaxKeys: 1000}); r.Err != nil {
			t.Fatal(r.Err)
		}
		got, _ := st.Get("s", 2, 0)
		want := EncodeObject(referencePatch(start, set, del))
		if string(got.Data) != string(want) {
			t.Fatalf("round %d: %d sets, %d deletes on %s:\ngot  %s\nwant %s", round, len(set), len(del), EncodeObject(start), got.Data, want)
		}
	}
}

// TestPatchOverTheKeyLimitEndsEarly: a patch naming far more keys than a
// session may hold is refused without quadratic work (150k keys held the
// state machine for minutes), and a patch whose deletes bring it back
// under the limit is not refused.
func TestPatchOverTheKeyLimitEndsEarly(t *testing.T) {
	st := NewState()
	var set []Field
	for i := range 150_000 {
		set = append(set, Field{Key: "k" + strconv.Itoa(i), Value: []byte("1")})
	}
	start := time.Now()
	r := st.Apply(&Command{Op: OpPatch, Time: 1, SID: "s", Set: set, MaxKeys: 1024})
	if !errors.Is(r.Err, ErrTooManyKeys) {
		t.Fatalf("150k-key patch: %v; want ErrTooManyKeys", r.Err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the refused patch held Apply for %s", d)
	}
	r = st.Apply(&Command{Op: OpPatch, Time: 1, SID: "s", Set: set[:3], Del: []string{"k0", "k1"}, MaxKeys: 1})
	if r.Err != nil {
		t.Fatalf("3 sets and 2 of them deleted, limit 1: %v", r.Err)
	}
	if got, _ := st.Get("s", 1, 0); string(got.Data) != `{"k2":1}` {
		t.Fatalf("session %s", got.Data)
	}
}
