package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// canonRequest sets empty slices to nil so requests compare with DeepEqual
// whatever the decoder allocated.
func canonRequest(r Request) Request {
	if len(r.Data) == 0 {
		r.Data = nil
	}
	if len(r.Set) == 0 {
		r.Set = nil
	} else {
		set := make([]KV, len(r.Set))
		for i, kv := range r.Set {
			if len(kv.Value) == 0 {
				kv.Value = nil
			}
			set[i] = kv
		}
		r.Set = set
	}
	if len(r.Del) == 0 {
		r.Del = nil
	}
	return r
}

func canonResponse(r Response) Response {
	if len(r.Data) == 0 {
		r.Data = nil
	}
	return r
}

func sampleRequests() []struct {
	name string
	req  Request
} {
	return []struct {
		name string
		req  Request
	}{
		{"ping", Request{ID: 1, Op: OpPing}},
		{"restore default", Request{ID: 2, Op: OpRestore, SID: "sid1"}},
		{"restore linearizable", Request{ID: 3, Op: OpRestore, Consistency: Linearizable, SID: "__proto__"}},
		{"restore leader", Request{ID: 4, Op: OpRestore, Consistency: Leader, SID: "constructor"}},
		{"restore stale", Request{ID: 5, Op: OpRestore, Consistency: Stale, SID: "é☃"}},
		{"restore at index", Request{ID: 5, Op: OpRestore, Consistency: AtIndex, SID: "s", Index: 1<<40 + 5}},
		{"save", Request{ID: 6, Op: OpSave, SID: "s", Data: []byte(`{"a":1}`)}},
		{"save empty data", Request{ID: 7, Op: OpSave, SID: "s"}},
		{"patch", Request{ID: 8, Op: OpPatch, SID: "p",
			Set: []KV{{Key: "a", Value: []byte(`1`)}, {Key: "b", Value: []byte(`{"x":[1]}`)}, {Key: "e", Value: nil}},
			Del: []string{"c", "d"}}},
		{"patch empty", Request{ID: 9, Op: OpPatch, SID: "p"}},
		{"patch if exists", Request{ID: 9, Op: OpPatch, SID: "p", Del: []string{"c"}, IfExists: true}},
		{"delete", Request{ID: 10, Op: OpDelete, SID: "d"}},
		{"touch", Request{ID: 11, Op: OpTouch, SID: "t"}},
		{"admin", Request{ID: 12, Op: OpAdmin, Data: []byte(`{"status":{}}`)}},
		{"max id", Request{ID: ^uint64(0), Op: OpDelete, SID: strings.Repeat("x", 1000)}},
		{"zero id", Request{ID: 0, Op: OpPing}},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, tc := range sampleRequests() {
		t.Run(tc.name, func(t *testing.T) {
			wire := AppendRequest([]byte("prefix"), &tc.req)
			if string(wire[:6]) != "prefix" {
				t.Fatal("AppendRequest overwrote dst")
			}
			frame, err := ReadFrame(bytes.NewReader(wire[6:]), nil, DefaultMaxFrame)
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			if len(frame) != len(wire)-6-4 {
				t.Fatalf("frame is %d bytes, want %d", len(frame), len(wire)-10)
			}
			got, err := DecodeRequest(frame)
			if err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if !reflect.DeepEqual(canonRequest(got), canonRequest(tc.req)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.req)
			}
			// Decoded strings and data are copies: reusing the frame buffer
			// must not change them.
			for i := range frame {
				frame[i] = 0xAA
			}
			if !reflect.DeepEqual(canonRequest(got), canonRequest(tc.req)) {
				t.Fatalf("decoded request aliases the frame buffer: %+v", got)
			}
		})
	}
}

func TestResponseRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		op   Op
		resp Response
	}{
		{"ping ok", OpPing, Response{ID: 1}},
		{"restore found", OpRestore, Response{ID: 2, Found: true, Data: []byte(`{"a":1}`)}},
		{"restore not found", OpRestore, Response{ID: 3}},
		{"restore found empty", OpRestore, Response{ID: 4, Found: true, Data: []byte(`{}`)}},
		{"save ok", OpSave, Response{ID: 5}},
		{"patch ok", OpPatch, Response{ID: 6}},
		{"delete ok", OpDelete, Response{ID: 7}},
		{"touch ok", OpTouch, Response{ID: 8}},
		{"admin ok", OpAdmin, Response{ID: 9, Data: []byte(`{"leader":"a:1"}`)}},
		{"not leader with hint", OpSave, Response{ID: 10, Err: &Error{Code: CodeNotLeader, Message: "not the leader", Leader: "10.0.0.1:3001"}}},
		{"restore error", OpRestore, Response{ID: 11, Err: &Error{Code: CodeTimeout, Message: "read timed out"}}},
		{"error without message", OpPing, Response{ID: 12, Err: &Error{Code: CodeOverloaded}}},
		{"unknown code", OpPing, Response{ID: 13, Err: &Error{Code: Code(200), Message: "future"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wire := AppendResponse(nil, tc.op, &tc.resp)
			frame, err := ReadFrame(bytes.NewReader(wire), nil, DefaultMaxFrame)
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			got, err := DecodeResponse(frame, tc.op)
			if err != nil {
				t.Fatalf("DecodeResponse: %v", err)
			}
			if !reflect.DeepEqual(canonResponse(got), canonResponse(tc.resp)) {
				t.Fatalf("round trip:\n got %+v (err %+v)\nwant %+v (err %+v)", got, got.Err, tc.resp, tc.resp.Err)
			}
		})
	}
}

func TestDecodeRequestMalformed(t *testing.T) {
	frame := func(id uint64, op Op, body ...byte) []byte {
		f := binary.BigEndian.AppendUint64(nil, id)
		f = append(f, byte(op))
		return append(f, body...)
	}
	cases := []struct {
		name   string
		frame  []byte
		wantID uint64
		msg    string
	}{
		{"empty", nil, 0, "shorter than the header"},
		{"short header", []byte{0, 0, 0, 0, 0, 0, 0, 1}, 0, "shorter than the header"},
		{"unknown op", frame(5, Op(99)), 5, "unknown op 99"},
		{"op zero", frame(6, Op(0)), 6, "unknown op 0"},
		{"ping with a body", frame(7, OpPing, 1), 7, "1 unexpected bytes after the ping request"},
		{"restore without consistency", frame(8, OpRestore), 8, "truncated"},
		{"restore without sid", frame(9, OpRestore, 0), 9, "bad length"},
		{"restore bad consistency", frame(10, OpRestore, 9, 1, 'a'), 10, "unknown consistency 9"},
		{"sid length past end", frame(11, OpDelete, withNonce(5, 'a')...), 11, "length 5 exceeds the 1 bytes left"},
		{"huge sid length", frame(12, OpTouch, withNonce(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)...), 12, "length"},
		{"varint overflow", frame(13, OpTouch, withNonce(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)...), 13, "bad length"},
		{"delete trailing bytes", frame(14, OpDelete, withNonce(1, 'a', 'b', 'c')...), 14, "2 unexpected bytes"},
		{"patch huge set count", frame(15, OpPatch, withNonce(1, 'p', 0xff, 0xff, 0x03)...), 15, "count"},
		{"patch truncated set", frame(16, OpPatch, withNonce(1, 'p', 1, 1, 'k')...), 16, "bad length"},
		{"patch missing del count", frame(17, OpPatch, withNonce(1, 'p', 0)...), 17, "bad length"},
		{"write without its nonce", frame(19, OpSave, 1, 2, 3), 19, "nonce"},
		{"patch huge del count", frame(18, OpPatch, withNonce(1, 'p', 0, 0x7f)...), 18, "count"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := DecodeRequest(tc.frame)
			if err == nil {
				t.Fatalf("DecodeRequest = %+v, want an error", req)
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest {
				t.Fatalf("error %#v is not a CodeBadRequest *Error", err)
			}
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("errors.Is(%v, ErrBadRequest) = false", err)
			}
			if !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("message %q does not mention %q", e.Message, tc.msg)
			}
			if req.ID != tc.wantID {
				t.Fatalf("ID = %d, want %d (the id must survive a bad body)", req.ID, tc.wantID)
			}
		})
	}
}

