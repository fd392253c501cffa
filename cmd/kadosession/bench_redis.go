package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A minimal RESP (Redis serialization protocol) client for bench: SET key
// value PX ms and GET key, one request in flight per connection, like
// redis-benchmark's clients. No dependency: bench compares against Redis
// with nothing but the standard library.

func isRedisTarget(t string) bool { return strings.HasPrefix(strings.TrimSpace(t), "redis://") }

// parseRedisTarget returns HOST:PORT from redis://HOST:PORT.
func parseRedisTarget(t string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(t))
	if err != nil {
		return "", fmt.Errorf("--target %q: %v", t, err)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--target %q: want redis://HOST:PORT only (no user, password, database or options)", t)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "", fmt.Errorf("--target %q: want redis://HOST:PORT", t)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("--target %q: the port must be 1..65535", t)
	}
	return u.Host, nil
}

// redisTarget drives one Redis server: with a connection per client, or
// with a few connections shared by all clients, pipelined (--conns).
type redisTarget struct {
	addr string
	px   []byte // the expiry in ms, as sent

	mu    sync.Mutex
	muxes []*respMux // --conns > 0
	next  int
}

func newRedisTarget(cfg benchConfig) (*redisTarget, error) {
	addr, err := parseRedisTarget(cfg.target)
	if err != nil {
		return nil, err
	}
	return &redisTarget{addr: addr, px: []byte(strconv.FormatInt(cfg.ttl.Milliseconds(), 10)),
		muxes: make([]*respMux, cfg.conns)}, nil
}

func (t *redisTarget) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.muxes {
		if m != nil {
			m.fail(net.ErrClosed)
		}
	}
}

