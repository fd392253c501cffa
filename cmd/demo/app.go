package main

import (
	"errors"
	"html/template"
	"log"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kadosession/kadosession/middleware"
)

// Session keys the demo uses besides the reserved user tag (SetUser).
const keyCounter = "counter"

// maxUsername bounds the sign-in name, in characters.
const maxUsername = 64

// flashes are the one-line notices the sign-in page can show, chosen by the
// ?m= query parameter after a redirect (the session that could carry a flash
// message has just been destroyed in both cases).
var flashes = map[string]string{
	"signed-out": "You are signed out.",
	"revoked":    "Every session of that user was revoked, this one included.",
	"expired":    "Your session ended (signed out elsewhere, revoked or expired). Sign in again.",
}

// app is the demo web app: its handlers expect to run behind the session
// middleware (see newHandler).
type app struct {
	tmpl *template.Template
	log  *log.Logger
}

// newHandler returns the demo's routes wrapped in the session middleware
// over store. CSRF: the session cookie is SameSite=Lax (the middleware's
// default), so a cross-site form POST carries no session cookie and cannot
// act as the user; a real app would add a CSRF token on top (older browsers,
// same-site subdomains).
func newHandler(store middleware.Store, logger *log.Logger) http.Handler {
	a := &app{tmpl: template.Must(template.New("page").Parse(pageHTML)), log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.home)
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /increment", a.increment)
	mux.HandleFunc("GET /sessions", a.sessions)
	mux.HandleFunc("POST /sessions/revoke", a.revoke)
	mux.HandleFunc("POST /logout", a.logout)
	// A session the middleware could not save before the response gets the
	// demo's own page, not the middleware's plain-text default.
	return middleware.New(middleware.Options{Store: store, ErrorFunc: func(w http.ResponseWriter, r *http.Request, err error) {
		setSecurityHeaders(w.Header())
		a.fail(w, r, "save the session", err)
	}})(securityHeaders(mux))
}

// securityHeaders sets the headers every page gets.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setSecurityHeaders(w.Header())
		next.ServeHTTP(w, r)
	})
}

func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
}

// page is what the template renders.
type page struct {
	View     string // "login", "home" or "sessions"
	User     string
	Counter  int
	Flash    string
	Error    string
	Sessions []sessionRow
}

type sessionRow struct {
	Short   string
	Current bool
}

func (a *app) render(w http.ResponseWriter, status int, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := a.tmpl.Execute(w, p); err != nil {
		a.log.Printf("render %s: %v", p.View, err)
	}
}

// fail answers a request whose store call failed.
func (a *app) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	a.log.Printf("%s %s: %s: %v", r.Method, r.URL.Path, what, err)
	status, msg := http.StatusInternalServerError, "The session could not be saved ("+what+"): the store refused its data."
	if errors.Is(err, middleware.ErrStoreUnavailable) {
		status, msg = http.StatusServiceUnavailable, "The session store did not answer ("+what+"). Try again in a moment."
	}
	a.render(w, status, page{View: "login", Error: msg})
}

func seeOther(w http.ResponseWriter, r *http.Request, to string) {
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func (a *app) home(w http.ResponseWriter, r *http.Request) {
	s := middleware.FromContext(r.Context())
	u := s.User()
	if u == "" {
		if err := s.Err(); err != nil {
			a.fail(w, r, "load the session", err)
			return
		}
		a.render(w, http.StatusOK, page{View: "login", Flash: flashes[r.URL.Query().Get("m")]})
		return
	}
	var n int
	_ = s.GetInto(keyCounter, &n)
	a.render(w, http.StatusOK, page{View: "home", User: u, Counter: n})
}

// validUsername trims name and reports whether it is acceptable: 1 to
// maxUsername printable characters.
func validUsername(name string) (string, bool) {
	name = strings.TrimSpace(name)
	if name == "" || !utf8.ValidString(name) || utf8.RuneCountInString(name) > maxUsername {
		return name, false
	}
	for _, c := range name {
		if !unicode.IsPrint(c) {
			return name, false
		}
	}
	return name, true
}

func (a *app) login(w http.ResponseWriter, r *http.Request) {
	name, ok := validUsername(r.PostFormValue("username"))
	if !ok {
		a.render(w, http.StatusBadRequest, page{View: "login", Error: "Enter a user name of 1 to " + strconv.Itoa(maxUsername) + " printable characters."})
		return
	}
	s := middleware.FromContext(r.Context())
	// Start from an empty session under a new id: an id planted in the
	// browser before sign-in is worthless after it (session fixation), and
	// nothing of an earlier sign-in carries over.
	s.Clear()
	if err := s.Regenerate(r.Context()); err != nil {
		a.fail(w, r, "sign in", err)
		return
	}
	s.SetUser(name)
	s.Set(keyCounter, 0)
	seeOther(w, r, "/") // the middleware saves the session before this redirect goes out
}

func (a *app) increment(w http.ResponseWriter, r *http.Request) {
	s := middleware.FromContext(r.Context())
	if s.User() == "" {
		a.signedOut(w, r, s)
		return
	}
	var n int
	_ = s.GetInto(keyCounter, &n)
	s.Set(keyCounter, n+1)
	seeOther(w, r, "/")
}

// signedOut answers a request that needs a signed-in session and has none.
func (a *app) signedOut(w http.ResponseWriter, r *http.Request, s *middleware.Session) {
	if err := s.Err(); err != nil {
		a.fail(w, r, "load the session", err)
		return
	}
	seeOther(w, r, "/?m=expired")
}

// shortID shortens a session id for display: enough to tell sessions apart,
// not enough to use one.
func shortID(id string) string {
	if len(id) <= 8 {
		return id
	}
	return id[:8] + "…"
}

func (a *app) sessions(w http.ResponseWriter, r *http.Request) {
	s := middleware.FromContext(r.Context())
	u := s.User()
	if u == "" {
		a.signedOut(w, r, s)
		return
	}
	ids, err := s.UserSessions(r.Context(), u)
	if err != nil {
		a.fail(w, r, "list the sessions", err)
		return
	}
	me := s.ID()
	rows := make([]sessionRow, 0, len(ids))
	for _, id := range ids {
		row := sessionRow{Short: shortID(id), Current: id == me}
		if row.Current { // this session first
			rows = append([]sessionRow{row}, rows...)
		} else {
			rows = append(rows, row)
		}
	}
	a.render(w, http.StatusOK, page{View: "sessions", User: u, Sessions: rows})
}

func (a *app) revoke(w http.ResponseWriter, r *http.Request) {
	s := middleware.FromContext(r.Context())
	u := s.User()
	if u == "" {
		a.signedOut(w, r, s)
		return
	}
	// This session is one of them: RevokeUser leaves it as Destroy does
	// (the browser's cookie is expired).
	if _, err := s.RevokeUser(r.Context(), u); err != nil {
		a.fail(w, r, "revoke the sessions", err)
		return
	}
	seeOther(w, r, "/?m=revoked")
}

func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	s := middleware.FromContext(r.Context())
	if err := s.Destroy(r.Context()); err != nil {
		a.fail(w, r, "sign out", err)
		return
	}
	seeOther(w, r, "/?m=signed-out")
}

const pageHTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kadosession demo</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; padding: 0 1rem; color: #1d2330; background: #f6f7f9; }
  header { display: flex; justify-content: space-between; align-items: baseline; }
  h1 { font-size: 1.4rem; margin: 0 0 1rem; }
  .card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 1.25rem 1.5rem; margin-bottom: 1rem; }
  .flash { background: #e8f4ea; border-color: #b9dcc0; }
  .error { background: #fdecec; border-color: #f0b8b8; }
  .counter { font-size: 3rem; font-weight: 600; margin: .25rem 0 .75rem; }
  button { font: inherit; padding: .45rem 1rem; border-radius: 6px; border: 1px solid #3b5bdb; background: #3b5bdb; color: #fff; cursor: pointer; }
  button.secondary { background: #fff; color: #3b5bdb; }
  button.danger { background: #c92a2a; border-color: #c92a2a; }
  input[type=text] { font: inherit; padding: .4rem .6rem; border: 1px solid #b8bec8; border-radius: 6px; width: 14rem; }
  form.inline { display: inline; }
  nav a { margin-right: 1rem; }
  code { background: #eef0f4; padding: .1rem .35rem; border-radius: 4px; }
  ul.sessions { padding-left: 1.2rem; }
  .muted { color: #667085; font-size: .9rem; }
</style>
</head>
<body>
<header><h1>kadosession demo</h1>{{if .User}}<span class="muted">cluster-backed sessions</span>{{end}}</header>
{{with .Flash}}<div class="card flash" id="flash">{{.}}</div>{{end}}
{{with .Error}}<div class="card error" id="error">{{.}}</div>{{end}}
{{if eq .View "login"}}
<div class="card">
  <form id="login-form" method="post" action="/login">
    <p><label for="username">User name</label></p>
    <p><input type="text" id="username" name="username" maxlength="64" required autofocus autocomplete="username">
    <button type="submit" id="sign-in">Sign in</button></p>
    <p class="muted">No password: this is a demo.</p>
  </form>
</div>
{{else if eq .View "home"}}
<div class="card" id="signed-in">
  <p>Signed in as <strong id="user">{{.User}}</strong></p>
  <p class="muted">Counter, kept in your session:</p>
  <div class="counter" id="counter" data-value="{{.Counter}}">{{.Counter}}</div>
  <form class="inline" method="post" action="/increment"><button type="submit" id="increment">Increment</button></form>
</div>
<div class="card">
  <nav><a href="/sessions" id="sessions-link">Sessions of this user</a></nav>
  <p><form class="inline" method="post" action="/logout"><button type="submit" class="secondary" id="sign-out">Sign out</button></form></p>
</div>
{{else if eq .View "sessions"}}
<div class="card" id="sessions">
  <p>Sessions of <strong id="user">{{.User}}</strong> (<span id="session-count">{{len .Sessions}}</span>):</p>
  <ul class="sessions">
  {{range .Sessions}}<li><code>{{.Short}}</code>{{if .Current}} <span class="muted current">(this session)</span>{{end}}</li>
  {{end}}</ul>
  <form method="post" action="/sessions/revoke"><button type="submit" class="danger" id="revoke-all">Revoke all</button></form>
  <p class="muted">Revoking signs this user out everywhere, this browser included, across the whole cluster.</p>
</div>
<p><a href="/">Back</a></p>
{{end}}
</body>
</html>
`
