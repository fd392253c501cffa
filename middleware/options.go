package middleware

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Defaults for Options.
const (
	// DefaultCookieName is the session cookie's name when Options.Name is
	// empty (Kado hard-coded it).
	DefaultCookieName = "session"
	// DefaultTimeout bounds each store call the middleware makes.
	DefaultTimeout = 5 * time.Second
)

// Options configures New. The zero value of every field but Store is a
// safe default: an HttpOnly, SameSite=Lax, Path=/ session cookie named
// "session".
type Options struct {
	// Name is the cookie's name; "" means DefaultCookieName.
	Name string
	// Store holds the sessions. Required: New panics without one.
	Store Store
	// Secure marks the cookie Secure (sent over HTTPS only).
	Secure bool
	// Domain is the cookie's Domain attribute; "" means the request's host
	// only.
	Domain string
	// Path is the cookie's Path attribute; "" means "/".
	Path string
	// SameSite is the cookie's SameSite attribute; 0 (the default) means
	// http.SameSiteLaxMode. http.SameSiteNoneMode requires Secure.
	SameSite http.SameSite
	// DisableHTTPOnly lets scripts read the cookie; by default it is HttpOnly.
	DisableHTTPOnly bool
	// MaxAge makes the cookie persistent: it is sent with Max-Age and sent
	// again each time the session is saved, so it slides with the session.
	// 0 means a browser-session cookie (no Max-Age).
	MaxAge time.Duration
	// Logger receives store failures and misuses the response cannot report
	// (after the headers went out), through hclog like the rest of
	// kadosession; nil means hclog.Default() named "session". Session ids are
	// never logged: a line names its session by a salted hash (the first 12
	// hex characters of SHA-256 of a per-process random salt and the id), and
	// an id quoted in a store's error is replaced by that hash.
	Logger hclog.Logger
	// HostPrefix names the cookie "__Host-" + Name, which browsers accept
	// only with Secure, Path=/ and no Domain: the cookie cannot be set or
	// shadowed by a sibling subdomain. New panics if Secure is off or Domain
	// or a Path other than "/" is set.
	HostPrefix bool
	// Timeout bounds each store call made for a request; 0 means
	// DefaultTimeout, a negative value means no bound of the middleware's
	// own. The session's load, on its first use, runs under the request's
	// context too: it stops when the client has gone (r.Context() is
	// cancelled), and the session then fails with an error wrapping
	// ErrStoreUnavailable and context.Canceled. The middleware's saves
	// (and the writes a load makes: deleting a session past its lifetime)
	// do not take the request's cancellation or deadline, so that a save
	// that started finishes when the client leaves: with a negative
	// Timeout only the store's own limits apply (for the Go client,
	// Config.RequestTimeout per attempt, and its retries).
	Timeout time.Duration
	// IdleTimeout ends a session no request has used for this long (OWASP
	// Session Management: idle timeout), however long the store would keep
	// it. 0 means off: a session lasts as long as the store keeps it (the
	// store's duration after its last save).
	//
	// With IdleTimeout or AbsoluteLifetime set, the middleware keeps the
	// session's creation and last-use times under the reserved key MetaKey
	// ("_meta"), hidden from the Session's methods. A request that modifies
	// the session records its use; a request that only reads it records its
	// use when the last record is older than IdleTimeout/4, so read-only
	// traffic does not write on every request (and a session may end up to
	// IdleTimeout/4 early). An ended session is treated as absent, as in
	// strict mode: it is deleted from the store and the request gets a fresh
	// id. A session stored without the timestamps (before the option was
	// turned on) counts as created and used at its first request after.
	IdleTimeout time.Duration
	// AbsoluteLifetime ends a session this long after it was created, however
	// active it is (OWASP Session Management: absolute timeout). Regenerate
	// keeps the creation time: moving a session to a new id does not extend
	// it. 0 means off. See IdleTimeout for how it is recorded.
	AbsoluteLifetime time.Duration

	// ErrorFunc writes the response when the session could not be loaded or
	// saved before the response's first byte; the handler's response is
	// then discarded, and its headers cleared. err wraps
	// ErrStoreUnavailable, ErrSessionTooLarge or ErrInvalidValue (compare
	// with errors.Is). nil means the default: HTTP 503 "session store
	// unavailable" with Retry-After for an unavailable store, HTTP 500
	// "session data could not be saved" for the rest. After the first byte
	// the failure can only be logged, and ErrorFunc is not called. It must
	// not use the request's Session.
	ErrorFunc func(w http.ResponseWriter, r *http.Request, err error)

	// now is the clock for IdleTimeout and AbsoluteLifetime; nil means
	// time.Now. Tests set it.
	now func() time.Time
}

