package gorillastore

import (
	"bytes"
	"encoding/base64"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
)

// Serializer turns a gorilla session's Values into kadosession session data
// and back. Implementations must be safe for concurrent use.
type Serializer interface {
	// Serialize encodes values; an error means they cannot be stored.
	Serialize(values map[any]any) (map[string]json.RawMessage, error)
	// Deserialize decodes data (never nil) into values (empty, never nil);
	// an error means data was not written by this Serializer or names a
	// type it cannot rebuild.
	Deserialize(data map[string]json.RawMessage, values map[any]any) error
}

// Errors returned by the serializers. Compare them with errors.Is.
var (
	// ErrEncode means a session's values could not be encoded (a JSON
	// serializer given a non-string key or a value encoding/json refuses, or
	// gob given an unregistered type).
	ErrEncode = errors.New("gorillastore: cannot encode session values")
	// ErrDecode means stored session data could not be decoded into values:
	// it was written by another serializer or program, or names a type not
	// registered with gob.
	ErrDecode = errors.New("gorillastore: cannot decode session data")
)

// gobField is the one data field GobSerializer writes.
const gobField = "gob"

// GobSerializer stores the values gob-encoded, as standard base64 in one
// field: {"gob": "<base64>"}. Keys and values may be of any type gob can
// encode; like gorilla's own stores, custom types must be registered with
// gob.Register. It is the default and is safe for concurrent use.
type GobSerializer struct{}

// Serialize gob-encodes values; the error wraps ErrEncode.
func (GobSerializer) Serialize(values map[any]any) (map[string]json.RawMessage, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(values); err != nil {
		return nil, fmt.Errorf("%w: gob: %v", ErrEncode, err)
	}
	field, err := json.Marshal(base64.StdEncoding.EncodeToString(buf.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEncode, err)
	}
	return map[string]json.RawMessage{gobField: field}, nil
}

// Deserialize decodes what Serialize wrote; the error wraps ErrDecode.
func (GobSerializer) Deserialize(data map[string]json.RawMessage, values map[any]any) error {
	var enc string
	if err := json.Unmarshal(data[gobField], &enc); err != nil {
		return fmt.Errorf("%w: no %q field holding a string", ErrDecode, gobField)
	}
	b, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return fmt.Errorf("%w: base64: %v", ErrDecode, err)
	}
	decoded := map[any]any{}
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&decoded); err != nil {
		return fmt.Errorf("%w: gob: %v", ErrDecode, err)
	}
	for k, v := range decoded {
		values[k] = v
	}
	return nil
}

// JSONSerializer stores each value as a JSON field of the session under its
// key, so the session is readable by kadosession's middleware and by Kado.
// Keys must be strings kadosession accepts (non-empty, at most 1024 bytes,
// valid UTF-8, not "_written"); a non-string key makes Serialize fail with ErrEncode, an
// invalid string key makes the store refuse the save. Values come back as
// encoding/json decodes them into an interface (float64, string, bool,
// []any, map[string]any, nil). It is safe for concurrent use.
type JSONSerializer struct{}

// Serialize JSON-encodes each value; the error wraps ErrEncode.
func (JSONSerializer) Serialize(values map[any]any) (map[string]json.RawMessage, error) {
	data := make(map[string]json.RawMessage, len(values))
	for k, v := range values {
		key, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("%w: key %v is a %T; JSONSerializer needs string keys (use GobSerializer)", ErrEncode, k, k)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("%w: key %q: %v", ErrEncode, key, err)
		}
		data[key] = b
	}
	return data, nil
}

// Deserialize decodes each field into values; the error wraps ErrDecode.
func (JSONSerializer) Deserialize(data map[string]json.RawMessage, values map[any]any) error {
	for k, raw := range data {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("%w: key %q: %v", ErrDecode, k, err)
		}
		values[k] = v
	}
	return nil
}
