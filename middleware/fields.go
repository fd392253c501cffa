package middleware

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/kadosession/kadosession/fsm"
)

// sessionData is a session's keys and values as one request sees them,
// each key once. A session holds a handful of keys, so a slice searched in
// order serves it: the map it replaced cost every request two allocations
// and a third of a KiB to fill and clear. Values are never written in
// place — they may be the store's own bytes — only replaced.
type sessionData []fsm.Field

// index returns the position of key, or -1.
func (d sessionData) index(key string) int {
	for i := range d {
		if d[i].Key == key {
			return i
		}
	}
	return -1
}

// get returns the value of key.
func (d sessionData) get(key string) (json.RawMessage, bool) {
	if i := d.index(key); i >= 0 {
		return d[i].Value, true
	}
	return nil, false
}

// set gives key the value v.
func (d *sessionData) set(key string, v json.RawMessage) {
	if i := d.index(key); i >= 0 {
		(*d)[i].Value = v
		return
	}
	*d = append(*d, fsm.Field{Key: key, Value: v})
}

// remove deletes key and reports whether it was there.
func (d *sessionData) remove(key string) bool {
	i := d.index(key)
	if i < 0 {
		return false
	}
	*d = slices.Delete(*d, i, i+1)
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
