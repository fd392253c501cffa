package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

// serveKado answers one Kado JSON request: read to the client's half-close
// (bounded in size and time), decode, serve, reply, close.
func (s *Server) serveKado(c net.Conn, first byte) {
	deadline := time.Now().Add(s.cfg.ReadTimeout)
	_ = c.SetReadDeadline(deadline)
	doc, err := readAll(c, first, s.cfg.MaxFrame)
	reply := func(b []byte) {
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
		_, _ = c.Write(b)
	}
	switch {
	case errors.Is(err, errDocTooLarge):
		reply(KadoError(fmt.Sprintf("request too large: the limit is %d bytes", s.cfg.MaxFrame)))
		// Let the client finish sending so it reads the reply rather than a
		// reset; the read deadline still bounds how long this takes.
		if tc, ok := c.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<20))
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
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
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
func (s *Server) serveNative(c net.Conn, peer, authed bool) {
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
	var wg sync.WaitGroup
	defer wg.Wait()
	var buf []byte
	for {
		if r.Buffered() == 0 {
			idle := s.cfg.IdleTimeout
			if len(inflight) > 0 {
				idle = max(idle, s.cfg.RequestTimeout)
			}
			_ = c.SetReadDeadline(time.Now().Add(idle))
			if _, err := r.Peek(1); err != nil {
				return
			}
		}
		// Every frame gets ReadTimeout from here, also when the buffer
		// already holds its start: a busy pipelined stream may never leave
		// the buffer empty, and must not inherit an old deadline.
		_ = c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		frame, err := ReadFrame(r, buf, s.cfg.MaxFrame)
		if err != nil {
			var tooLarge *FrameTooLargeError
			switch {
			case errors.As(err, &tooLarge):
				w.send(OpPing, &Response{ID: tooLarge.ID, Err: Errorf(CodeTooLarge, "%v", err)})
			case errors.Is(err, os.ErrDeadlineExceeded):
				w.send(OpPing, &Response{Err: Errorf(CodeTimeout, "incomplete frame: the rest did not arrive within %s", s.cfg.ReadTimeout)})
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			default:
				w.send(OpPing, &Response{Err: Errorf(CodeBadRequest, "%v", err)})
			}
			return
		}
		buf = frame
		req, err := DecodeRequest(frame)
		if err != nil {
			w.send(req.Op, &Response{ID: req.ID, Err: AsError(err)})
			continue
		}
		if req.Op == OpAuth {
			if !TokenMatches(s.cfg.Token, string(req.Data)) {
				w.send(OpAuth, &Response{ID: req.ID, Err: errTokenRequired})
				return
			}
			authed = true
			w.send(OpAuth, &Response{ID: req.ID})
			continue
		}
		if !authed {
			w.send(req.Op, &Response{ID: req.ID, Err: errTokenRequired})
			continue
		}
		if req.Op == OpPing {
			w.send(OpPing, &Response{ID: req.ID})
			continue
		}
		inflight <- struct{}{}
		wg.Add(1)
		s.workers.run(func() {
			defer func() { <-inflight; wg.Done() }()
			w.send(req.Op, s.handle(&req, peer))
		})
	}
}

func (s *Server) handle(req *Request, peer bool) *Response {
	ctx := s.requestContext()
	if peer {
		ctx = context.WithValue(ctx, fromPeerKey{}, true)
	}
	if req.Nonce != (Nonce{}) {
		ctx = context.WithValue(ctx, nonceKey{}, req.Nonce)
	}
	if req.Op == OpRestore && req.Consistency == AtIndex {
		ctx = context.WithValue(ctx, readIndexKey{}, req.Index)
	}
	var hint string
	ctx = context.WithValue(ctx, leaderHintKey{}, &hint)
	resp := &Response{ID: req.ID}
	defer func() { resp.Leader = hint }()
	var err error
	switch req.Op {
	case OpRestore:
		resp.Data, resp.Found, err = s.h.Restore(ctx, req.SID, req.Consistency)
	case OpSave:
		err = s.h.Save(ctx, req.SID, req.Data)
	case OpPatch:
		err = s.h.Patch(ctx, req.SID, req.Set, req.Del)
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
	return resp
}

type leaderHintKey struct{}

type fromPeerKey struct{}

type nonceKey struct{}

type readIndexKey struct{}

// ReadIndex returns the index of the native AtIndex restore ctx belongs
// to, and whether it is one.
func ReadIndex(ctx context.Context) (uint64, bool) {
	i, ok := ctx.Value(readIndexKey{}).(uint64)
	return i, ok
}

// RequestNonce returns the nonce of the native write request ctx belongs
// to, and whether it had one.
func RequestNonce(ctx context.Context) (Nonce, bool) {
	n, ok := ctx.Value(nonceKey{}).(Nonce)
	return n, ok
}

// FromPeer reports whether ctx belongs to a request that arrived on a peer
// connection (MagicPeer): one node forwarding to another. A node that is not
// the leader answers such requests itself rather than forwarding again.
func FromPeer(ctx context.Context) bool {
	v, _ := ctx.Value(fromPeerKey{}).(bool)
	return v
}

// SetLeaderHint tells the native client whose request ctx belongs to that
// the leader is at addr: a Handler calls it when it served the request by
// forwarding it there, and the successful response carries the address.
// Outside a native request it does nothing.
func SetLeaderHint(ctx context.Context, addr string) {
	if p, ok := ctx.Value(leaderHintKey{}).(*string); ok {
		*p = addr
	}
}

// frameWriter serialises responses onto one connection, flushing when no
// more are queued so that pipelined responses share system calls.
type frameWriter struct {
	c       net.Conn
	timeout time.Duration
	mu      sync.Mutex
	buf     []byte
	pending bool
	failed  bool
}

func newFrameWriter(c net.Conn, timeout time.Duration) *frameWriter {
	return &frameWriter{c: c, timeout: timeout}
}

// send queues one response and writes out the queue unless another
// goroutine already is.
func (w *frameWriter) send(op Op, resp *Response) {
	w.mu.Lock()
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
	w.mu.Lock()
	for len(w.buf) > 0 && !w.failed {
		out := w.buf
		w.buf = nil
		w.mu.Unlock()
		_ = w.c.SetWriteDeadline(time.Now().Add(w.timeout))
		_, err := w.c.Write(out)
		w.mu.Lock()
		if err != nil {
			w.failed = true
			w.c.Close()
		}
		if w.buf == nil {
			w.buf = out[:0]
		}
	}
	w.buf = w.buf[:0]
	w.pending = false
	w.mu.Unlock()
}
