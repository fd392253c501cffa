package fsm

import (
	"encoding/binary"
	"fmt"
)

// Op names a command.
type Op byte

// The commands. Their byte values are written into the raft log and must
// never change meaning.
const (
	// OpSave replaces a whole session.
	OpSave Op = 1
	// OpPatch sets and deletes individual keys of one session atomically,
	// creating the session when it does not exist.
	OpPatch Op = 2
	// OpDelete removes a session.
	OpDelete Op = 3
	// OpTouch renews a session's Written time without changing its data. A
	// record already expired at the command's Time for its Duration is left
	// alone: a touch never brings an expired session back.
	OpTouch Op = 4
	// OpPrune removes every session whose Written+Duration is at or before
	// the command's Time.
	OpPrune Op = 5
	// OpBatch carries many commands in one log entry (group commit).
	OpBatch Op = 6
	// OpDeleteUser removes every session tagged with the user in SID.
	OpDeleteUser Op = 7
	// OpExpire removes the sessions named in Del that are expired at the
	// command's Time for its Duration; the others (saved again since they
	// were named) stay. The leader finds the expired sessions by scanning
	// its state off the apply path (State.ExpiredSessions), so applying
	// costs a lookup per session named, where OpPrune scans every session
	// on the goroutine that applies (1M sessions: a 100-180 ms stall of
	// every write, once a minute).
	OpExpire Op = 8
	// opPatchIfExists is the log's byte for an OpPatch with IfExists; a
	// decoded command has Op OpPatch and IfExists set.
	opPatchIfExists Op = 9
	// opDeleteUserOnce is the log's byte for an OpDeleteUser with an ID; a
	// decoded command has Op OpDeleteUser and the ID. A revoke carries one
	// so that its retry through another leader is answered, not run again
	// (it would log out the user's sessions made in between). A node built
	// before it stops at such an entry, as at OpExpire (LogVersion).
	opDeleteUserOnce Op = 10
)

// LogVersion is the newest raft log format this build applies. Each
// version adds op bytes that a build of an earlier one cannot apply (it
// stops at the first such entry), so a leader writes a command of a newer
// version only once every member reports it (cluster: a rolling upgrade):
//
//	0  OpSave to OpDeleteUser (1-7): also every build that reports no version
//	1  OpExpire (8), opPatchIfExists (9), opDeleteUserOnce (10)
const LogVersion = 1

// LogVersion is the log version a node must apply to apply c (its own op
// byte's, or for a batch the newest of its commands').
func (c *Command) LogVersion() int {
	switch {
	case c.Op == OpExpire, c.Op == OpPatch && c.IfExists, c.Op == OpDeleteUser && c.ID != (RequestID{}):
		return 1
	case c.Op == OpBatch:
		v := 0
		for i := range c.Batch {
			v = max(v, c.Batch[i].LogVersion())
		}
		return v
	}
	return 0
}

// RequestID is a write's idempotency key (the native protocol's nonce).
type RequestID [16]byte

// deduplicated reports whether commands of op may carry a RequestID that
// Apply remembers (State.Applied).
func (o Op) deduplicated() bool {
	return o == OpSave || o == OpPatch || o == OpDelete || o == OpTouch || o == OpDeleteUser
}

// carriesID reports whether a command whose log byte is o has a RequestID
// after its time: the deduplicated ops' bytes, except OpDeleteUser's,
// whose ID came later with a byte of its own.
func (o Op) carriesID() bool {
	return o == opPatchIfExists || o == opDeleteUserOnce || (o.deduplicated() && o != OpDeleteUser)
}

func (o Op) String() string {
	switch o {
	case OpSave:
		return "save"
	case OpPatch:
		return "patch"
	case OpDelete:
		return "delete"
	case OpTouch:
		return "touch"
	case OpPrune:
		return "prune"
	case OpBatch:
		return "batch"
	case OpDeleteUser:
		return "delete-user"
	case OpExpire:
		return "expire"
	}
	return fmt.Sprintf("op(%d)", byte(o))
}

