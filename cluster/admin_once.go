package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// adminOnce answers a retried revoke_user that carries the same "nonce"
// as one this node already ran with the first one's answer, for
// adminOnceWindow. A client retries a call whose connection broke before
// the answer came; the revoke may have taken effect, and running it again
// counted the sessions left (0, or any saved since). Only the node that ran
// it remembers it: a retry that reaches a new leader runs again. (A
// repeated remove is recognised by its id instead: noteRemoved.)
type adminOnce struct {
	mu sync.Mutex
	m  map[string]*onceCall
}

// onceCall is one admin write by nonce: running until done is closed.
type onceCall struct {
	done  chan struct{}
	reply []byte
	err   error
	ended time.Time
}

const (
	adminOnceWindow = time.Minute
	adminOnceMax    = 4096 // answers kept at most; past it writes run unremembered
	adminNonceMax   = 64   // bytes
)

// do runs f once for the admin write op with nonce (any string up to
// adminNonceMax bytes; "" runs f unremembered) and returns its answer, or
// the answer of the run with the same op and nonce within the window. A
// retry that arrives while the first run goes on waits for it. A run
// that failed is not remembered: the retry runs again.
func (o *adminOnce) do(ctx context.Context, op, nonce string, f func() ([]byte, error)) ([]byte, error) {
	if nonce == "" {
		return f()
	}
	if len(nonce) > adminNonceMax {
		return nil, transport.Errorf(transport.CodeBadRequest, "admin request's nonce is %d bytes, over %d", len(nonce), adminNonceMax)
	}
	key := op + "\x00" + nonce
	for {
		o.mu.Lock()
		now := time.Now()
		for k, c := range o.m {
			if !c.ended.IsZero() && now.Sub(c.ended) > adminOnceWindow {
				delete(o.m, k)
			}
		}
		c, ok := o.m[key]
		if !ok {
			if len(o.m) >= adminOnceMax {
				o.mu.Unlock()
				return f()
			}
			if o.m == nil {
				o.m = map[string]*onceCall{}
			}
			c = &onceCall{done: make(chan struct{})}
			o.m[key] = c
			o.mu.Unlock()
			reply, err := f()
			o.mu.Lock()
			c.reply, c.err, c.ended = reply, err, time.Now()
			if err != nil {
				delete(o.m, key)
			}
			o.mu.Unlock()
			close(c.done)
			return reply, err
		}
		o.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, transport.Errorf(transport.CodeTimeout, "timed out waiting for the same admin request, still running: %v", ctx.Err())
		}
		if c.err == nil {
			return c.reply, nil
		}
	}
}
