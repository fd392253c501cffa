package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// serveKado answers one Kado JSON request: read to the client's half-close
// (bounded in size and time), decode, serve, reply, close.
func (s *Server) serveKado(c net.Conn, first byte) {
	if !mayStartJSON(first) {
		s.refuseForeign(c, first)
		return
	}
	deadline := time.Now().Add(s.cfg.ReadTimeout)
	_ = c.SetReadDeadline(deadline)
	doc, err := readAll(c, first, s.cfg.MaxFrame)
	reply := func(b []byte) {
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
		_, _ = c.Write(b)
	}
	switch {
	case errors.Is(err, errDocTooLarge):
		reply(KadoError(fmt.Sprintf("request too large: the limit is %d bytes (the node's --max-frame, which follows --max-session-size)", s.cfg.MaxFrame)))
		lingerAfterReply(c, 64<<20) // the read deadline bounds how long this takes
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		reply(KadoError(fmt.Sprintf("incomplete request: no end of request within %s (send one JSON document, then half-close the connection)", s.cfg.ReadTimeout)))
		return
	case err != nil:
		return // the client went away; nobody to answer
	}
	req, err := DecodeKado(doc)
	if err == nil && !TokenMatches(s.cfg.Token, req.Token) {
		err = errTokenRequired
	}
	if err != nil {
		reply(KadoError(err.Error()))
		return
	}
	ctx, cancel := context.WithTimeout(context.WithValue(s.ctx, kadoRequestKey{}, true), s.cfg.RequestTimeout)
	defer cancel()
	switch req.Op {
	case OpSave:
		if err = s.h.Save(ctx, req.SID, req.Data); err == nil {
			reply(KadoOK)
		}
	case OpRestore:
		var data []byte
		if data, _, err = s.h.Restore(ctx, req.SID, Default); err == nil {
			reply(KadoResult(data))
		}
	}
	if err != nil {
		reply(KadoError(err.Error()))
	}
}

var errDocTooLarge = errors.New("document too large")

// mayStartJSON reports whether b may begin a JSON document (after
// optional whitespace): what every Kado request does.
func mayStartJSON(b byte) bool {
	switch b {
	case '{', '[', '"', '-', 't', 'f', 'n', ' ', '\t', '\r', '\n':
		return true
	}
	return b >= '0' && b <= '9'
}

// refuseForeign answers, at once, a client whose first byte no request of
// ours begins with: an HTTP client (curl, a browser, a health check
// pointed at the wrong port) or a Redis one waited for the read timeout
// before it heard anything. HTTP gets an HTTP answer it can show; anything
// else a Kado JSON error.
func (s *Server) refuseForeign(c net.Conn, first byte) {
	msg := "this is a kadosession node's port: it speaks Kado JSON (one JSON document, then half-close) and kadosession's native protocol (the Go client); " +
		"its HTTP endpoints (/metrics, /healthz, /readyz, /status) are on the port given by --http"
	_ = c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
	if strings.IndexByte("GPHDOCT", first) >= 0 { // an HTTP method: GET, POST, PUT, HEAD, DELETE, OPTIONS, CONNECT, TRACE, PATCH
		body := msg + "\n"
		_, _ = fmt.Fprintf(c, "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	} else {
		_, _ = c.Write(KadoError(fmt.Sprintf("not valid JSON: a Kado request is one JSON document, and this one begins with %q; %s", first, msg)))
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	lingerAfterReply(c, 64<<10)
}

// lingerAfterReply ends c's sending side and reads (up to max bytes,
// within c's read deadline) what the client still sends, so that it reads
// the reply: closed with its request unread here, the connection would be
// reset, and the reply lost with it.
func lingerAfterReply(c net.Conn, max int64) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, max))
}