// TestDecodeRequestTruncated cuts every sample frame at every length.
func TestDecodeRequestTruncated(t *testing.T) {
	for _, tc := range sampleRequests() {
		t.Run(tc.name, func(t *testing.T) {
			full := AppendRequest(nil, &tc.req)[4:]
			for n := 0; n < len(full); n++ {
				got, err := DecodeRequest(full[:n:n])
				switch {
				case err == nil && (tc.req.Op == OpSave || tc.req.Op == OpAdmin):
					// Their data runs to the end of the frame: a shorter
					// frame is a shorter body, which is well-formed.
				case err == nil:
					t.Fatalf("prefix %d/%d decoded to %+v", n, len(full), got)
				case !errors.Is(err, ErrBadRequest):
					t.Fatalf("prefix %d/%d: %v is not ErrBadRequest", n, len(full), err)
				}
			}
		})
	}
}

func TestDecodeResponseMalformed(t *testing.T) {
	cases := []struct {
		name  string
		frame []byte
		op    Op
	}{
		{"empty", nil, OpPing},
		{"short", []byte{1, 2, 3}, OpPing},
		{"restore missing found byte", binary.BigEndian.AppendUint64(nil, 1), OpRestore},
		{"error missing message", append(binary.BigEndian.AppendUint64(nil, 1), byte(CodeInternal)), OpSave},
		{"error message past end", append(binary.BigEndian.AppendUint64(nil, 1), byte(CodeInternal), 9, 'x'), OpSave},
		{"error trailing bytes", append(binary.BigEndian.AppendUint64(nil, 1), byte(CodeInternal), 0, 0, 'x'), OpSave},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.frame
			if tc.name == "restore missing found byte" {
				frame = append(frame, byte(CodeOK))
			}
			resp, err := DecodeResponse(frame, tc.op)
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("DecodeResponse = %+v, %v; want ErrBadRequest", resp, err)
			}
		})
	}
}

func TestReadFrame(t *testing.T) {
	ping := AppendRequest(nil, &Request{ID: 77, Op: OpPing})
	big := AppendRequest(nil, &Request{ID: 88, Op: OpSave, SID: "s", Data: bytes.Repeat([]byte("x"), 100)})
	cases := []struct {
		name    string
		in      []byte
		max     int
		wantLen int
		check   func(t *testing.T, err error)
	}{
		{name: "ok", in: ping, max: 64, wantLen: 9},
		{name: "ok exactly at max", in: big, max: len(big) - 4, wantLen: len(big) - 4},
		{name: "too large", in: big, max: len(big) - 5, check: func(t *testing.T, err error) {
			var tl *FrameTooLargeError
			if !errors.As(err, &tl) || !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("err = %v, want a *FrameTooLargeError", err)
			}
			if tl.ID != 88 || int(tl.Size) != len(big)-4 || tl.Max != len(big)-5 {
				t.Fatalf("FrameTooLargeError = %+v", tl)
			}
			if !strings.Contains(tl.Error(), "exceeds the limit") {
				t.Fatalf("message %q", tl.Error())
			}
		}},
		{name: "too large header only", in: []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 9}, max: 1 << 20, check: func(t *testing.T, err error) {
			var tl *FrameTooLargeError
			if !errors.As(err, &tl) || tl.ID != 9 || tl.Size != 0xffffffff {
				t.Fatalf("err = %v, want a *FrameTooLargeError for id 9", err)
			}
		}},
		{name: "too large truncated id", in: []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, max: 10, check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
			}
		}},
		{name: "shorter than header", in: []byte{0, 0, 0, 3, 1, 2, 3}, max: 64, check: func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "shorter than its 9-byte header") {
				t.Fatalf("err = %v", err)
			}
		}},
		{name: "zero length", in: []byte{0, 0, 0, 0}, max: 64, check: func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "shorter") {
				t.Fatalf("err = %v", err)
			}
		}},
		{name: "eof", in: nil, max: 64, check: func(t *testing.T, err error) {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("err = %v, want io.EOF", err)
			}
		}},
		{name: "truncated prefix", in: []byte{0, 0}, max: 64, check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
			}
		}},
		{name: "truncated body", in: ping[:len(ping)-1], max: 64, check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
			}
		}},
		{name: "body missing entirely", in: ping[:4], max: 64, check: func(t *testing.T, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame, err := ReadFrame(iotest.OneByteReader(bytes.NewReader(tc.in)), nil, tc.max)
			if tc.check != nil {
				if frame != nil {
					t.Errorf("frame = %x alongside an error", frame)
				}
				tc.check(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(frame) != tc.wantLen {
				t.Fatalf("frame is %d bytes, want %d", len(frame), tc.wantLen)
			}
		})
	}
}

