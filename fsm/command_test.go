package fsm

import (
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// canon returns c with every empty slice set to nil, recursively, so that
// commands can be compared with reflect.DeepEqual whatever the decoder
// allocated for empty fields.
func canon(c Command) Command {
	if len(c.Data) == 0 {
		c.Data = nil
	}
	if len(c.Set) == 0 {
		c.Set = nil
	} else {
		set := make([]Field, len(c.Set))
		for i, f := range c.Set {
			if len(f.Value) == 0 {
				f.Value = nil
			}
			set[i] = f
		}
		c.Set = set
	}
	if len(c.Del) == 0 {
		c.Del = nil
	}
	if len(c.Batch) == 0 {
		c.Batch = nil
	} else {
		batch := make([]Command, len(c.Batch))
		for i := range c.Batch {
			batch[i] = canon(c.Batch[i])
		}
		c.Batch = batch
	}
	return c
}

// sampleCommands holds one command of every op, with awkward values.
func sampleCommands() []struct {
	name string
	cmd  Command
} {
	return []struct {
		name string
		cmd  Command
	}{
		{"save", Command{Op: OpSave, Time: 1795629654509, SID: "sid1", Data: []byte(`{"a":1}`)}},
		{"save empty data", Command{Op: OpSave, Time: 0, SID: "s", Data: []byte(`{}`)}},
		{"save negative time unicode sid", Command{Op: OpSave, Time: -5, SID: "sé\"\\ü☃", Data: []byte(`{"k":"v"}`)}},
		{"patch", Command{Op: OpPatch, Time: 42, SID: "p", Duration: 6 * 3600 * 1000, MaxSize: 1 << 20,
			Set: []Field{{Key: "a", Value: []byte(`1`)}, {Key: "b", Value: []byte(`{"x":[1,2]}`)}},
			Del: []string{"c", "d"}}},
		{"patch set only", Command{Op: OpPatch, Time: 1, SID: "p", Set: []Field{{Key: "a", Value: []byte(`"v"`)}}}},
		{"patch del only", Command{Op: OpPatch, Time: 1, SID: "p", Del: []string{"gone"}}},
		{"patch empty", Command{Op: OpPatch, Time: 1, SID: "p"}},
		{"patch if exists", Command{Op: OpPatch, Time: 1, SID: "p", Set: []Field{{Key: "a", Value: []byte(`1`)}}, IfExists: true}},
		{"delete", Command{Op: OpDelete, Time: 7, SID: "__proto__"}},
		{"touch", Command{Op: OpTouch, Time: 8, SID: "constructor"}},
		{"delete user", Command{Op: OpDeleteUser, Time: 9, SID: "alice"}},
		{"delete user with id", Command{Op: OpDeleteUser, Time: 9, SID: "alice", ID: RequestID{0xaa, 1}}},
		{"touch with duration", Command{Op: OpTouch, Time: 8, SID: "t", Duration: 1000}},
		{"prune", Command{Op: OpPrune, Time: 1 << 62, Duration: 21600000}},
		{"prune zero", Command{Op: OpPrune}},
		{"expire", Command{Op: OpExpire, Time: 50, Duration: 1000, Del: []string{"a", "sé\"", ""}}},
		{"expire none", Command{Op: OpExpire, Time: 50, Duration: 1000}},
		{"batch", Command{Op: OpBatch, Time: 99, Batch: []Command{
			{Op: OpSave, Time: 99, SID: "a", Data: []byte(`{"a":1}`)},
			{Op: OpPatch, Time: 99, SID: "b", Duration: 10, MaxSize: 100, Set: []Field{{Key: "k", Value: []byte(`true`)}}, Del: []string{"z"}},
			{Op: OpPatch, Time: 99, SID: "b2", Del: []string{"z"}, IfExists: true},
			{Op: OpDelete, Time: 99, SID: "c"},
			{Op: OpTouch, Time: 99, SID: "d", Duration: 5},
			{Op: OpPrune, Time: 99, Duration: 10},
			{Op: OpExpire, Time: 99, Duration: 10, Del: []string{"e"}},
		}}},
		{"empty batch", Command{Op: OpBatch, Time: 3}},
	}
}

func TestCommandRoundTrip(t *testing.T) {
	for _, tc := range sampleCommands() {
		t.Run(tc.name, func(t *testing.T) {
			enc := tc.cmd.Encode(nil)
			if n := tc.cmd.EncodedLen(); n != len(enc) {
				t.Fatalf("EncodedLen = %d, Encode wrote %d bytes", n, len(enc))
			}
			got, err := DecodeCommand(enc)
			if err != nil {
				t.Fatalf("DecodeCommand: %v", err)
			}
			if !reflect.DeepEqual(canon(got), canon(tc.cmd)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.cmd)
			}
			// Encode appends: a prefix in dst is kept.
			withPrefix := tc.cmd.Encode([]byte("xyz"))
			if string(withPrefix[:3]) != "xyz" || string(withPrefix[3:]) != string(enc) {
				t.Fatalf("Encode with a non-empty dst did not append")
			}
		})
	}
}

