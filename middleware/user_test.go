package middleware

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/kadosession/kadosession/transport"
)

func TestSetUserListAndRevoke(t *testing.T) {
	store := NewMemoryStore(MemoryOptions{})
	defer store.Close()
	var _ UserStore = store
	login := func(user string) *http.Cookie {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := FromContext(r.Context())
			s.SetUser(user).Set("n", 1)
			if s.User() != user {
				t.Errorf("User() = %q", s.User())
			}
		})
		return serve(Options{Store: store}, h, httptest.NewRequest("GET", "/", nil)).Cookies()[0]
	}
	a1, a2, b := login("alice"), login("alice"), login("bob")
	ctx := context.Background()
	got, _ := store.UserSessions(ctx, "alice")
	if want := []string{a1.Value, a2.Value}; !slices.Equal(got, sorted(want)) {
		t.Fatalf("alice's sessions %v, want %v", got, want)
	}
	// "Sign out everywhere" from one of alice's sessions.
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		if n, err := s.RevokeUser(r.Context(), s.User()); err != nil || n != 2 {
			t.Errorf("RevokeUser = %d, %v", n, err)
		}
	})
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(a1)
	serve(Options{Store: store}, h, req)
	for _, c := range []*http.Cookie{a1, a2} {
		if _, found, _ := store.Restore(ctx, c.Value); found {
			t.Fatalf("session %s survived the revocation", c.Value)
		}
	}
	if _, found, _ := store.Restore(ctx, b.Value); !found {
		t.Fatal("bob's session was revoked with alice's")
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// TestUserKeyTakesOnlyAString: "_user" set to anything but a string would
// tag no user (User returns "", RevokeUser misses the session), so Set
// refuses it as it refuses the middleware's own reserved key.
func TestUserKeyTakesOnlyAString(t *testing.T) {
	s := NewSession("sid-user-key", newStore(t))
	s.Set("_user", 1)
	if err := s.Save(context.Background()); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("Save after Set(\"_user\", 1) = %v, want ErrInvalidValue", err)
	}
	s = NewSession("sid-user-key-2", newStore(t))
	s.Set("_user", "alice")
	if err := s.Save(context.Background()); err != nil || s.User() != "alice" {
		t.Fatalf("Set(\"_user\", \"alice\"): %v, User %q", err, s.User())
	}
}

// "Sign out everywhere" from the user's own request leaves this session as
// Destroy does: the rest of the request sees a fresh, empty session, a flash
// set afterwards is saved under a new id, and the old cookie names nothing.
func TestRevokeUserFromTheUsersOwnRequest(t *testing.T) {
	store := newStore(t)
	srv := newAliceServer(t, store, func(s *Session, r *http.Request, w http.ResponseWriter) {
		switch r.URL.Path {
		case "/everywhere":
			n, err := s.RevokeUser(r.Context(), s.User())
			if err != nil || n != 1 {
				t.Errorf("RevokeUser = %d, %v", n, err)
			}
			if s.User() != "" || len(s.Keys()) != 0 {
				t.Errorf("after RevokeUser this request still sees user %q, keys %v", s.User(), s.Keys())
			}
			s.Set("flash", "signed out everywhere")
		case "/flash":
			fmt.Fprint(w, s.Get("flash"))
		}
	})
	srv.get(t, "/login")
	before := srv.sid(t, "session")
	srv.get(t, "/everywhere")
	after := srv.sid(t, "session")
	if after == before || after == "" {
		t.Fatalf("session id after revoking its own user: %q (was %q), want a new one", after, before)
	}
	if _, found, _ := store.Restore(context.Background(), before); found {
		t.Fatal("the revoked session is still in the store")
	}
	if _, body := srv.get(t, "/flash"); body != "signed out everywhere" {
		t.Fatalf("the flash set after RevokeUser reads %q", body)
	}
}

// TestRevokeUserOfTheOwnUserUnread: a handler that revokes the request's
// own user without reading its session first (the README's sample) still
// expires the cookie, in that response; before, the session was found gone
// only by the next request.
func TestRevokeUserOfTheOwnUserUnread(t *testing.T) {
	store := newStore(t)
	srv := newAliceServer(t, store, func(s *Session, r *http.Request, w http.ResponseWriter) {
		if r.URL.Path == "/everywhere" {
			if n, err := s.RevokeUser(r.Context(), "alice"); err != nil || n != 1 {
				t.Errorf("RevokeUser = %d, %v", n, err)
			}
		}
	})
	srv.get(t, "/login")
	resp, _ := srv.get(t, "/everywhere")
	var expired bool
	for _, c := range resp.Cookies() {
		expired = expired || c.Name == "session" && c.MaxAge < 0
	}
	if !expired {
		t.Fatalf("revoking the request's own user left the cookie: Set-Cookie %q", resp.Header.Values("Set-Cookie"))
	}
}