func TestReadFrameReusesBuffer(t *testing.T) {
	var stream []byte
	for i := range 3 {
		stream = AppendRequest(stream, &Request{ID: uint64(i), Op: OpDelete, SID: "sid"})
	}
	r := bytes.NewReader(stream)
	buf := make([]byte, 0, 64)
	for i := range 3 {
		frame, err := ReadFrame(r, buf, 64)
		if err != nil {
			t.Fatal(err)
		}
		if &frame[0] != &buf[:1][0] {
			t.Fatal("ReadFrame did not reuse a big enough buffer")
		}
		req, err := DecodeRequest(frame)
		if err != nil || req.ID != uint64(i) || req.SID != "sid" {
			t.Fatalf("frame %d: %+v, %v", i, req, err)
		}
	}
	if _, err := ReadFrame(r, buf, 64); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestOpAndConsistencyStrings(t *testing.T) {
	for v, want := range map[Op]string{OpPing: "ping", OpRestore: "restore", OpSave: "save", OpPatch: "patch",
		OpDelete: "delete", OpTouch: "touch", OpAdmin: "admin", Op(0): "op(0)"} {
		if v.String() != want {
			t.Errorf("Op(%d) = %q, want %q", byte(v), v.String(), want)
		}
	}
	for v, want := range map[Consistency]string{Default: "default", Linearizable: "linearizable", Leader: "leader",
		Stale: "stale", AtIndex: "at-index", Consistency(9): "consistency(9)"} {
		if v.String() != want {
			t.Errorf("Consistency(%d) = %q, want %q", byte(v), v.String(), want)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, tc := range sampleRequests() {
		f.Add(AppendRequest(nil, &tc.req)[4:])
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, byte(OpPatch), 1, 'p', 0xff, 0xff, 0x03})
	f.Fuzz(func(t *testing.T, frame []byte) {
		req, err := DecodeRequest(frame)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("DecodeRequest(%x): %v is not ErrBadRequest", frame, err)
			}
			return
		}
		// What decodes re-encodes to something that decodes the same.
		wire := AppendRequest(nil, &req)
		again, err := ReadFrame(bytes.NewReader(wire), nil, len(wire))
		if err != nil {
			t.Fatalf("re-encoded %+v does not frame: %v", req, err)
		}
		req2, err := DecodeRequest(again)
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", req, err)
		}
		if !reflect.DeepEqual(canonRequest(req), canonRequest(req2)) {
			t.Fatalf("re-encode changed the request:\n got %+v\nwant %+v", req2, req)
		}
		// The same bytes read as a response never panic either.
		for op := Op(0); op <= OpAdmin+1; op++ {
			_, _ = DecodeResponse(frame, op)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	var stream []byte
	for _, tc := range sampleRequests() {
		stream = AppendRequest(stream, &tc.req)
	}
	f.Add(stream, uint16(64))
	f.Add(stream, uint16(4096))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8}, uint16(16))
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3}, uint16(16))
	f.Add(AppendResponse(nil, OpRestore, &Response{ID: 1, Found: true, Data: []byte(`{}`)}), uint16(64))
	f.Fuzz(func(t *testing.T, in []byte, max uint16) {
		r := bytes.NewReader(in)
		var buf []byte
		for {
			frame, err := ReadFrame(r, buf, int(max))
			if err != nil {
				return
			}
			if len(frame) < frameHeader-4 || len(frame) > int(max) {
				t.Fatalf("ReadFrame returned %d bytes with max %d", len(frame), max)
			}
			_, _ = DecodeRequest(frame)
			for op := Op(0); op <= OpAdmin+1; op++ {
				_, _ = DecodeResponse(frame, op)
			}
			buf = frame
		}
	})
}

// withNonce prefixes a write request's body with a zero nonce.
func withNonce(body ...byte) []byte { return append(make([]byte, len(Nonce{})), body...) }

