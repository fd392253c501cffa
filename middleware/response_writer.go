package middleware

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// responseWriter saves the session before the first byte of the response.
// It implements Unwrap, so http.ResponseController reaches the underlying
// writer's features, and intercepts Flush and Hijack to save first.
type responseWriter struct {
	http.ResponseWriter
	s *Session

	mu        sync.Mutex
	committed bool
	err       error // the session error that replaced the response (Options.ErrorFunc)
}

// commit runs the pre-header save once. It reports whether the handler's
// response may go on; when it may not, Options.ErrorFunc has answered
// instead.
func (w *responseWriter) commit() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.committed {
		return w.err == nil
	}
	w.committed = true
	ck, used, err := w.s.beforeHeaders()
	if err != nil {
		w.err = err
		level := hclog.Error
		web := w.s.web
		switch {
		case errors.Is(err, ErrSessionTooLarge):
			level = hclog.Warn // this request's data, not an outage
		case errors.Is(err, context.Canceled) && web.req.Context().Err() != nil:
			level = hclog.Debug // the client left while the session loaded
		}
		web.log(level, "the session failed before the response; answering with Options.ErrorFunc", w.s.sidForLog(), err)
		clear(w.ResponseWriter.Header()) // none of the handler's headers (Location, caching…) fit an error
		web.cfg.ErrorFunc(w.ResponseWriter, web.req, err)
		return false
	}
	switch {
	case ck != nil:
		h := w.ResponseWriter.Header()
		h.Add("Set-Cookie", ck.String())
		h.Add("Vary", "Cookie")
		// A response that carries a session id must never be stored by a
		// shared cache and served to someone else (OWASP).
		h.Set("Cache-Control", "no-store")
	case used:
		// The handler read the session, so the response may show one
		// user's data: a cache must not serve it for another cookie.
		w.ResponseWriter.Header().Add("Vary", "Cookie")
	}
	return true
}

// failure returns the error a write after a failed commit reports.
func (w *responseWriter) failure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// WriteHeader saves the session, then sends the headers; informational
// (1xx) headers pass straight through.
func (w *responseWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.commit() {
		w.ResponseWriter.WriteHeader(code)
	}
}

// Write saves the session before the first byte. After a session failure
// replaced the response (Options.ErrorFunc) it discards p and returns the failure.
func (w *responseWriter) Write(p []byte) (int, error) {
	if !w.commit() {
		return 0, w.failure()
	}
	return w.ResponseWriter.Write(p)
}

// Flush saves the session, then flushes (http.Flusher).
func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError saves the session, then flushes; http.ResponseController.Flush
// calls it. It returns the session failure, or the underlying writer's
// flush error (http.ErrNotSupported when it cannot flush).
func (w *responseWriter) FlushError() error {
	if !w.commit() {
		return w.failure()
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack saves the session, then hands the connection over;
// http.ResponseController.Hijack calls it. A new session's cookie cannot be
// sent on a hijacked connection. It returns the session failure (the error
// response has been written, the connection is not hijacked) or the underlying error.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !w.commit() {
		return nil, nil, w.failure()
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap returns the underlying ResponseWriter, for http.ResponseController.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish runs when the handler returns: the pre-header save if nothing was
// written, then the save of changes made after the first byte.
func (w *responseWriter) finish() {
	w.s.afterHandler(w.commit())
}