// UserSessions and RevokeUser: an empty user has no sessions (a visitor
// not signed in), whatever the store; a store failure wraps
// ErrStoreUnavailable, as every other store call does.
func TestUserCallsOnEmptyUserAndFailingStore(t *testing.T) {
	ctx := context.Background()
	mem := newStore(t)
	s := NewSession("", mem)
	if ids, err := s.UserSessions(ctx, ""); ids != nil || err != nil {
		t.Fatalf("UserSessions(\"\") = %v, %v; want none", ids, err)
	}
	if n, err := s.RevokeUser(ctx, ""); n != 0 || err != nil {
		t.Fatalf("RevokeUser(\"\") = %d, %v; want 0, nil", n, err)
	}
	// The store itself refuses an empty user, as a node does.
	if _, err := mem.UserSessions(ctx, ""); !errors.Is(err, transport.ErrBadRequest) {
		t.Fatalf("MemoryStore.UserSessions(\"\") = %v, want a bad request", err)
	}
	if _, err := mem.RevokeUser(ctx, ""); !errors.Is(err, transport.ErrBadRequest) {
		t.Fatalf("MemoryStore.RevokeUser(\"\") = %v, want a bad request", err)
	}
	down := NewSession("", downUserStore{mem})
	down.SetUser("alice")
	if _, err := down.UserSessions(ctx, "alice"); !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, errDown) {
		t.Fatalf("UserSessions on a failing store = %v, want ErrStoreUnavailable wrapping its error", err)
	}
	if _, err := down.RevokeUser(ctx, "alice"); !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, errDown) {
		t.Fatalf("RevokeUser on a failing store = %v, want ErrStoreUnavailable wrapping its error", err)
	}
	if down.User() != "alice" {
		t.Fatalf("a failed RevokeUser changed the session: user %q", down.User())
	}
}

// downUserStore is a MemoryStore whose user index is unreachable.
type downUserStore struct{ *MemoryStore }

func (downUserStore) UserSessions(context.Context, string) ([]string, error) { return nil, errDown }
func (downUserStore) RevokeUser(context.Context, string) (int, error)        { return 0, errDown }

// A request that loaded the session before a logout or RevokeUser elsewhere
// and then calls Regenerate (a step-up login, an id rotation) does not
// bring it back under a new id, user tag and all: the revoked account
// stays signed out. Regenerate says ErrSessionGone, and leaves the cookie
// as the revoking request set it.
func TestRegenerateDoesNotResurrectARevokedSession(t *testing.T) {
	store := newStore(t)
	ctx := context.Background()
	srv := newAliceServer(t, store, func(s *Session, r *http.Request, w http.ResponseWriter) {
		switch r.URL.Path {
		case "/rotate":
			_ = s.User()                                                        // loaded, as a handler reads it first
			if n, err := store.RevokeUser(ctx, "alice"); err != nil || n != 1 { // meanwhile, elsewhere
				t.Errorf("RevokeUser elsewhere = %d, %v", n, err)
			}
			if err := s.Regenerate(r.Context()); !errors.Is(err, ErrSessionGone) {
				t.Errorf("Regenerate of a revoked session = %v, want ErrSessionGone", err)
			}
		}
	})
	srv.get(t, "/login")
	before := srv.sid(t, "session")
	resp, _ := srv.get(t, "/rotate")
	if ids, _ := store.UserSessions(ctx, "alice"); len(ids) != 0 {
		t.Fatalf("alice has sessions %v after her revocation: Regenerate brought one back", ids)
	}
	for _, c := range resp.Cookies() {
		if c.Name == "session" && c.Value != "" && c.Value != before {
			t.Fatalf("the response set a cookie for a new session %s", c.Value)
		}
	}
}

// newAliceServer serves the middleware on store: /login signs alice in
// (Regenerate, then SetUser), and every other path goes to h.
func newAliceServer(t *testing.T, store Store, h func(s *Session, r *http.Request, w http.ResponseWriter)) *server {
	return newServer(t, Options{Store: store}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		if r.URL.Path != "/login" {
			h(s, r, w)
			return
		}
		if err := s.Regenerate(r.Context()); err != nil {
			t.Error(err)
		}
		s.SetUser("alice")
	}))
}