// TestReadFrameMemoryFollowsTheBytes: a large frame is read whole, in
// pieces as they come, and a header alone (a frame of max bytes announced,
// then nothing) costs the reader no more than the bytes that came: taken at
// the header's word, connections sending headers alone held max bytes each.
func TestReadFrameMemoryFollowsTheBytes(t *testing.T) {
	const max = 8 << 20
	big := Request{ID: 7, Op: OpSave, SID: "s", Data: bytes.Repeat([]byte("y"), max-1024)}
	wire := AppendRequest(nil, &big)
	frame, err := ReadFrame(iotest.HalfReader(bytes.NewReader(wire)), nil, max)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRequest(frame)
	if err != nil || got.ID != 7 || !bytes.Equal(got.Data, big.Data) {
		t.Fatalf("a %d-byte frame read in pieces: id %d, %d bytes of data, %v", len(wire), got.ID, len(got.Data), err)
	}

	header := wire[:4+64<<10] // the header and 64 KiB, then the connection ends
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = ReadFrame(bytes.NewReader(header), nil, max)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a frame cut short: %v, want io.ErrUnexpectedEOF", err)
	}
	if took := after.TotalAlloc - before.TotalAlloc; took > 1<<20 {
		t.Fatalf("reading 64 KiB of a frame announcing %d bytes allocated %d bytes", max, took)
	}
}

// TestDecodePatchCountClaimsNoMemory: a patch frame's key counts claim
// what they like; the decoder's allocations follow the keys that are there.
// A 2 MB frame claiming 2M keys (and holding none) had 80 MB allocated:
// four connections sending such frames took a node to 750 MB.
func TestDecodePatchCountClaimsNoMemory(t *testing.T) {
	const claimed = 1 << 20
	frame := binary.BigEndian.AppendUint64(nil, 1)
	frame = append(frame, byte(OpPatch))
	frame = append(frame, make([]byte, 16)...) // nonce
	frame = appendString(frame, "sid")
	frame = binary.AppendUvarint(frame, claimed)
	frame = append(frame, bytes.Repeat([]byte{0xff}, claimed)...) // room the count check wants; no key
	allocs := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := DecodeRequest(frame); err == nil {
				b.Fatal("a patch claiming keys it does not hold decoded")
			}
		}
	})
	if per := allocs.AllocedBytesPerOp(); per > 4<<20 {
		t.Fatalf("decoding a %d KiB frame that claims %d keys allocated %d MiB", len(frame)>>10, claimed, per>>20)
	}
}

// TestPatchOverMaxKeysRefusedBeforeDecoding: with ServerConfig.MaxKeys, a
// patch frame counting more keys than a session may hold is refused with
// CodeTooLarge as soon as its count is read, and the connection goes on. A
// 2 MB frame of a million empty keys cost the node about 80 MB of
// allocations (40 MB held) before the node refused it for --max-keys.
func TestPatchOverMaxKeysRefusedBeforeDecoding(t *testing.T) {
	const keys = 1 << 20
	empty := make([]KV, keys)
	for _, tc := range []struct {
		name string
		req  Request
		want string
	}{
		{"set", Request{ID: 1, Op: OpPatch, SID: "s", Set: empty}, "the patch sets 1048576 keys; a session holds at most 1024"},
		{"del", Request{ID: 1, Op: OpPatch, SID: "s", Del: make([]string, keys)}, "the patch deletes 1048576 keys; a session holds at most 1024"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, newMemHandler(), ServerConfig{MaxFrame: 4 << 20, MaxKeys: 1024})
			c := dialNative(t, ts.addr)
			wire := AppendRequest(nil, &tc.req)
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if _, err := c.c.Write(wire); err != nil {
				t.Fatal(err)
			}
			resp := c.recv()
			runtime.ReadMemStats(&after)
			// Reading the frame takes about three times its size (the
			// buffer grows as the bytes come); decoding it took 40 times.
			took := after.TotalAlloc - before.TotalAlloc
			t.Logf("a %d KiB frame of %d keys: %d KiB allocated", len(wire)>>10, keys, took>>10)
			if took > 6*uint64(len(wire)) {
				t.Fatalf("refusing a %d KiB frame of %d keys allocated %d MiB", len(wire)>>10, keys, took>>20)
			}
			if resp.Err == nil || resp.Err.Code != CodeTooLarge || resp.Err.Message != tc.want {
				t.Fatalf("a patch of %d keys over a limit of 1024: %+v, want CodeTooLarge %q", keys, resp.Err, tc.want)
			}
			ok := c.call(Request{ID: 2, Op: OpPatch, SID: "s", Set: []KV{{Key: "a", Value: []byte("1")}}})
			if ok.Err != nil {
				t.Fatalf("a patch of one key after the refused one: %v", ok.Err)
			}
		})
	}
}