// TestCommandEncodingStable pins the log encoding of one command: the bytes
// are in raft logs and must never change meaning.
func TestCommandEncodingStable(t *testing.T) {
	c := Command{Op: OpSave, Time: 3, ID: RequestID{1, 2}, SID: "ab", Data: []byte(`{}`)}
	want := append(append([]byte{byte(OpSave), 6}, RequestID{1, 2}.bytes()...), 2, 'a', 'b', 2, '{', '}')
	if got := c.Encode(nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("Encode = %v, want %v", got, want)
	}
	// A batch (with a flagged patch and a nested empty batch), as the
	// encoder wrote it before it encoded the batch's commands in place.
	b := Command{Op: OpBatch, Time: 300, Batch: []Command{
		{Op: OpSave, Time: 300, ID: RequestID{7}, SID: "s", Data: []byte(`{"a":1}`)},
		{Op: OpPatch, Time: 300, SID: "p", Duration: 60000, Set: []Field{{Key: "k", Value: []byte(`2`)}}, Del: []string{"d"}, IfExists: true},
		{Op: OpBatch, Time: 300},
	}}
	want = []byte{0x6, 0xd8, 0x4, 0x3, 0x1d, 0x1, 0xd8, 0x4, 0x7, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
		0x0, 0x0, 0x1, 0x73, 0x7, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x31, 0x7d, 0x22, 0x9, 0xd8, 0x4, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
		0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x1, 0x70, 0xc0, 0xa9, 0x7, 0x0, 0x0, 0x1, 0x1, 0x6b, 0x1, 0x32, 0x1, 0x1, 0x64,
		0x4, 0x6, 0xd8, 0x4, 0x0}
	if got := b.Encode(nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("batch Encode = %#v, want %#v", got, want)
	}
}

