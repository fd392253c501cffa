package middleware

import (
	"context"
	"iter"
	"net"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/fsm"
)

type ctxKey struct{}

// FromContext returns the request's Session, or nil when the request did not
// pass through the middleware. The Session is safe for concurrent use by the
// request's goroutines and must not outlive the request.
func FromContext(ctx context.Context) *Session {
	s, _ := ctx.Value(ctxKey{}).(*Session)
	return s
}

// New returns the session middleware: Kado's getMiddleware. It panics when
// opts.Store is nil or the cookie options are invalid. The returned function
// and the handlers it makes are safe for concurrent use.
//
// Each request gets a Session (see FromContext) that loads itself on first
// use. A modified session is saved before the response's first byte — when
// the handler calls WriteHeader, Write or Flush, or returns without writing —
// and a new session's cookie is set then; changes made after the first byte
// are saved when the handler returns. A store failure replaces the response
// with Options.ErrorFunc's, by default HTTP 503 "session store unavailable"
// (or is logged, when the headers already went out). A handler that panics saves nothing. A session that is
// only read is not written, so not renewed: it expires the store's duration
// after its last change.
func New(opts Options) func(http.Handler) http.Handler {
	cfg := newConfig(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := cfg.newRequest(w, r)
			next.ServeHTTP(&q.rw, r.WithContext(&q.ctx))
			q.rw.finish()
		})
	}
}

// cookieOp is what the response must do with the session cookie.
type cookieOp int

const (
	cookieKeep   cookieOp = iota // send nothing
	cookieSet                    // send a cookie naming the session's id
	cookieExpire                 // make the browser drop its cookie
)

// webRequest is a Session's middleware bookkeeping; it is guarded by the
// Session's lock.
type webRequest struct {
	cfg         *config
	req         *http.Request
	agent       string // the User-Agent header, read before the handler could change it
	hadCookie   bool   // the request carried a cookie of our name
	cookieID    string // the id that cookie named, kept to keep it out of logs
	headersSent bool
	cookie      cookieOp
	finished    bool // the middleware saved the session for the last time
	warnedLate  bool // a change after that was logged
}

// request is what the middleware keeps for one request, allocated at once.
type request struct {
	session  Session
	web      webRequest
	rw       responseWriter
	ctx      sessionCtx
	dirtyBuf [2]fsm.Field // the session's dirty keys, unless a request sets more
}

// sessionCtx is the handler's context: the request's, carrying the
// Session for FromContext. It is context.WithValue's valueCtx without an
// allocation of its own.
type sessionCtx struct {
	context.Context
	s *Session
}

func (c *sessionCtx) Value(key any) any {
	if key == (ctxKey{}) {
		return c.s
	}
	return c.Context.Value(key)
}

// newRequest makes the Session of request r and the writer the handler
// gets in place of w.
func (c *config) newRequest(w http.ResponseWriter, r *http.Request) *request {
	q := &request{}
	q.rw = responseWriter{ResponseWriter: w, s: &q.session}
	web := &q.web
	// The handler's request shares r's Header: a handler changing it while
	// another of its goroutines makes an id would race with reading it then.
	*web = webRequest{cfg: c, req: r}
	if ua := r.Header["User-Agent"]; len(ua) > 0 { // r.UserAgent without its key canonicalisation
		web.agent = ua[0]
	}
	s := &q.session
	q.ctx = sessionCtx{Context: r.Context(), s: s}
	s.dirty.fields = q.dirtyBuf[:0]
	s.store = c.Store
	s.base = context.WithoutCancel(r.Context()) // a save that started must finish even if the client left
	s.req = r.Context()                         // a load stops when the client has gone
	s.timeout = c.Timeout
	s.web = web
	s.id, web.hadCookie = sessionCookie(r.Header, c.Name)
	web.cookieID = s.id
	return q
}

// sessionCookie finds the cookie called name in the Cookie headers h, as
// http.Request.CookiesNamed reads them (the same trimming, unquoting and
// value check) but without its allocations, which were a tenth of the
// middleware's time: id is the value of the first such cookie that has the
// shape of a session id (validID), or "", and had reports whether any
// cookie called name came at all. Unlike CookiesNamed it does not ignore
// every cookie of a request that carries more than 3,000 (net/http's cap
// against the allocations this scanner does not make).
func sessionCookie(h http.Header, name string) (id string, had bool) {
	for v := range cookieValues(h, name) {
		had = true
		if validID(v) {
			return v, true
		}
	}
	return "", had
}