// readAll reads to EOF, the first byte already consumed, refusing more than
// max bytes in all.
func readAll(r io.Reader, first byte, max int) ([]byte, error) {
	buf := make([]byte, 1, 512)
	buf[0] = first
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > max {
			return nil, errDocTooLarge
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// serveNative serves a native connection: frames are read in order, served
// concurrently (at most MaxInflight at a time) and answered as they finish,
// matched by request id.
// tracked is the connection as accepted (c may be a TLS connection over
// it), the key under which InFlight counts its requests.
func (s *Server) serveNative(c, tracked net.Conn, peer bool, rt rights) {
	r := bufio.NewReaderSize(c, 64<<10)
	w := newFrameWriter(c, s.cfg.ReadTimeout)

	version, err := r.ReadByte()
	if err != nil {
		return
	}
	if version != VersionNative {
		w.send(OpPing, &Response{Err: Errorf(CodeBadRequest, "unsupported native protocol version %d; this node speaks %d", version, VersionNative)})
		return
	}
	inflight := make(chan struct{}, s.cfg.MaxInflight)
	s.setLoad(tracked, func(l *connLoad) { l.inflight = inflight })
	var wg sync.WaitGroup
	defer wg.Wait()
	// Restores read together are served together (serveRestores): one
	// worker and one write for all of them instead of one each.
	var group []arrivedRequest // from restoreGroups
	maxGroup := min(maxRestoreGroup, s.cfg.MaxInflight)
	dispatch := func() {
		if len(group) > 0 {
			wg.Add(1)
			g, rt := group, rt
			s.workers.run(func() { defer wg.Done(); s.serveRestores(w, g, rt, inflight, &wg) })
			group = nil
		}
	}
	defer dispatch()
	// A connection that must present the token has ReadTimeout from its
	// start to do so, not IdleTimeout per wait: without it, clients that
	// knew no token held every one of MaxConns' slots for 5 minutes with
	// two bytes each ("N", the version), and the node refused the clients
	// that had the token.
	var authBy time.Time
	if rt == rightsNone {
		authBy = time.Now().Add(s.cfg.ReadTimeout)
	}
	var buf []byte
	for {
		if w.broken() {
			// Its write failed (a client that reads nothing): frames still
			// in the read buffer (a 64 KiB one holds 1400 restores) were
			// served into a queue nobody would read, 1.3 GB of copies of a
			// 1 MB session.
			return
		}
		if !frameBuffered(r) {
			dispatch()
		}
		if r.Buffered() == 0 {
			idle := s.cfg.IdleTimeout
			if len(inflight) > 0 {
				idle = max(idle, s.cfg.RequestTimeout)
			}
			deadline := time.Now().Add(idle)
			if rt == rightsNone {
				deadline = authBy
			}
			_ = c.SetReadDeadline(deadline)
			if _, err := r.Peek(1); err != nil {
				if rt == rightsNone && errors.Is(err, os.ErrDeadlineExceeded) {
					w.send(OpAuth, &Response{Err: errTokenRequired})
				}
				return
			}
		}
		// Every frame gets ReadTimeout from here, also when the buffer
		// already holds its start: a busy pipelined stream may never leave
		// the buffer empty, and must not inherit an old deadline.
		if rt != rightsNone {
			_ = c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		} else {
			_ = c.SetReadDeadline(authBy)
		}
		frame, err := ReadFrame(r, buf, s.cfg.MaxFrame)
		if err != nil {
			var tooLarge *FrameTooLargeError
			switch {
			case errors.As(err, &tooLarge):
				w.send(OpPing, &Response{ID: tooLarge.ID, Err: Errorf(CodeTooLarge, "request refused: %v (the node's --max-frame, which follows --max-session-size)", err)})
				// A frame within a few times the limit is skipped and the
				// connection goes on: it carries other requests (a client
				// pool's), which failed with it when it was closed. A
				// larger one, or one whose body does not come, ends it.
				if int64(tooLarge.Size) <= skipFrames*int64(s.cfg.MaxFrame) {
					if _, err := io.CopyN(io.Discard, r, int64(tooLarge.Size)-8); err == nil {
						continue
					}
				}
			case errors.Is(err, os.ErrDeadlineExceeded):
				w.send(OpPing, &Response{Err: Errorf(CodeTimeout, "incomplete frame: the rest did not arrive within %s", s.cfg.ReadTimeout)})
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			default:
				w.send(OpPing, &Response{Err: Errorf(CodeBadRequest, "%v", err)})
			}
			return
		}
		buf = frame
		req, err := decodeRequest(frame, s.cfg.MaxKeys)
		if err != nil {
			w.send(req.Op, &Response{ID: req.ID, Err: AsError(err)})
			continue
		}
		if req.Op == OpAuth {
			if rt = s.authenticate(string(req.Data), peer); rt == rightsNone {
				w.send(OpAuth, &Response{ID: req.ID, Err: errTokenRequired})
				return
			}
			w.send(OpAuth, &Response{ID: req.ID})
			continue
		}
		if rt == rightsNone {
			w.send(req.Op, &Response{ID: req.ID, Err: errTokenRequired})
			continue
		}
		if req.Op == OpPing {
			w.send(OpPing, &Response{ID: req.ID})
			continue
		}
		select {
		case inflight <- struct{}{}:
		default:
			dispatch() // the group holds slots: let it run before waiting for one
			inflight <- struct{}{}
		}
		if req.Op == OpRestore {
			if group == nil {
				group = (*restoreGroups.Get().(*[]arrivedRequest))[:0]
			}
			group = append(group, arrivedRequest{req, time.Now()})
			if len(group) == maxGroup {
				dispatch()
			}
			continue
		}
		// Only here does the request go to the heap: restores, the common
		// case, are kept by value in their group.
		ar := &arrivedRequest{req, time.Now()}
		wg.Add(1)
		rt := rt
		s.workers.run(func() { defer wg.Done(); s.answer(w, ar, rt, inflight) })
	}
}

// skipFrames is how many times MaxFrame a refused frame may be and still be
// read past, keeping its connection.
const skipFrames = 8

// answer serves req, sends its answer and frees its in-flight slot.
func (s *Server) answer(w *frameWriter, req *arrivedRequest, rt rights, inflight chan struct{}) {
	w.send(req.Op, s.handle(&req.Request, rt, req.arrived))
	<-inflight
}

// arrivedRequest is a request and when it was read.
type arrivedRequest struct {
	Request
	arrived time.Time
}

// maxRestoreGroup is the most restores one worker serves in a row.
const maxRestoreGroup = 32

// restoreGroups holds group slices for serveNative to reuse.
var restoreGroups = sync.Pool{New: func() any {
	g := make([]arrivedRequest, 0, maxRestoreGroup)
	return &g
}}

// restoreGroupWait is how long a restore group is served in line before
// what is left of it is handed to workers of their own (a variable for
// tests).
var restoreGroupWait = time.Millisecond

// serveRestores serves restores that were read together, one after
// another, and writes their responses at once. A linearizable read waits
// for a confirmation round that started after it arrived (Arrived); the
// group's first read waits for one, and the others, which arrived before it
// started, are served by the same round without waiting (cluster's rounds).
// A read that has to wait longer (a follower forwarding it, a node waiting
// for a leader) must not hold up the others: after restoreGroupWait, the
// ones not started yet are handed to workers of their own. Each request
// holds one of inflight's slots until its answer is queued.
func (s *Server) serveRestores(w *frameWriter, group []arrivedRequest, rt rights, inflight chan struct{}, wg *sync.WaitGroup) {
	if len(group) == 1 {
		s.answer(w, &group[0], rt, inflight)
		putGroup(group)
		return
	}
	var mu sync.Mutex
	next := 0 // the first request not started
	late := time.AfterFunc(restoreGroupWait, func() {
		mu.Lock()
		rest := group[next:]
		if len(rest) == 0 {
			mu.Unlock()
			return
		}
		next = len(group)
		wg.Add(len(rest)) // before the group's worker can see next and finish
		mu.Unlock()
		for i := range rest {
			s.workers.run(func() { defer wg.Done(); s.answer(w, &rest[i], rt, inflight) })
		}
		w.flush() // the answers queued so far
	})
	defer w.flush()
	for {
		mu.Lock()
		i := next
		if i == len(group) {
			mu.Unlock()
			if late.Stop() {
				putGroup(group) // not handed to other workers: free to reuse
			}
			return
		}
		next++
		mu.Unlock()
		w.queue(OpRestore, s.handle(&group[i].Request, rt, group[i].arrived))
		<-inflight
	}
}

// putGroup returns a group nobody uses any more to restoreGroups.
func putGroup(g []arrivedRequest) {
	clear(g) // drop the requests' data and strings
	g = g[:0]
	restoreGroups.Put(&g)
}

// frameBuffered reports whether r holds a whole frame, so that reading it
// will not wait for the network.
func frameBuffered(r *bufio.Reader) bool {
	if r.Buffered() < 4 {
		return false
	}
	hdr, _ := r.Peek(4)
	return r.Buffered() >= 4+int(binary.BigEndian.Uint32(hdr))
}

// handle serves one request, read off its connection at arrived.
func (s *Server) handle(req *Request, rt rights, arrived time.Time) *Response {
	// The request's info, its context and its response in one allocation
	// (three were a quarter of a busy node's allocations).
	h := &handling{info: requestInfo{peer: rt == rightsPeer, admin: rt >= rightsAdmin, nonce: req.Nonce, arrived: arrived}, resp: Response{ID: req.ID}}
	info := &h.info
	if req.Op == OpRestore && req.Consistency == AtIndex {
		info.index, info.atIndex = req.Index, true
	}
	h.ctx = infoCtx{Context: s.requestContext(arrived), info: info}
	ctx := &h.ctx
	resp := &h.resp
	var err error
	switch req.Op {
	case OpRestore:
		resp.Data, resp.Found, err = s.h.Restore(ctx, req.SID, req.Consistency)
	case OpSave:
		err = s.h.Save(ctx, req.SID, req.Data)
	case OpPatch:
		err = s.h.Patch(ctx, req.SID, req.Set, req.Del, req.IfExists)
	case OpDelete:
		err = s.h.Delete(ctx, req.SID)
	case OpTouch:
		err = s.h.Touch(ctx, req.SID)
	case OpAdmin:
		resp.Data, err = s.h.Admin(ctx, req.Data)
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrTimeout) {
			err = &Error{Code: CodeTimeout, Message: fmt.Sprintf("%s timed out after %s: %v", req.Op, s.cfg.RequestTimeout, err)}
		}
		return &Response{ID: req.ID, Err: AsError(err)}
	}
	info.mu.Lock()
	resp.Leader = info.hint
	info.mu.Unlock()
	return resp
}

// requestInfo is what a native request's context carries, in one value.
type requestInfo struct {
	peer    bool
	admin   bool // may ask admin requests (AdminAllowed)
	atIndex bool
	index   uint64
	nonce   Nonce
	arrived time.Time

	mu   sync.Mutex // hint may be set by any goroutine serving the request
	hint string
}

type requestInfoKey struct{}

// handling is what handle allocates for one request.
type handling struct {
	info requestInfo
	ctx  infoCtx
	resp Response
}

// infoCtx is a request's context: context.WithValue's, carrying its
// requestInfo, without an allocation of its own.
type infoCtx struct {
	context.Context
	info *requestInfo
}

func (c *infoCtx) Value(key any) any {
	if key == (requestInfoKey{}) {
		return c.info
	}
	return c.Context.Value(key)
}

func infoOf(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

// ReadIndex returns the index of the native AtIndex restore ctx belongs
// to, and whether it is one.
func ReadIndex(ctx context.Context) (uint64, bool) {
	if info := infoOf(ctx); info != nil && info.atIndex {
		return info.index, true
	}
	return 0, false
}

// RequestNonce returns the nonce of the native write request ctx belongs
// to, and whether it had one.
func RequestNonce(ctx context.Context) (Nonce, bool) {
	if info := infoOf(ctx); info != nil && info.nonce != (Nonce{}) {
		return info.nonce, true
	}
	return Nonce{}, false
}

// FromPeer reports whether ctx belongs to a request that arrived on a peer
// connection (MagicPeer): one node forwarding to another. A node that is not
// the leader answers such requests itself rather than forwarding again.
func FromPeer(ctx context.Context) bool {
	info := infoOf(ctx)
	return info != nil && info.peer
}

// AdminAllowed reports whether ctx may ask admin requests (membership
// changes, backups and restores): false only for a native request whose
// connection presented the client token where ServerConfig.PeerToken sets
// admin requests apart. Calls made in-process may.
func AdminAllowed(ctx context.Context) bool {
	info := infoOf(ctx)
	return info == nil || info.admin
}

// FromKado reports whether ctx belongs to a Kado JSON request this
// server read (not a call made in-process, which RequestProtocol counts
// with them).
func FromKado(ctx context.Context) bool {
	v, _ := ctx.Value(kadoRequestKey{}).(bool)
	return v
}

type kadoRequestKey struct{}

// Arrived returns when the native request ctx belongs to was read off its
// connection (at the latest), or the zero time outside one. A
// linearizable read may be served by any confirmation of leadership that
// started after then: reads that arrived together need only one.
func Arrived(ctx context.Context) time.Time {
	if info := infoOf(ctx); info != nil {
		return info.arrived
	}
	return time.Time{}
}

// SetLeaderHint tells the native client whose request ctx belongs to that
// the leader is at addr: a Handler calls it when it served the request by
// forwarding it there, and the successful response carries the address.
// Outside a native request it does nothing.
func SetLeaderHint(ctx context.Context, addr string) {
	if info := infoOf(ctx); info != nil {
		info.mu.Lock()
		info.hint = addr
		info.mu.Unlock()
	}
}

// frameWriter serialises responses onto one connection, flushing when no
// more are queued so that pipelined responses share system calls.
type frameWriter struct {
	c       net.Conn
	timeout time.Duration
	mu      sync.Mutex
	buf     []byte
	spare   []byte // the other buffer, while one is written
	pending bool
	failed  bool
	room    sync.Cond   // signalled when a write takes the queue, or fails
	dead    atomic.Bool // failed, read without the lock
}

func newFrameWriter(c net.Conn, timeout time.Duration) *frameWriter {
	w := &frameWriter{c: c, timeout: timeout}
	w.room.L = &w.mu
	return w
}

// broken reports whether a write failed: the connection is closed, and
// what is left in its read buffer is not worth serving.
func (w *frameWriter) broken() bool { return w.dead.Load() }

// maxQueued bounds the responses queued behind a write in progress: a
// response that would add to a longer queue waits until the write takes
// it (or fails), holding its request's in-flight slot, so a client that
// pipelines requests and reads no answers stops being read. Without it the
// queue grew for as long as the write could wait (ReadTimeout): one
// connection pipelining restores of a 1 MB session buffered 1.3 GB.
const maxQueued = 1 << 20

// waitRoom waits, w.mu held, until the queue has room or nobody is
// writing it out (then the caller's own write will).
func (w *frameWriter) waitRoom() {
	for len(w.buf) >= maxQueued && w.pending && !w.failed {
		w.room.Wait()
	}
}

// send queues one response and writes out the queue unless another
// goroutine already is.
func (w *frameWriter) send(op Op, resp *Response) {
	w.mu.Lock()
	w.waitRoom()
	if w.failed { // the connection is gone: nobody will read it
		w.mu.Unlock()
		return
	}
	w.buf = AppendResponse(w.buf, op, resp)
	if w.pending {
		w.mu.Unlock()
		return
	}
	w.pending = true
	// Let the other responses finishing now (a group commit answers many
	// at once) join this write: one system call for all of them.
	w.mu.Unlock()
	runtime.Gosched()
	w.writeOut()
}

// queue adds one response to the queue without writing it: flush does.
func (w *frameWriter) queue(op Op, resp *Response) {
	w.mu.Lock()
	w.waitRoom()
	if w.failed {
		w.mu.Unlock()
		return
	}
	w.buf = AppendResponse(w.buf, op, resp)
	full := len(w.buf) >= maxQueued
	w.mu.Unlock()
	if full {
		w.flush()
	}
}

// flush writes out the queue unless another goroutine already is.
func (w *frameWriter) flush() {
	w.mu.Lock()
	if w.pending || len(w.buf) == 0 {
		w.mu.Unlock()
		return
	}
	w.pending = true
	w.mu.Unlock()
	w.writeOut()
}

// writeOut writes until the queue is empty; the caller set pending.
func (w *frameWriter) writeOut() {
	w.mu.Lock()
	for len(w.buf) > 0 && !w.failed {
		// Responses queued during the write go to the spare buffer, so
		// neither is grown afresh for every write.
		out := w.buf
		w.buf, w.spare = w.spare[:0], nil
		w.room.Broadcast()
		w.mu.Unlock()
		_ = w.c.SetWriteDeadline(time.Now().Add(w.timeout))
		_, err := w.c.Write(out)
		w.mu.Lock()
		if err != nil {
			w.failed = true
			w.dead.Store(true)
			w.c.Close()
		}
		if cap(out) <= maxSpare {
			w.spare = out[:0]
		}
	}
	w.buf = w.buf[:0]
	w.pending = false
	w.room.Broadcast()
	w.mu.Unlock()
}

// maxSpare is the largest write buffer a connection keeps for the next.
const maxSpare = 256 << 10