func TestDecodeCommandCorrupt(t *testing.T) {
	valid := (&Command{Op: OpSave, Time: 1, SID: "s", Data: []byte(`{}`)}).Encode(nil)
	nested := (&Command{Op: OpBatch, Batch: []Command{{Op: OpBatch}}}).Encode(nil)
	// A batch whose one element carries a trailing byte inside its length.
	elem := append((&Command{Op: OpDelete, SID: "x"}).Encode(nil), 0)
	trailingElem := []byte{byte(OpBatch), 0, 1}
	trailingElem = binary.AppendUvarint(trailingElem, uint64(len(elem)))
	trailingElem = append(trailingElem, elem...)
	overflow := []byte{byte(OpPrune), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}

	cases := []struct {
		name string
		in   []byte
		msg  string // part of the error message
	}{
		{"nil", nil, "empty"},
		{"empty", []byte{}, "empty"},
		{"unknown op 0", []byte{0, 0}, "unknown op 0"},
		{"unknown op 200", []byte{200, 0}, "unknown op 200"},
		{"op only", []byte{byte(OpSave)}, "varint"},
		{"trailing bytes", append(append([]byte{}, valid...), 1, 2), "2 trailing bytes"},
		{"length past end", withID(byte(OpSave), 50, 'a'), "exceeds"},
		{"huge length", withID(byte(OpDelete), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f), "exceeds"},
		{"truncated request id", []byte{byte(OpSave), 0, 1, 2}, "request id"},
		{"varint overflow", overflow, "varint"},
		{"patch huge count", withID(byte(OpPatch), 1, 's', 0, 0, 0, 0xff, 0xff, 0x03), "count"},
		{"batch huge count", []byte{byte(OpBatch), 0, 0xff, 0xff, 0x03}, "count"},
		{"nested batch", nested, "nested batch"},
		{"batch element trailing bytes", trailingElem, "trailing bytes in batch element 0"},
		{"batch element garbage", []byte{byte(OpBatch), 0, 1, 2, 0xee, 0}, "unknown op"},
		{"binary garbage", []byte("\x06\x00\x02\x03\x01\x01\x01\xff"), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := DecodeCommand(tc.in)
			if err == nil {
				t.Fatalf("DecodeCommand(%x) = %+v, want an error", tc.in, c)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

// TestDecodeCommandTruncated cuts every valid encoding at every length: all
// strict prefixes must fail cleanly with ErrCorrupt.
func TestDecodeCommandTruncated(t *testing.T) {
	for _, tc := range sampleCommands() {
		t.Run(tc.name, func(t *testing.T) {
			enc := tc.cmd.Encode(nil)
			for n := 0; n < len(enc); n++ {
				_, err := DecodeCommand(enc[:n:n])
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("prefix of %d/%d bytes: err = %v, want ErrCorrupt", n, len(enc), err)
				}
			}
		})
	}
}

// TestDecodeCommandBitFlips flips every bit of every sample: decoding must
// never panic, and whatever decodes must re-encode to an equal command.
func TestDecodeCommandBitFlips(t *testing.T) {
	for _, tc := range sampleCommands() {
		enc := tc.cmd.Encode(nil)
		for i := range enc {
			for bit := 0; bit < 8; bit++ {
				mut := append([]byte(nil), enc...)
				mut[i] ^= 1 << bit
				checkDecodeRoundTrip(t, mut)
			}
		}
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{OpSave: "save", OpPatch: "patch", OpDelete: "delete",
		OpTouch: "touch", OpPrune: "prune", OpBatch: "batch", OpExpire: "expire", Op(77): "op(77)"} {
		if got := op.String(); got != want {
			t.Errorf("Op(%d).String() = %q, want %q", byte(op), got, want)
		}
	}
}

// checkDecodeRoundTrip decodes b; when that succeeds, the command must
// re-encode to bytes that decode to the same command.
func checkDecodeRoundTrip(t *testing.T, b []byte) {
	t.Helper()
	c, err := DecodeCommand(b)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("DecodeCommand(%x): error %v does not wrap ErrCorrupt", b, err)
		}
		return
	}
	enc := c.Encode(nil)
	if n := c.EncodedLen(); n != len(enc) {
		t.Fatalf("DecodeCommand(%x) = %+v: EncodedLen %d, Encode wrote %d bytes", b, c, n, len(enc))
	}
	again, err := DecodeCommand(enc)
	if err != nil {
		t.Fatalf("DecodeCommand(%x) = %+v, which re-encodes to something undecodable: %v", b, c, err)
	}
	if !reflect.DeepEqual(canon(again), canon(c)) {
		t.Fatalf("re-encode of %x changed the command:\n got %+v\nwant %+v", b, again, c)
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, tc := range sampleCommands() {
		f.Add(tc.cmd.Encode(nil))
	}
	f.Add([]byte{})
	f.Add([]byte{byte(OpBatch), 0, 0xff, 0xff, 0x03})
	f.Add([]byte{byte(OpPrune), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecodeRoundTrip(t, b)
	})
}

func (id RequestID) bytes() []byte { return id[:] }

// withID builds a command of op at time 0 with a zero request id and body.
func withID(op byte, body ...byte) []byte {
	return append(append([]byte{op, 0}, make([]byte, len(RequestID{}))...), body...)
}

// TestPatchIfExistsEncoding: a patch without IfExists encodes as before the
// flag existed (entries already in logs decode unchanged); with it, only
// the op byte differs.
func TestPatchIfExistsEncoding(t *testing.T) {
	plain := Command{Op: OpPatch, Time: 5, SID: "p", Set: []Field{{Key: "a", Value: []byte(`1`)}}}
	flagged := plain
	flagged.IfExists = true
	a, b := plain.Encode(nil), flagged.Encode(nil)
	if a[0] != byte(OpPatch) || b[0] != byte(opPatchIfExists) || string(a[1:]) != string(b[1:]) {
		t.Fatalf("IfExists should change only the op byte:\n%x\n%x", a, b)
	}
}
