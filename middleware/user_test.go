package middleware

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
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