func (t *redisTarget) worker() benchWorker {
	if len(t.muxes) == 0 {
		return &redisWorker{t: t}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	return &muxWorker{t: t, slot: t.next % len(t.muxes)}
}

// mux returns the shared connection of slot, dialling a new one when it has
// none or the last one failed.
func (t *redisTarget) mux(ctx context.Context, slot int) (*respMux, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.muxes[slot]; m != nil && m.err() == nil {
		return m, nil
	}
	c, err := dialRESP(ctx, t.addr)
	if err != nil {
		return nil, err
	}
	m := newRESPMux(c)
	t.muxes[slot] = m
	return m, nil
}

// prepare writes every session over a few connections, pipelining batches
// of SETs.
func (t *redisTarget) prepare(ctx context.Context, sids []string, data []byte) error {
	const batch = 512
	var chunks [][]string
	for i := 0; i < len(sids); i += batch {
		chunks = append(chunks, sids[i:min(i+batch, len(sids))])
	}
	conns := make(chan *respConn, 4)
	for range 4 {
		conns <- nil
	}
	idx := make([]string, len(chunks))
	for i := range chunks {
		idx[i] = strconv.Itoa(i)
	}
	return parallelPrepare(ctx, idx, 4, func(s string) error {
		i, _ := strconv.Atoi(s)
		c := <-conns
		defer func() { conns <- c }()
		if c == nil {
			var err error
			if c, err = dialRESP(ctx, t.addr); err != nil {
				return err
			}
		}
		_ = c.conn.SetDeadline(time.Now().Add(30 * time.Second))
		for _, sid := range chunks[i] {
			c.appendCommand([]byte("SET"), []byte(sid), data, []byte("PX"), t.px)
		}
		if err := c.flush(); err != nil {
			c.close()
			c = nil
			return err
		}
		for range chunks[i] {
			if _, err := c.readReply(); err != nil {
				c.close()
				c = nil
				return err
			}
		}
		return nil
	})
}

// redisWorker owns one connection, dialled when first needed and again
// after a failure.
type redisWorker struct {
	t *redisTarget
	c *respConn
}

var (
	cmdSET = []byte("SET")
	cmdGET = []byte("GET")
	argPX  = []byte("PX")
)

func (w *redisWorker) call(ctx context.Context, args ...[]byte) (respReply, error) {
	if w.c == nil {
		c, err := dialRESP(ctx, w.t.addr)
		if err != nil {
			return respReply{}, err
		}
		w.c = c
	}
	_ = w.c.conn.SetDeadline(time.Now().Add(benchOpTimeout))
	w.c.appendCommand(args...)
	err := w.c.flush()
	var r respReply
	if err == nil {
		r, err = w.c.readReply()
	}
	if err != nil {
		w.c.close()
		w.c = nil
		return respReply{}, err
	}
	if r.kind == '-' {
		return r, fmt.Errorf("redis: %s", r.str)
	}
	return r, nil
}

func (w *redisWorker) save(ctx context.Context, sid string, data []byte) error {
	r, err := w.call(ctx, cmdSET, []byte(sid), data, argPX, w.t.px)
	if err == nil && (r.kind != '+' || string(r.str) != "OK") {
		err = fmt.Errorf("redis: SET %s answered %c%s", sid, r.kind, r.str)
	}
	return err
}

func (w *redisWorker) restore(ctx context.Context, sid string) error {
	r, err := w.call(ctx, cmdGET, []byte(sid))
	if err == nil && (r.kind != '$' || r.null) {
		err = fmt.Errorf("redis: GET %s: not found (it was written before the run)", sid)
	}
	return err
}

func (w *redisWorker) close() {
	if w.c != nil {
		w.c.close()
	}
}

// respConn is one connection speaking RESP. Not safe for concurrent use.
type respConn struct {
	conn net.Conn
	r    *bufio.Reader
	wbuf []byte
	bulk []byte // the last bulk string read, reused
}

// respReply is one reply: kind is its type byte ('+', '-', ':', '$'); str
// holds the simple string, error text, integer or bulk string (valid until
// the next read); null marks a null bulk string.
type respReply struct {
	kind byte
	str  []byte
	null bool
}

// maxRESPBulk bounds a bulk reply: bench values are at most benchMaxSize.
const maxRESPBulk = 2 * benchMaxSize

func dialRESP(ctx context.Context, addr string) (*respConn, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &respConn{conn: c, r: bufio.NewReaderSize(c, 16<<10)}, nil
}

func (c *respConn) close() { c.conn.Close() }

// appendCommand queues one command as a RESP array of bulk strings.
func (c *respConn) appendCommand(args ...[]byte) {
	b := c.wbuf
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	c.wbuf = b
}

// flush writes the queued commands.
func (c *respConn) flush() error {
	_, err := c.conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

var errRESP = errors.New("redis: malformed reply")

// readReply reads one reply. Arrays are not expected from SET or GET and
// are an error.
func (c *respConn) readReply() (respReply, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return respReply{}, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return respReply{}, errRESP
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+', '-', ':':
		return respReply{kind: kind, str: body}, nil
	case '$':
		n, err := strconv.Atoi(string(body))
		if err != nil || n < -1 || n > maxRESPBulk {
			return respReply{}, fmt.Errorf("%w: bulk length %q", errRESP, body)
		}
		if n == -1 {
			return respReply{kind: '$', null: true}, nil
		}
		if cap(c.bulk) < n+2 {
			c.bulk = make([]byte, n+2)
		}
		b := c.bulk[:n+2]
		if _, err := io.ReadFull(c.r, b); err != nil {
			return respReply{}, err
		}
		if b[n] != '\r' || b[n+1] != '\n' {
			return respReply{}, errRESP
		}
		return respReply{kind: '$', str: b[:n]}, nil
	}
	return respReply{}, fmt.Errorf("%w: unexpected type %q", errRESP, kind)
}

// muxWorker sends its commands over a connection shared with other
// clients.
type muxWorker struct {
	t    *redisTarget
	slot int
}

func (w *muxWorker) call(ctx context.Context, args ...[]byte) (respReply, error) {
	m, err := w.t.mux(ctx, w.slot)
	if err != nil {
		return respReply{}, err
	}
	r, err := m.call(args...)
	if err == nil && r.kind == '-' {
		err = fmt.Errorf("redis: %s", r.str)
	}
	return r, err
}

func (w *muxWorker) save(ctx context.Context, sid string, data []byte) error {
	r, err := w.call(ctx, cmdSET, []byte(sid), data, argPX, w.t.px)
	if err == nil && (r.kind != '+' || string(r.str) != "OK") {
		err = fmt.Errorf("redis: SET %s answered %c%s", sid, r.kind, r.str)
	}
	return err
}

func (w *muxWorker) restore(ctx context.Context, sid string) error {
	r, err := w.call(ctx, cmdGET, []byte(sid))
	if err == nil && (r.kind != '$' || r.null) {
		err = fmt.Errorf("redis: GET %s: not found (it was written before the run)", sid)
	}
	return err
}

func (w *muxWorker) close() {}

// respMux pipelines the commands of many goroutines over one connection:
// a caller appends its command to the shared buffer and queues itself; the
// first caller to find no write in progress writes everything queued (so
// commands that arrive during a write go out together in the next one); a
// reader goroutine hands the replies out in order. Replies carry no bulk
// data (bench does not look at it), so nothing is copied.
type respMux struct {
	c       *respConn
	mu      sync.Mutex
	writing bool
	failed  error
	queue   chan *muxCall // in the order the commands were buffered
}

type muxCall struct {
	reply respReply
	err   error
	done  chan struct{}
}

var muxCalls = sync.Pool{New: func() any { return &muxCall{done: make(chan struct{}, 1)} }}

// muxQueue bounds the commands in flight on one shared connection.
const muxQueue = 2 * benchMaxClients

func newRESPMux(c *respConn) *respMux {
	m := &respMux{c: c, queue: make(chan *muxCall, muxQueue)}
	go m.readLoop()
	return m
}

func (m *respMux) err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed
}

