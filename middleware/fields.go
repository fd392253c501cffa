package middleware

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/kadosession/kadosession/fsm"
)

// sessionData is a session's keys and values as a Store takes and gives
// them without maps (MemoryStore), each key once.
type sessionData []fsm.Field

// values is fields, each key once, and once there are more than
// indexAbove of them a map from key to position: a Session's data as one
// request sees it (in no particular order), and its dirty keys (in the
// order they were first set, with no values). A session holds a handful of
// keys, which a slice searched in order serves: the map it replaced cost
// every request two allocations and a third of a KiB to fill and clear;
// the index keeps a session of thousands of keys from costing a search of
// them all per key. Values are never written in place, only replaced.
type values struct {
	fields sessionData
	index  map[string]int // nil until needed
}

// indexAbove is how many fields a search goes through before values keeps
// an index.
const indexAbove = 16

// reset makes d the data.
func (v *values) reset(d sessionData) { v.fields, v.index = d, nil }

// clear removes every key.
func (v *values) clear() { v.reset(v.fields[:0]) }

// find returns the position of key, or -1.
func (v *values) find(key string) int {
	if len(v.fields) <= indexAbove {
		for i := range v.fields {
			if v.fields[i].Key == key {
				return i
			}
		}
		return -1
	}
	if v.index == nil {
		v.index = make(map[string]int, 2*len(v.fields))
		for i, f := range v.fields {
			v.index[f.Key] = i
		}
	}
	if i, ok := v.index[key]; ok {
		return i
	}
	return -1
}

// get returns the value of key.
func (v *values) get(key string) (json.RawMessage, bool) {
	if i := v.find(key); i >= 0 {
		return v.fields[i].Value, true
	}
	return nil, false
}

// set gives key the value val.
func (v *values) set(key string, val json.RawMessage) {
	if i := v.find(key); i >= 0 {
		v.fields[i].Value = val
		return
	}
	v.fields = append(v.fields, fsm.Field{Key: key, Value: val})
	if v.index != nil {
		v.index[key] = len(v.fields) - 1
	}
}

// remove deletes key and reports whether it was there. The last field
// takes its place.
func (v *values) remove(key string) bool {
	i := v.find(key)
	if i < 0 {
		return false
	}
	last := len(v.fields) - 1
	v.fields[i] = v.fields[last]
	v.fields[last] = fsm.Field{} // nothing kept alive by the spare capacity
	v.fields = v.fields[:last]
	if v.index != nil {
		delete(v.index, key)
		if i < last {
			v.index[v.fields[i].Key] = i
		}
	}
	return true
}

// toMap returns the data as a Store's Save takes it.
func (d sessionData) toMap() map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, len(d))
	for _, f := range d {
		m[f.Key] = f.Value
	}
	return m
}

// dataOf returns the members of m, in no particular order.
func dataOf(m map[string]json.RawMessage) sessionData {
	d := make(sessionData, 0, len(m))
	for k, v := range m {
		d = append(d, fsm.Field{Key: k, Value: v})
	}
	return d
}

// sortFields sorts fields by key, the order a whole session is stored in.
func sortFields(fields []fsm.Field) {
	slices.SortFunc(fields, func(a, b fsm.Field) int { return strings.Compare(a.Key, b.Key) })
}
