package fsm

import "encoding/binary"

// scanJSON is a validator for one JSON value that also reports whether the
// text is already compact (no white space outside strings). It exists
// because encoding/json's Compact, which validates and compacts in one pass
// through a general state machine, was a fifth of a node's CPU per save;
// sessions arrive compact almost always, and then they are stored as they
// came. Anything it does not accept goes to json.Compact, which decides and
// explains.
type scanJSON struct {
	b     []byte
	i     int
	loose bool // white space seen outside strings
}

// maxScanDepth bounds nesting; deeper documents take the encoding/json path.
const maxScanDepth = 512

// validCompact reports whether b is exactly one valid JSON value with no
// white space outside strings.
func validCompact(b []byte) bool {
	s := scanJSON{b: b}
	if !s.value(0) || s.loose || s.i != len(b) {
		return false
	}
	return true
}

func (s *scanJSON) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.loose = true
			s.i++
		default:
			return
		}
	}
}

func (s *scanJSON) value(depth int) bool {
	s.ws()
	if s.i >= len(s.b) || depth > maxScanDepth {
		return false
	}
	var ok bool
	switch c := s.b[s.i]; {
	case c == '{':
		ok = s.object(depth)
	case c == '[':
		ok = s.array(depth)
	case c == '"':
		ok = s.str()
	case c == '-' || c >= '0' && c <= '9':
		ok = s.number()
	case c == 't':
		ok = s.lit("true")
	case c == 'f':
		ok = s.lit("false")
	case c == 'n':
		ok = s.lit("null")
	}
	if ok {
		s.ws()
	}
	return ok
}

func (s *scanJSON) object(depth int) bool {
	s.i++ // {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != '"' || !s.str() {
			return false
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		if !s.value(depth + 1) {
			return false
		}
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

func (s *scanJSON) array(depth int) bool {
	s.i++ // [
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return true
	}
	for {
		if !s.value(depth + 1) {
			return false
		}
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

func (s *scanJSON) str() bool {
	s.i++ // "
	for s.i < len(s.b) {
		// Skip 8 plain bytes at a time (no '"', '\\' or control byte):
		// session data is mostly long strings.
		for s.i+8 <= len(s.b) && plain8(binary.LittleEndian.Uint64(s.b[s.i:])) {
			s.i += 8
		}
		if s.i >= len(s.b) {
			break
		}
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if s.i+1 >= len(s.b) {
				return false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return false
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				s.i += 6
			default:
				return false
			}
		default:
			s.i++
		}
	}
	return false
}

// plain8 reports whether none of the 8 bytes in x is '"', '\\' or below
// 0x20 (exact for every byte value: the classic "has a zero / a byte less
// than n" bit tricks).
func plain8(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	return !quoteOrBackslash8(x) && (x-ones*0x20)&^x&highs == 0
}

func (s *scanJSON) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

func (s *scanJSON) number() bool {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return false
	}
	if s.b[s.i] == '0' {
		s.i++
	} else if s.digits() == 0 {
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return false
		}
	}
	return true
}

func (s *scanJSON) lit(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}