func (m *respMux) call(args ...[]byte) (respReply, error) {
	cl := muxCalls.Get().(*muxCall)
	m.mu.Lock()
	if m.failed != nil {
		err := m.failed
		m.mu.Unlock()
		muxCalls.Put(cl)
		return respReply{}, err
	}
	m.c.appendCommand(args...)
	m.queue <- cl // never blocks: at most benchMaxClients callers
	if !m.writing {
		m.writing = true
		for len(m.c.wbuf) > 0 && m.failed == nil {
			buf := m.c.wbuf
			m.c.wbuf = nil
			m.mu.Unlock()
			_ = m.c.conn.SetWriteDeadline(time.Now().Add(benchOpTimeout))
			_, err := m.c.conn.Write(buf)
			m.mu.Lock()
			if m.c.wbuf == nil {
				m.c.wbuf = buf[:0] // reuse the buffer
			} else {
				m.c.wbuf = append(buf[:0], m.c.wbuf...)
			}
			if err != nil {
				m.failLocked(err)
			}
		}
		m.writing = false
	}
	m.mu.Unlock()
	t := time.NewTimer(benchOpTimeout)
	select {
	case <-cl.done:
		t.Stop()
	case <-t.C:
		// The reader will still hand this call its reply (or an error)
		// later; it cannot be reused, so it is left to the collector.
		m.fail(fmt.Errorf("redis: no reply within %s", benchOpTimeout))
		return respReply{}, fmt.Errorf("redis: no reply within %s", benchOpTimeout)
	}
	r, err := cl.reply, cl.err
	cl.reply, cl.err = respReply{}, nil
	muxCalls.Put(cl)
	return r, err
}

func (m *respMux) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failLocked(err)
}

func (m *respMux) failLocked(err error) {
	if m.failed == nil {
		m.failed = err
		m.c.close() // ends readLoop, which fails the calls still queued
	}
}

func (m *respMux) readLoop() {
	for {
		r, err := m.c.readReply()
		if err != nil {
			m.fail(err)
			m.mu.Lock()
			failed := m.failed
			for {
				select {
				case cl := <-m.queue:
					cl.err = failed
					cl.done <- struct{}{}
					continue
				default:
				}
				break
			}
			m.mu.Unlock()
			return
		}
		cl := <-m.queue
		cl.reply = respReply{kind: r.kind, null: r.null}
		if r.kind != '$' { // status and error texts are short
			cl.reply.str = append([]byte(nil), r.str...)
		}
		cl.done <- struct{}{}
	}
}