// Command is one change to the state. Time is stamped by the leader (ms since
// the epoch); Apply never reads a clock.
type Command struct {
	Op   Op
	Time int64
	// ID identifies one logical write across its retries (OpSave, OpPatch,
	// OpDelete, OpTouch, OpDeleteUser): a command whose ID was applied within
	// DedupeWindow is not applied again. Zero: no deduplication.
	ID  RequestID
	SID string
	// Data is the session for OpSave, a compact JSON object without
	// WrittenKey (see NormalizeObject).
	Data []byte
	// Set and Del are the changes of an OpPatch; Del also names the
	// sessions of an OpExpire.
	Set []Field
	Del []string
	// Duration is the session lifetime in ms for OpPrune and OpExpire, and for OpPatch and
	// OpTouch the lifetime after which the existing record counts as gone.
	// Zero means sessions never expire.
	Duration int64
	// MaxSize bounds the data an OpPatch may grow a session to (0: no bound).
	MaxSize int64
	// MaxKeys bounds the keys an OpPatch may grow a session to (0: no bound).
	MaxKeys int64
	// IfExists makes an OpPatch change only a session that exists and has
	// not expired; its Result.Count says whether it did (an OpPatch always
	// creates the session otherwise). A request that loaded a session
	// patches it this way, so that it cannot bring back a session deleted
	// meanwhile (a logout in another tab). In the log such a patch has an
	// op byte of its own (opPatchIfExists), so entries written before it
	// existed decode as they did.
	IfExists bool
	// Batch holds the commands of an OpBatch.
	Batch []Command
}

// logOp is the command's op byte in the log: OpPatch with IfExists and
// OpDeleteUser with an ID have bytes of their own.
func (c *Command) logOp() Op {
	switch {
	case c.Op == OpPatch && c.IfExists:
		return opPatchIfExists
	case c.Op == OpDeleteUser && c.ID != (RequestID{}):
		return opDeleteUserOnce
	}
	return c.Op
}

// Encode appends the command's log encoding to dst. A batch's commands are
// encoded in place, after their lengths (EncodedLen), not into a buffer
// each and copied: a batch of 1 MB sessions was encoded twice over.
func (c *Command) Encode(dst []byte) []byte {
	op := c.logOp()
	dst = append(dst, byte(op))
	dst = binary.AppendVarint(dst, c.Time)
	if op.carriesID() {
		dst = append(dst, c.ID[:]...)
	}
	switch c.Op {
	case OpSave:
		dst = appendBytes(dst, []byte(c.SID))
		dst = appendBytes(dst, c.Data)
	case OpPatch:
		dst = appendBytes(dst, []byte(c.SID))
		dst = binary.AppendVarint(dst, c.Duration)
		dst = binary.AppendVarint(dst, c.MaxSize)
		dst = binary.AppendVarint(dst, c.MaxKeys)
		dst = binary.AppendUvarint(dst, uint64(len(c.Set)))
		for _, f := range c.Set {
			dst = appendBytes(dst, []byte(f.Key))
			dst = appendBytes(dst, f.Value)
		}
		dst = appendStrings(dst, c.Del)
	case OpDelete, OpDeleteUser:
		dst = appendBytes(dst, []byte(c.SID))
	case OpTouch:
		dst = appendBytes(dst, []byte(c.SID))
		dst = binary.AppendVarint(dst, c.Duration)
	case OpPrune:
		dst = binary.AppendVarint(dst, c.Duration)
	case OpExpire:
		dst = binary.AppendVarint(dst, c.Duration)
		dst = appendStrings(dst, c.Del)
	case OpBatch:
		dst = binary.AppendUvarint(dst, uint64(len(c.Batch)))
		for i := range c.Batch {
			dst = binary.AppendUvarint(dst, uint64(c.Batch[i].EncodedLen()))
			dst = c.Batch[i].Encode(dst)
		}
	}
	return dst
}

