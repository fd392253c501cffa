package transport

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"unicode/utf16"
	"unicode/utf8"
)

// Kado JSON protocol: one JSON document per connection, written by the client
// and followed by a half-close; one JSON document back, then the server
// closes. The requests the Kado 4.0 client sends:
//
//	{"save":{"sid":"sid1","data":{"a":1},"_written":1795629654509}}
//	{"restore":{"sid":"sid1","_written":1795629654515}}
//
// Kado 4.4 adds "ip", "agent" and "uid" beside "sid" in a save; they are
// accepted and ignored, as is "_written" on the envelope.

const emptyRequest = `empty request: send one JSON object such as {"restore":{"sid":"…"}}, then half-close`

// KadoRequest is a decoded Kado JSON request: Op is OpSave or OpRestore.
type KadoRequest struct {
	Op    Op
	SID   string
	Data  []byte // OpSave: the session's data, a JSON object
	Token string // the optional top-level "token" (client authentication)
}

// DecodeKado decodes one Kado JSON request document. Every problem is an
// *Error with CodeBadRequest whose message says what was wrong.
func DecodeKado(doc []byte) (KadoRequest, error) {
	var req KadoRequest
	if len(bytes.TrimSpace(doc)) == 0 {
		return req, Errorf(CodeBadRequest, emptyRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var env map[string]json.RawMessage
	if err := dec.Decode(&env); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return req, Errorf(CodeBadRequest, "request must be a JSON object with a \"save\" or \"restore\" member, got %s", typeErr.Value)
		}
		return req, Errorf(CodeBadRequest, "request is not valid JSON: %v", err)
	}
	if env == nil {
		return req, Errorf(CodeBadRequest, "request must be a JSON object with a \"save\" or \"restore\" member, got null")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, Errorf(CodeBadRequest, "request holds more than one JSON document: send exactly one per connection")
	}
	if raw, ok := env["token"]; ok {
		if err := json.Unmarshal(raw, &req.Token); err != nil {
			return req, Errorf(CodeBadRequest, "\"token\" must be a string")
		}
	}
	saveRaw, isSave := env["save"]
	restoreRaw, isRestore := env["restore"]
	switch {
	case isSave && isRestore:
		return req, Errorf(CodeBadRequest, "request has both \"save\" and \"restore\": send one action per connection")
	case isSave:
		req.Op = OpSave
		body, err := kadoBody("save", saveRaw)
		if err != nil {
			return req, err
		}
		if req.SID, err = kadoSID("save", body); err != nil {
			return req, err
		}
		data, ok := body["data"]
		if !ok {
			return req, Errorf(CodeBadRequest, "save.data is missing: it must be the session's data as a JSON object")
		}
		data = bytes.TrimSpace(data)
		if len(data) == 0 || data[0] != '{' {
			return req, Errorf(CodeBadRequest, "save.data must be a JSON object, got %s", kind(data))
		}
		req.Data = data
	case isRestore:
		req.Op = OpRestore
		body, err := kadoBody("restore", restoreRaw)
		if err != nil {
			return req, err
		}
		if req.SID, err = kadoSID("restore", body); err != nil {
			return req, err
		}
	default:
		return req, Errorf(CodeBadRequest, "no action: the request must have a \"save\" or \"restore\" member")
	}
	return req, nil
}

func kadoBody(action string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, Errorf(CodeBadRequest, "%q must be a JSON object holding \"sid\", got %s", action, kind(raw))
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, Errorf(CodeBadRequest, "%q is not a valid object: %v", action, err)
	}
	return body, nil
}

func kadoSID(action string, body map[string]json.RawMessage) (string, error) {
	raw, ok := body["sid"]
	if !ok {
		return "", Errorf(CodeBadRequest, "%s.sid is missing: it must be the session id as a string", action)
	}
	var sid string
	if err := json.Unmarshal(raw, &sid); err != nil {
		return "", Errorf(CodeBadRequest, "%s.sid must be a string, got %s", action, kind(bytes.TrimSpace(raw)))
	}
	if sid == "" {
		return "", Errorf(CodeBadRequest, "%s.sid is empty", action)
	}
	return sid, nil
}

// kind names a JSON value's type for error messages.
func kind(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	}
	return "a number"
}

// KadoOK is the reply to a successful save.
var KadoOK = []byte(`{"status":"ok"}`)

// Every Kado reply is plain ASCII: a character beyond it is sent as a \u
// escape (two for one outside the BMP). Kado's SessionStoreLocal decodes each
// chunk it reads as UTF-8 on its own and joins the text, so a character
// whose bytes arrived in two TCP segments became two U+FFFD in the
// restored session (a 1 MB session of accented text came back with 16 of
// them over loopback; across a network, any reply longer than one segment
// may). An escape is ASCII and cannot be cut that way, and JSON.parse reads
// it back as the same character.

// KadoResult builds the reply to a successful restore: data is the session's
// JSON object, or nil for an unknown session (which answers "result":{}).
func KadoResult(data []byte) []byte {
	if len(data) == 0 {
		data = []byte("{}")
	}
	out := make([]byte, 0, len(data)+32)
	out = append(out, `{"status":"ok","result":`...)
	out = appendASCIIJSON(out, data)
	return append(out, '}')
}

// KadoError builds an error reply whose message says what was wrong.
func KadoError(msg string) []byte {
	quoted, _ := json.Marshal(msg) // a string always marshals
	out := append(make([]byte, 0, len(quoted)+32), `{"status":"error","message":`...)
	return append(appendASCIIJSON(out, quoted), '}')
}

// appendASCIIJSON appends the JSON text src to dst with every non-ASCII
// character written as a \u escape. It is meant for valid JSON, where such
// characters occur only inside strings, so the escape means the same; a
// byte that is not valid UTF-8 becomes \ufffd, as a UTF-8 decoder would
// read it anyway.
func appendASCIIJSON(dst, src []byte) []byte {
	const hex = "0123456789abcdef"
	esc := func(dst []byte, r rune) []byte {
		return append(dst, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
	}
	start := 0
	for i := 0; i < len(src); {
		// Eight bytes at a time while they are all ASCII: most sessions
		// are, and a byte at a time doubled the cost of a reply.
		for i+8 <= len(src) && binary.LittleEndian.Uint64(src[i:])&0x8080808080808080 == 0 {
			i += 8
		}
		if i == len(src) {
			break
		}
		if src[i] < utf8.RuneSelf {
			i++
			continue
		}
		dst = append(dst, src[start:i]...)
		r, size := utf8.DecodeRune(src[i:])
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			dst = esc(esc(dst, r1), r2)
		} else {
			dst = esc(dst, r) // in the BMP, or RuneError for a bad byte
		}
		i += size
		start = i
	}
	return append(dst, src[start:]...)
}