// config is Options with the defaults applied and checked.
type config struct {
	Options
}

func newConfig(o Options) *config {
	if o.Store == nil {
		panic("middleware.New: Options.Store is nil; pass a store such as middleware.NewMemoryStore(middleware.MemoryOptions{}) or a client.Store")
	}
	if o.Name == "" {
		o.Name = DefaultCookieName
	}
	if !validCookieName(o.Name) {
		panic("middleware.New: Options.Name " + `"` + o.Name + `"` + " is not a valid cookie name (use letters, digits and -_.)")
	}
	if o.Path == "" {
		o.Path = "/"
	}
	if o.HostPrefix {
		if !o.Secure || o.Domain != "" || o.Path != "/" {
			panic("middleware.New: HostPrefix needs Secure, no Domain and Path \"/\" (browsers reject __Host- cookies otherwise)")
		}
		o.Name = "__Host-" + o.Name
	}
	if o.SameSite == 0 || o.SameSite == http.SameSiteDefaultMode {
		o.SameSite = http.SameSiteLaxMode
	}
	if o.SameSite == http.SameSiteNoneMode && !o.Secure {
		panic("middleware.New: SameSite=None requires Secure: browsers drop such cookies otherwise")
	}
	if o.Logger == nil {
		o.Logger = hclog.Default().Named("session")
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ErrorFunc == nil {
		o.ErrorFunc = defaultErrorFunc
	}
	if o.IdleTimeout < 0 || o.AbsoluteLifetime < 0 {
		panic("middleware.New: Options.IdleTimeout and Options.AbsoluteLifetime must not be negative (0 turns them off)")
	}
	if o.now == nil {
		o.now = defaultNow
	}
	return &config{Options: o}
}

// validCookieName accepts an RFC 6265 token.
func validCookieName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// cookie returns the cookie that names sid.
func (c *config) cookie(sid string) *http.Cookie {
	ck := &http.Cookie{
		Name:     c.Name,
		Value:    sid,
		Path:     c.Path,
		Domain:   c.Domain,
		Secure:   c.Secure,
		HttpOnly: !c.DisableHTTPOnly,
		SameSite: c.SameSite,
	}
	if c.MaxAge > 0 {
		ck.MaxAge = int(max(c.MaxAge/time.Second, 1))
	}
	return ck
}

// expiredCookie returns the cookie that makes the browser drop the session
// cookie.
func (c *config) expiredCookie() *http.Cookie {
	ck := c.cookie("")
	ck.MaxAge = -1 // "Max-Age=0"
	ck.Expires = time.Unix(0, 0)
	return ck
}

// defaultErrorFunc answers a request whose session failed (Options.ErrorFunc).
func defaultErrorFunc(w http.ResponseWriter, _ *http.Request, err error) {
	if errors.Is(err, ErrStoreUnavailable) {
		// Temporary: a load balancer or client may try again.
		w.Header().Set("Retry-After", "1")
		http.Error(w, "session store unavailable", http.StatusServiceUnavailable)
		return
	}
	http.Error(w, "session data could not be saved", http.StatusInternalServerError)
}
