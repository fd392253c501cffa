package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// First bytes of a connection. A node tells its protocols apart by them.
const (
	// MagicNative opens a native-protocol connection; VersionNative follows.
	MagicNative byte = 'N'
	// MagicPeer opens a native-protocol connection from another node
	// (forwarding); VersionNative follows. See FromPeer.
	MagicPeer byte = 'P'
	// MagicRaft opens a raft connection (see the cluster package's stream layer).
	MagicRaft byte = 'R'
	// MagicTLS is the first byte of a TLS handshake record.
	MagicTLS byte = 0x16
	// VersionNative is the native protocol version this package speaks.
	VersionNative byte = 1
)

// DefaultMaxFrame bounds one frame or Kado JSON document: 1 MiB.
const DefaultMaxFrame = 1 << 20

// frameHeader is the length prefix (4), the request id (8) and the op or
// status byte (1).
const frameHeader = 4 + 8 + 1

// Op names a native request.
type Op byte

// Native request ops. Their values are on the wire.
const (
	OpPing    Op = 1
	OpRestore Op = 2
	OpSave    Op = 3
	OpPatch   Op = 4
	OpDelete  Op = 5
	OpTouch   Op = 6
	// OpAdmin carries a JSON body for cluster administration (status, join,
	// remove); the Handler interprets it.
	OpAdmin Op = 7
	// OpAuth presents the client token (Request.Data); a connection to a
	// node that requires one sends it before anything else.
	OpAuth Op = 8
	// opPatchIfExists is the wire byte of an OpPatch with IfExists; a
	// decoded request has Op OpPatch and IfExists set. A node that does not
	// know it answers CodeBadRequest ("unknown op 9").
	opPatchIfExists Op = 9
)

func (o Op) String() string {
	switch o {
	case OpPing:
		return "ping"
	case OpRestore:
		return "restore"
	case OpSave:
		return "save"
	case OpPatch:
		return "patch"
	case OpDelete:
		return "delete"
	case OpTouch:
		return "touch"
	case OpAdmin:
		return "admin"
	case OpAuth:
		return "auth"
	}
	return fmt.Sprintf("op(%d)", byte(o))
}

// Consistency is the read guarantee a restore asks for.
type Consistency byte

// Consistency levels. Default lets the node use its configured default.
const (
	Default      Consistency = 0
	Linearizable Consistency = 1 // read index confirmed by a quorum
	Leader       Consistency = 2 // the leader's state without a quorum check
	Stale        Consistency = 3 // any node's state
	// AtIndex is for the nodes of a cluster, not clients: the node's state
	// once it has applied Request.Index, a read index the leader gave for
	// the read. A follower whose state is behind the index sends the read
	// to the leader this way instead of waiting to learn of the commits.
	AtIndex Consistency = 4
)

func (c Consistency) String() string {
	switch c {
	case Default:
		return "default"
	case Linearizable:
		return "linearizable"
	case Leader:
		return "leader"
	case Stale:
		return "stale"
	case AtIndex:
		return "at-index"
	}
	return fmt.Sprintf("consistency(%d)", byte(c))
}

// KV is one key and its JSON-encoded value.
type KV struct {
	Key   string
	Value []byte
}

// Request is one native request. Which fields are used depends on Op.
type Request struct {
	ID uint64
	Op Op
	// Nonce identifies one logical write across its retries (OpSave,
	// OpPatch, OpDelete, OpTouch): a node applies a nonce once, so a write
	// resent after an unknown outcome cannot take effect twice. Zero: the
	// node makes one up (it then protects only its own retries).
	Nonce       Nonce
	Consistency Consistency // OpRestore
	Index       uint64      // OpRestore with AtIndex
	SID         string      // OpRestore, OpSave, OpPatch, OpDelete, OpTouch
	Data        []byte      // OpSave: a JSON object; OpAdmin: a JSON body
	Set         []KV        // OpPatch
	Del         []string    // OpPatch
	// IfExists (OpPatch) changes only a session that exists and has not
	// expired; otherwise the node answers CodeNotFound and changes nothing.
	IfExists bool
}

// Nonce is a write's idempotency key: 16 bytes, unique per logical write.
type Nonce [16]byte

// Response is one native response. Err is set when the request failed.
type Response struct {
	ID  uint64
	Err *Error
	// Leader, on a successful response, is the leader's address when a
	// follower served the request by forwarding it: clients should send the
	// next one there directly. Empty otherwise.
	Leader string
	Found  bool   // OpRestore: whether the session exists
	Data   []byte // OpRestore: the session's JSON object; OpAdmin: a JSON body
}