// cookieValues yields the values of the cookies called name in the Cookie
// headers h, in order, as http.Request.CookiesNamed reads them (the same
// trimming, unquoting and value check), without allocating.
func cookieValues(h http.Header, name string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, line := range h["Cookie"] {
			for line != "" {
				var part string
				part, line, _ = strings.Cut(line, ";")
				k, v, _ := strings.Cut(textproto.TrimString(part), "=")
				if textproto.TrimString(k) != name {
					continue
				}
				if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				if validCookieValue(v) && !yield(v) { // CookiesNamed drops a value that fails the check
					return
				}
			}
		}
	}
}

// otherCookie looks, when the request's first session cookie names no
// session, at the other cookies of our name it carries, in order, and
// makes the first one the store holds the session's. A browser sends every
// cookie of a name whose domain and path match, the most specific path
// first: a stale or planted one (a sibling subdomain's "session" cookie
// for the parent domain, set with a longer path) came before ours, and
// the user was logged out (the request got a fresh id, and our cookie
// was expired). What it finds for none is the first cookie's answer:
// not found, and no error.
func (w *webRequest) otherCookie(ctx context.Context, s *Session) (sessionData, bool, error) {
	first := true
	for v := range cookieValues(w.req.Header, w.cfg.Name) {
		if !validID(v) || v == w.cookieID {
			continue
		}
		if first {
			w.log(hclog.Debug, "the request's first session cookie names no session; trying its other cookies of that name", w.cookieID, nil)
			first = false
		}
		data, found, err := restore(ctx, s.store, v)
		if err != nil || !found {
			continue // the first cookie's answer stands
		}
		s.id, w.cookieID = v, v
		return data, true, nil
	}
	return sessionData{}, false, nil
}

// validCookieValue reports whether net/http accepts v as a cookie's value.
func validCookieValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < 0x20 || b >= 0x7f || b == '"' || b == ';' || b == '\\' {
			return false
		}
	}
	return true
}

// newID returns a fresh session id for this request's client.
func (w *webRequest) newID() string {
	ip := w.req.RemoteAddr // a field of the middleware's request, which nothing changes
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	return GenerateID(ip, w.agent)
}

// saved records that the session sid was written to the store.
func (w *webRequest) saved(sid string, wasNew bool) {
	if !wasNew && w.cfg.MaxAge <= 0 {
		return
	}
	w.cookie = cookieSet
	if wasNew && w.headersSent {
		w.log(hclog.Warn, "a new session was saved after the response headers were sent; its cookie could not be set, so the client will not see it", sid, nil)
	}
}

// destroyed records that the session was deleted.
func (w *webRequest) destroyed() {
	w.cookie = cookieKeep
	if w.hadCookie {
		w.cookie = cookieExpire
	}
}

// log logs msg about session sid. Session ids are bearer credentials: a log
// line names the session by a salted hash (sidHash), and any id in err's
// text is replaced by its hash.
func (w *webRequest) log(level hclog.Level, msg string, sid string, err error) {
	args := []any{"method", w.req.Method, "path", w.req.URL.Path}
	if sid != "" {
		args = append(args, "session", sidHash(sid))
	}
	if err != nil {
		args = append(args, "error", redact(err.Error(), sid, w.cookieID))
	}
	w.cfg.Logger.Log(level, msg, args...)
}

// beforeHeaders saves a modified session and returns the cookie the
// response must carry, if any, and whether the handler used the session
// (so the response may depend on the cookie). Called once, before the
// first byte.
func (s *Session) beforeHeaders() (ck *http.Cookie, used bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.saveLocked(s.base, false)
	w := s.web
	w.headersSent = true
	if err != nil {
		return nil, true, err
	}
	op := w.cookie
	w.cookie = cookieKeep
	switch op {
	case cookieSet:
		return w.cfg.cookie(s.id), true, nil
	case cookieExpire:
		return w.cfg.expiredCookie(), true, nil
	}
	return nil, s.loaded, nil
}

// afterHandler saves what changed after the first byte, logging failures the
// response can no longer report; committed is false when the session failed
// before the response, which then reported it. Changes after this are
// logged and dropped.
func (s *Session) afterHandler(committed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.web.finished = true
	if !committed || !s.loaded {
		return
	}
	if s.isNew && len(s.dirty.fields) > 0 && s.loadErr == nil && !s.detached {
		// Nobody could ever read it: its id reached no client.
		s.web.log(hclog.Warn, "a new session was written to after the response headers were sent; its cookie could not be set, so it was not saved (write to the session before writing the response)", s.id, nil)
		return
	}
	if err := s.saveLocked(s.base, false); err != nil {
		s.web.log(hclog.Error, "failure after the response headers were sent; the response could not report it", s.id, err)
	}
}