// EncodedLen is len(c.Encode(nil)), without encoding: a caller can encode
// into a buffer of exactly that size.
func (c *Command) EncodedLen() int {
	op := c.logOp()
	n := 1 + varintLen(c.Time)
	if op.carriesID() {
		n += len(c.ID)
	}
	switch c.Op {
	case OpSave:
		n += bytesLen(len(c.SID)) + bytesLen(len(c.Data))
	case OpPatch:
		n += bytesLen(len(c.SID)) + varintLen(c.Duration) + varintLen(c.MaxSize) + varintLen(c.MaxKeys)
		n += uvarintLen(len(c.Set))
		for _, f := range c.Set {
			n += bytesLen(len(f.Key)) + bytesLen(len(f.Value))
		}
		n += stringsLen(c.Del)
	case OpDelete, OpDeleteUser:
		n += bytesLen(len(c.SID))
	case OpTouch:
		n += bytesLen(len(c.SID)) + varintLen(c.Duration)
	case OpPrune:
		n += varintLen(c.Duration)
	case OpExpire:
		n += varintLen(c.Duration) + stringsLen(c.Del)
	case OpBatch:
		n += uvarintLen(len(c.Batch))
		for i := range c.Batch {
			n += bytesLen(c.Batch[i].EncodedLen())
		}
	}
	return n
}

func varintLen(v int64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutVarint(b[:], v)
}

func uvarintLen(n int) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], uint64(n))
}

// bytesLen is the length of appendBytes's encoding of n bytes.
func bytesLen(n int) int { return uvarintLen(n) + n }

// stringsLen is the length of appendStrings's encoding of ss.
func stringsLen(ss []string) int {
	n := uvarintLen(len(ss))
	for _, s := range ss {
		n += bytesLen(len(s))
	}
	return n
}

// appendStrings appends a count and then each string (decoder.strings).
func appendStrings(dst []byte, ss []string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(ss)))
	for _, s := range ss {
		dst = appendBytes(dst, []byte(s))
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// DecodeCommand decodes one log entry. An error means the entry is not one
// this package wrote; it wraps ErrCorrupt.
func DecodeCommand(b []byte) (Command, error) {
	d := decoder{b: b}
	c := d.command(0)
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return Command{}, d.err
	}
	return c, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: command: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the %d bytes left", n, len(d.b))
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

// strings reads what appendStrings wrote.
func (d *decoder) strings() []string {
	n := d.count()
	out := make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		out = append(out, string(d.bytes()))
	}
	return out
}

func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) { // every element takes at least one byte
		d.fail("count %d exceeds the %d bytes left", n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) command(depth int) Command {
	if len(d.b) == 0 {
		d.fail("empty")
		return Command{}
	}
	op := Op(d.b[0])
	c := Command{Op: op}
	switch op {
	case opPatchIfExists:
		c.Op, c.IfExists = OpPatch, true
	case opDeleteUserOnce:
		c.Op = OpDeleteUser
	}
	d.b = d.b[1:]
	c.Time = d.varint()
	if op.carriesID() {
		if len(d.b) < len(c.ID) {
			d.fail("truncated request id")
			return c
		}
		copy(c.ID[:], d.b)
		d.b = d.b[len(c.ID):]
	}
	switch c.Op {
	case OpSave:
		c.SID = string(d.bytes())
		c.Data = d.bytes()
	case OpPatch:
		c.SID = string(d.bytes())
		c.Duration = d.varint()
		c.MaxSize = d.varint()
		c.MaxKeys = d.varint()
		n := d.count()
		c.Set = make([]Field, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			k := string(d.bytes())
			c.Set = append(c.Set, Field{Key: k, Value: d.bytes()})
		}
		c.Del = d.strings()
	case OpDelete, OpDeleteUser:
		c.SID = string(d.bytes())
	case OpTouch:
		c.SID = string(d.bytes())
		c.Duration = d.varint()
	case OpPrune:
		c.Duration = d.varint()
	case OpExpire:
		c.Duration = d.varint()
		c.Del = d.strings()
	case OpBatch:
		if depth > 0 {
			d.fail("nested batch")
			return c
		}
		n := d.count()
		c.Batch = make([]Command, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			sub := decoder{b: d.bytes()}
			if d.err != nil {
				break
			}
			cmd := sub.command(depth + 1)
			if sub.err == nil && len(sub.b) != 0 {
				sub.fail("%d trailing bytes in batch element %d", len(sub.b), i)
			}
			if sub.err != nil {
				d.err = sub.err
				break
			}
			c.Batch = append(c.Batch, cmd)
		}
	default:
		d.fail("unknown op %d", byte(c.Op))
	}
	return c
}