// AppendRequest appends req as one frame to dst.
func AppendRequest(dst []byte, req *Request) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, req.ID)
	if req.Op == OpPatch && req.IfExists {
		dst = append(dst, byte(opPatchIfExists))
	} else {
		dst = append(dst, byte(req.Op))
	}
	switch req.Op {
	case OpSave, OpPatch, OpDelete, OpTouch:
		dst = append(dst, req.Nonce[:]...)
	}
	switch req.Op {
	case OpRestore:
		dst = append(dst, byte(req.Consistency))
		dst = appendString(dst, req.SID)
		if req.Consistency == AtIndex {
			dst = binary.AppendUvarint(dst, req.Index)
		}
	case OpSave:
		dst = appendString(dst, req.SID)
		dst = append(dst, req.Data...)
	case OpPatch:
		dst = appendString(dst, req.SID)
		dst = binary.AppendUvarint(dst, uint64(len(req.Set)))
		for _, kv := range req.Set {
			dst = appendString(dst, kv.Key)
			dst = appendBytes(dst, kv.Value)
		}
		dst = binary.AppendUvarint(dst, uint64(len(req.Del)))
		for _, k := range req.Del {
			dst = appendString(dst, k)
		}
	case OpDelete, OpTouch:
		dst = appendString(dst, req.SID)
	case OpAdmin, OpAuth:
		dst = append(dst, req.Data...)
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// AppendResponse appends resp as one frame to dst; op is the request's op,
// which decides the shape of a successful body.
func AppendResponse(dst []byte, op Op, resp *Response) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, resp.ID)
	if resp.Err != nil {
		dst = append(dst, byte(resp.Err.Code))
		dst = appendString(dst, resp.Err.Message)
		dst = appendString(dst, resp.Err.Leader)
	} else {
		dst = append(dst, byte(CodeOK))
		dst = appendString(dst, resp.Leader)
		if op == OpRestore {
			if resp.Found {
				dst = append(dst, 1)
			} else {
				dst = append(dst, 0)
			}
		}
		dst = append(dst, resp.Data...)
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// ErrFrameTooLarge is returned by ReadFrame for a frame over the limit; the
// frame's id has been read (see FrameTooLargeError) but not its body, so the
// connection cannot be resynchronised.
var ErrFrameTooLarge = errors.New("frame too large")

// FrameTooLargeError reports an oversized frame and the id it carried.
type FrameTooLargeError struct {
	ID   uint64
	Size uint32
	Max  int
}

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("frame of %d bytes exceeds the limit of %d bytes", e.Size, e.Max)
}

// Unwrap makes errors.Is(err, ErrFrameTooLarge) true.
func (e *FrameTooLargeError) Unwrap() error { return ErrFrameTooLarge }

// ReadFrame reads one frame (length prefix included) into buf, growing it as
// needed, and returns the frame without its length prefix: id, op or status,
// then the body. Frames longer than max bytes are refused with a
// *FrameTooLargeError after reading only the header.
func ReadFrame(r io.Reader, buf []byte, max int) ([]byte, error) {
	// The header is read into buf, which the caller reuses: an array of
	// its own escaped to the heap through r, one allocation per frame.
	if cap(buf) < frameHeader {
		buf = make([]byte, 0, 512)
	}
	hdr := buf[:frameHeader]
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < frameHeader-4 {
		return nil, fmt.Errorf("frame of %d bytes is shorter than its %d-byte header", n, frameHeader-4)
	}
	if int64(n) > int64(max) {
		if _, err := io.ReadFull(r, hdr[4:12]); err != nil {
			return nil, err
		}
		return nil, &FrameTooLargeError{ID: binary.BigEndian.Uint64(hdr[4:12]), Size: n, Max: max}
	}
	if cap(buf) >= int(n) || n <= eagerFrame {
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		return buf, nil
	}
	// A large frame's memory follows its bytes as they arrive, doubling:
	// taken at its header's word, anyone who can open connections could
	// have a node hold max bytes per connection by sending headers alone.
	buf = buf[:0]
	for len(buf) < int(n) {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(int(n), 2*len(buf)+eagerFrame))
			copy(grown, buf)
			buf = grown
		}
		m, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	return buf, nil
}

// eagerFrame is the largest frame ReadFrame allocates whole on its
// header's word.
const eagerFrame = 64 << 10

// unexpectedEOF turns io.EOF in the middle of a frame into
// io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// DecodeRequest decodes a frame returned by ReadFrame. Strings and data are
// copied, so the frame buffer may be reused. The id is returned even when
// the body is malformed, so the error can be answered.
func DecodeRequest(frame []byte) (Request, error) { return decodeRequest(frame, 0) }

