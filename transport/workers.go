package transport

import (
	"context"
	"time"
)

// workers runs a server's requests on goroutines kept for reuse. A request
// served on a fresh goroutine first grows its stack (the read path is a deep
// call chain): copying stacks took 17% of a node's CPU for restores with
// 64 in flight, and starting the goroutines another 5%. A worker that has
// had nothing to do for workerIdle exits, so a burst leaves nothing behind.
type workers struct {
	tasks chan func()
	ctx   context.Context
}

// workerIdle is how long an idle worker waits for another request.
const workerIdle = 2 * time.Second

func newWorkers(ctx context.Context) *workers {
	return &workers{tasks: make(chan func()), ctx: ctx}
}

// run runs f on an idle worker, or on a new one if none is idle.
func (w *workers) run(f func()) {
	select {
	case w.tasks <- f:
	default:
		go w.work(f)
	}
}

func (w *workers) work(f func()) {
	f()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		select {
		case f = <-w.tasks:
			f()
			idle.Reset(workerIdle)
		case <-idle.C:
			return
		case <-w.ctx.Done():
			return
		}
	}
}

// sharedContext is a context that bounds requests: each request gets one
// that ends between RequestTimeout and RequestTimeout+ctxSlot after it
// arrived, or when the server closes. Requests arriving within the same
// ctxSlot share one: a context with a timer of its own for every request
// cost a follower serving reads 16% of its CPU.
type sharedContext struct {
	ctx    context.Context
	cancel context.CancelFunc // called by nobody: the deadline releases it
	until  time.Time          // when the next request needs a new one
}

// ctxSlot is how long one request context is handed out.
const ctxSlot = 10 * time.Millisecond

// requestContext returns a context for a request that arrived at now.
// Requests racing at the end of a slot may each make one; that costs a
// timer each.
func (s *Server) requestContext(now time.Time) context.Context {
	if c := s.reqCtx.Load(); c != nil && now.Before(c.until) {
		return c.ctx
	}
	ctx, cancel := context.WithDeadline(s.ctx, now.Add(s.cfg.RequestTimeout+ctxSlot))
	s.reqCtx.Store(&sharedContext{ctx: ctx, cancel: cancel, until: now.Add(ctxSlot)})
	return ctx
}
