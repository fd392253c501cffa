package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"unicode/utf8"
	"unsafe"
)

// splitCompact splits a valid, compact JSON object (as json.Compact writes
// it, or a Record's Data) into its members without the reflection of
// encoding/json. Duplicate keys keep their first position and last value.
// rewrite reports whether EncodeObject of the result would differ from obj:
// a duplicate key, WrittenKey, or a key written with escapes or invalid
// UTF-8 (which decoding replaces with U+FFFD). The values are slices of
// obj. With shared the keys are too (but for escaped ones), instead of a
// copy each: only for an obj that nothing writes to while the fields are
// in use (a Record's Data, or fields dropped before obj changes).
func splitCompact(obj []byte, shared bool) (fields []Field, rewrite bool, err error) {
	bad := func(what string) ([]Field, bool, error) {
		return nil, false, fmt.Errorf("%w: malformed object: %s", ErrBadData, what)
	}
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return bad("not an object")
	}
	i := 1
	if obj[i] == '}' {
		if i+1 != len(obj) {
			return bad("trailing bytes")
		}
		return nil, false, nil
	}
	var index map[string]int
	for {
		if i >= len(obj) || obj[i] != '"' {
			return bad("key expected")
		}
		end, escaped := scanString(obj, i)
		if end < 0 || end+1 >= len(obj) || obj[end+1] != ':' {
			return bad("unterminated key")
		}
		var key string
		if escaped || !utf8.Valid(obj[i+1:end]) {
			rewrite = true
			var k string // its own variable: &k escapes, and key would escape with it
			if err := json.Unmarshal(obj[i:end+1], &k); err != nil {
				return bad("bad key escape")
			}
			key = k
		} else if shared && end > i+1 {
			key = unsafe.String(&obj[i+1], end-i-1)
		} else {
			key = string(obj[i+1 : end])
		}
		vstart := end + 2
		vend := scanValue(obj, vstart)
		if vend < 0 || vend >= len(obj) {
			return bad("unterminated value")
		}
		value := json.RawMessage(obj[vstart:vend:vend]) // an append to it cannot overwrite what follows
		if key == WrittenKey {
			rewrite = true
		}
		dup := -1
		if index != nil {
			if j, ok := index[key]; ok {
				dup = j
			}
		} else {
			for j := range fields {
				if fields[j].Key == key {
					dup = j
					break
				}
			}
		}
		if dup >= 0 {
			fields[dup].Value = value
			rewrite = true
		} else {
			fields = append(fields, Field{Key: key, Value: value})
			if index != nil {
				index[key] = len(fields) - 1
			} else if len(fields) > 16 {
				index = make(map[string]int, 2*len(fields))
				for j, f := range fields {
					index[f.Key] = j
				}
			}
		}
		switch obj[vend] {
		case ',':
			i = vend + 1
		case '}':
			if vend+1 != len(obj) {
				return bad("trailing bytes")
			}
			return fields, rewrite, nil
		default:
			return bad("',' or '}' expected")
		}
	}
}

// scanString returns the index of the closing quote of the string starting
// at obj[i], and whether it holds escapes; -1 if unterminated.
func scanString(obj []byte, i int) (int, bool) {
	escaped := false
	for j := i + 1; j < len(obj); j++ {
		for j+8 <= len(obj) && !quoteOrBackslash8(binary.LittleEndian.Uint64(obj[j:])) {
			j += 8
		}
		if j >= len(obj) {
			break
		}
		switch obj[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			return j, escaped
		}
	}
	return -1, escaped
}

// quoteOrBackslash8 reports whether one of the 8 bytes in x is '"' or '\\'.
func quoteOrBackslash8(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	q, b := x^(ones*'"'), x^(ones*'\\')
	return ((q-ones)&^q|(b-ones)&^b)&highs != 0
}

// scanValue returns the index just past the compact JSON value starting at
// obj[i]; -1 if it does not end.
func scanValue(obj []byte, i int) int {
	if i >= len(obj) {
		return -1
	}
	switch obj[i] {
	case '"':
		end, _ := scanString(obj, i)
		if end < 0 {
			return -1
		}
		return end + 1
	case '{', '[':
		depth := 0
		for j := i; j < len(obj); j++ {
			switch obj[j] {
			case '"':
				end, _ := scanString(obj, j)
				if end < 0 {
					return -1
				}
				j = end
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	default:
		for j := i; j < len(obj); j++ {
			if c := obj[j]; c == ',' || c == '}' || c == ']' {
				return j
			}
		}
		return -1
	}
}

// compactObject validates data as one JSON object and returns it compacted.
func compactObject(data []byte) ([]byte, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, fmt.Errorf("%w, got %s", ErrBadData, describeJSON(data))
	}
	c, err := CompactValue(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadData, err)
	}
	return bytes.Clone(c), nil // c may be data itself: the record gets its own
}

// CompactValue returns v, one JSON value, as json.Compact writes it: v
// itself when it is already compact (the usual case: no copy, and none of
// encoding/json's cost), else a compacted copy. It fails when v is not one
// JSON value, with encoding/json's explanation.
func CompactValue(v []byte) ([]byte, error) {
	if validCompact(v) {
		return v, nil
	}
	var buf bytes.Buffer
	buf.Grow(len(v))
	if err := json.Compact(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// SplitObject returns the members of a session's stored data (a valid,
// compact JSON object: a Record's Data) in order, each key once, without
// encoding/json's reflection and without copying: the keys and values
// share obj's bytes, so obj must never change afterwards (a Record's Data
// never does).
func SplitObject(obj []byte) ([]Field, error) {
	fields, _, err := splitCompact(obj, true)
	return fields, err
}