// decodeRequest is DecodeRequest refusing, with CodeTooLarge, a patch that
// counts more than maxKeys keys to set, or to delete, before it decodes
// them (maxKeys <= 0: no bound).
func decodeRequest(frame []byte, maxKeys int) (Request, error) {
	if len(frame) < frameHeader-4 {
		return Request{}, Errorf(CodeBadRequest, "malformed frame: %d bytes is shorter than the header", len(frame))
	}
	req := Request{ID: binary.BigEndian.Uint64(frame[:8]), Op: Op(frame[8])}
	if req.Op == opPatchIfExists {
		req.Op, req.IfExists = OpPatch, true
	}
	d := wire{b: frame[9:]}
	switch req.Op {
	case OpSave, OpPatch, OpDelete, OpTouch:
		if len(d.b) < len(req.Nonce) {
			return req, Errorf(CodeBadRequest, "malformed frame: the %s request is too short for its nonce", req.Op)
		}
		copy(req.Nonce[:], d.b)
		d.b = d.b[len(req.Nonce):]
	}
	switch req.Op {
	case OpPing:
	case OpRestore:
		req.Consistency = Consistency(d.byte())
		req.SID = d.string()
		switch {
		case req.Consistency == AtIndex:
			req.Index = d.uvarint()
		case req.Consistency > AtIndex:
			d.fail("unknown consistency %d", byte(req.Consistency))
		}
	case OpSave:
		req.SID = d.string()
		req.Data = d.rest()
	case OpPatch:
		req.SID = d.string()
		// Capacity follows what arrives, not what the count claims: a
		// 2 MB frame claiming 2M keys had 80 MB allocated for them.
		n := d.count()
		if tooMany(n, maxKeys) {
			return req, Errorf(CodeTooLarge, "the patch sets %d keys; a session holds at most %d", n, maxKeys)
		}
		req.Set = make([]KV, 0, min(n, maxPrealloc))
		for i := 0; i < n && d.err == nil; i++ {
			k := d.string()
			req.Set = append(req.Set, KV{Key: k, Value: d.bytes()})
		}
		n = d.count()
		if tooMany(n, maxKeys) {
			return req, Errorf(CodeTooLarge, "the patch deletes %d keys; a session holds at most %d", n, maxKeys)
		}
		req.Del = make([]string, 0, min(n, maxPrealloc))
		for i := 0; i < n && d.err == nil; i++ {
			req.Del = append(req.Del, d.string())
		}
	case OpDelete, OpTouch:
		req.SID = d.string()
	case OpAdmin, OpAuth:
		req.Data = d.rest()
	default:
		return req, Errorf(CodeBadRequest, "unknown op %d", byte(req.Op))
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d unexpected bytes after the %s request", len(d.b), req.Op)
	}
	if d.err != nil {
		return req, d.err
	}
	return req, nil
}

// DecodeResponse decodes a response frame returned by ReadFrame; op is the
// op of the request it answers. The body is copied.
func DecodeResponse(frame []byte, op Op) (Response, error) {
	if len(frame) < frameHeader-4 {
		return Response{}, Errorf(CodeBadRequest, "malformed frame: %d bytes is shorter than the header", len(frame))
	}
	resp := Response{ID: binary.BigEndian.Uint64(frame[:8])}
	d := wire{b: frame[9:]}
	if code := Code(frame[8]); code != CodeOK {
		resp.Err = &Error{Code: code, Message: d.string(), Leader: d.string()}
	} else {
		resp.Leader = d.string()
		if op == OpRestore {
			resp.Found = d.byte() == 1
		}
		resp.Data = d.rest()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d unexpected bytes after the response", len(d.b))
	}
	return resp, d.err
}

// tooMany reports whether a patch's count of n keys exceeds maxKeys (a
// bound when positive): a frame of 2 MB holds a million empty keys, 40 MB
// decoded, which the node would refuse only then.
func tooMany(n, maxKeys int) bool { return maxKeys > 0 && n > maxKeys }

// maxPrealloc bounds the room DecodeRequest makes for a patch's keys
// before they are read.
const maxPrealloc = 1024

// wire decodes the fields of a frame body.
type wire struct {
	b   []byte
	err error
}

func (d *wire) fail(format string, args ...any) {
	if d.err == nil {
		d.err = Errorf(CodeBadRequest, "malformed frame: "+format, args...)
	}
}

func (d *wire) byte() byte {
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *wire) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad length")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *wire) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("count %d exceeds the %d bytes left", n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *wire) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the %d bytes left", n, len(d.b))
		return nil
	}
	out := append([]byte(nil), d.b[:n]...)
	d.b = d.b[n:]
	return out
}

func (d *wire) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the %d bytes left", n, len(d.b))
		return ""
	}
	out := string(d.b[:n]) // one copy, not a []byte copied again
	d.b = d.b[n:]
	return out
}

func (d *wire) rest() []byte {
	out := append([]byte(nil), d.b...)
	d.b = nil
	return out
}
