package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Limits bound what one session may hold. They are enforced when a command is
// built (so a client gets a clear error) and again when it is applied.
const (
	// MaxSIDLen is the longest session id accepted, in bytes.
	MaxSIDLen = 512
	// MaxKeyLen is the longest data key accepted, in bytes.
	MaxKeyLen = 1024
	// DefaultMaxSessionSize is the default bound on one session's encoded data.
	DefaultMaxSessionSize = 1 << 20
	// DefaultMaxKeys is the default bound on the keys of one session.
	DefaultMaxKeys = 1024
)

// WrittenKey is the reserved data key that carries a record's last-save time
// (milliseconds since the Unix epoch) in the save file, as in Kado.
const WrittenKey = "_written"

// Errors returned by this package. Callers compare them with errors.Is.
var (
	// ErrBadSID means a session id is empty, too long or not valid UTF-8.
	ErrBadSID = errors.New("invalid session id")
	// ErrBadData means session data is not a JSON object.
	ErrBadData = errors.New("session data must be a JSON object")
	// ErrBadKey means a data key is empty, too long or reserved.
	ErrBadKey = errors.New("invalid session key")
	// ErrSessionTooLarge means a session's data would exceed the size limit.
	ErrSessionTooLarge = errors.New("session too large")
	// ErrTooManyKeys means a session would hold more keys than allowed.
	ErrTooManyKeys = errors.New("session has too many keys")
	// ErrCorrupt means a save file, snapshot or log entry could not be decoded.
	ErrCorrupt = errors.New("corrupt session data")
)

// Record is one stored session. Records are immutable once stored: every
// change builds a new Record, which is what lets a snapshot share them with
// the live state without copying their bytes.
type Record struct {
	// Data is the session's data as a compact JSON object, keys in the order
	// they were first written, never containing WrittenKey.
	Data []byte
	// Written is the leader's time of the last save, in ms since the epoch.
	Written int64
	// User is the user the data names under UserKey ("" for none), kept
	// beside the data so the index needs no parsing to update.
	User string
}

// Expired reports whether the record has expired at now for the given
// lifetime (both in milliseconds). A lifetime of zero or less never expires.
func (r *Record) Expired(now, duration int64) bool {
	return duration > 0 && r.Written+duration <= now
}

// ValidateSID checks a session id against the rules every entry point shares.
func ValidateSID(sid string) error {
	if sid == "" {
		return fmt.Errorf("%w: sid is empty", ErrBadSID)
	}
	if len(sid) > MaxSIDLen {
		return fmt.Errorf("%w: sid is %d bytes, the limit is %d", ErrBadSID, len(sid), MaxSIDLen)
	}
	if !utf8.ValidString(sid) {
		return fmt.Errorf("%w: sid is not valid UTF-8", ErrBadSID)
	}
	return nil
}

// ValidateKey checks one data key: non-empty, at most MaxKeyLen bytes, valid
// UTF-8, and not WrittenKey.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: key is empty", ErrBadKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: key is %d bytes, the limit is %d", ErrBadKey, len(key), MaxKeyLen)
	case key == WrittenKey:
		return fmt.Errorf("%w: %q is reserved for the save time", ErrBadKey, WrittenKey)
	case !utf8.ValidString(key):
		// Stored data is JSON, whose encoder turns each invalid byte
		// into U+FFFD: the key would come back as another one (and
		// "\xff" and "\xfe" as the same), so refuse it, as ValidateSID
		// refuses such an id.
		return fmt.Errorf("%w: key %q is not valid UTF-8", ErrBadKey, key)
	}
	return nil
}

// Field is one key and its JSON-encoded value.
type Field struct {
	Key   string
	Value json.RawMessage
}

// NormalizeObject validates that data is one JSON object, compacts it, and
// drops any WrittenKey member, keeping the order of the other keys; a key
// given twice keeps its first position and its last value, as in
// JavaScript's JSON.parse. The result is what a Record's Data holds.
func NormalizeObject(data []byte) ([]byte, error) {
	norm, _, err := NormalizeObjectKeys(data)
	return norm, err
}

// NormalizeObjectKeys is NormalizeObject that also returns how many keys
// the result holds, from the same pass (the node checks its key limit).
func NormalizeObjectKeys(data []byte) ([]byte, int, error) {
	return normalizeObject(data, false)
}

// NormalizeObjectStrict is NormalizeObjectKeys for a writer held to the key
// rules (ValidateKey), as a native client's save is, like its patch and
// MemoryStore: a key that is empty, too long or WrittenKey is an error,
// where a Kado save keeps or drops it as Kado did.
func NormalizeObjectStrict(data []byte) ([]byte, int, error) {
	return normalizeObject(data, true)
}

func normalizeObject(data []byte, strict bool) ([]byte, int, error) {
	compact, err := compactObject(data)
	if err != nil {
		return nil, 0, err
	}
	// Duplicate keys (JSON.parse keeps the last value) and escaped keys
	// ("\u005fwritten" is WrittenKey) must come out exactly as ReadDocument
	// would read them back, or a state restored from a snapshot would differ
	// from the one that wrote it; objects without them are kept as they are.
	fields, rewrite, err := splitCompact(compact, true) // dropped, or encoded afresh, here
	if err != nil {
		return nil, 0, err
	}
	if strict {
		for _, f := range fields {
			if err := ValidateKey(f.Key); err != nil {
				return nil, 0, err
			}
		}
	}
	if !rewrite {
		return compact, len(fields), nil
	}
	kept := withoutWritten(fields)
	return EncodeObject(kept), len(kept), nil
}

// CountKeys returns how many members the JSON object data has at its top
// level. data must be a valid object, as a Record's Data is (what
// NormalizeObjectKeys returns); it is scanned once, without decoding.
func CountKeys(data []byte) int {
	n, depth, inString, escaped := 0, 0, false, false
	for _, c := range data {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
		case c == ':' && depth == 1:
			n++
		}
	}
	return n
}

func withoutWritten(fields []Field) []Field {
	kept := fields[:0]
	for _, f := range fields {
		if f.Key != WrittenKey {
			kept = append(kept, f)
		}
	}
	return kept
}

// describeJSON names the kind of a JSON value for error messages.
func describeJSON(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	default:
		if b[0] == '-' || (b[0] >= '0' && b[0] <= '9') {
			return "a number"
		}
		return "invalid JSON"
	}
}

// ParseObject splits a JSON object into its members in order. Duplicate keys
// keep the position of their first occurrence and the value of their last,
// as JavaScript's JSON.parse does.
func ParseObject(data []byte) ([]Field, error) {
	compact, err := compactObject(data)
	if err != nil {
		return nil, err
	}
	fields, _, err := splitCompact(compact, false)
	return fields, err
}

// EncodeObject writes fields as one compact JSON object.
func EncodeObject(fields []Field) []byte {
	n := 2
	for _, f := range fields {
		n += len(f.Key) + len(f.Value) + 4
	}
	out := make([]byte, 0, n)
	out = append(out, '{')
	for i, f := range fields {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendJSONString(out, f.Key)
		out = append(out, ':')
		out = append(out, f.Value...)
	}
	return append(out, '}')
}

// appendJSONString appends s as a JSON string without HTML escaping.
func appendJSONString(dst []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			plain = false
			break
		}
	}
	if plain {
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(dst, bytes.TrimRight(buf.Bytes(), "\n")...)
}
