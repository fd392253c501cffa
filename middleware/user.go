package middleware

import (
	"context"
	"errors"
	"fmt"

	"github.com/kadosession/kadosession/fsm"
)

// UserStore is a Store that can list and revoke every session of one user
// (sessions tagged with Session.SetUser): MemoryStore and the cluster
// client both are. Its methods are safe for concurrent use.
type UserStore interface {
	Store
	// UserSessions returns the ids of the user's live sessions.
	UserSessions(ctx context.Context, user string) ([]string, error)
	// RevokeUser deletes all of the user's sessions and returns how many.
	RevokeUser(ctx context.Context, user string) (int, error)
}

// ErrNoUserIndex is returned when the store cannot list or revoke a
// user's sessions (it is not a UserStore).
var ErrNoUserIndex = errors.New("session: the store cannot list sessions by user")

// SetUser tags the session with a user id (saved under the reserved key
// "_user"), so that UserSessions and RevokeUser find it: "sign out
// everywhere", or revoking a compromised account's sessions. An empty id
// removes the tag. Call it at login, typically right after Regenerate.
func (s *Session) SetUser(id string) *Session {
	if id == "" {
		return s.Delete(fsm.UserKey)
	}
	return s.Set(fsm.UserKey, id)
}

// User returns the user id the session is tagged with, or "".
func (s *Session) User() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(s.loadCtx())
	return s.userLocked()
}

// UserSessions lists the sessions of user in the store behind the session.
// An empty user has none (a visitor who is not signed in). A store failure
// is an error wrapping ErrStoreUnavailable, as for every other store call.
func (s *Session) UserSessions(ctx context.Context, user string) ([]string, error) {
	us, ok := s.store.(UserStore)
	if !ok {
		return nil, ErrNoUserIndex
	}
	if user == "" {
		return nil, nil
	}
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	ids, err := us.UserSessions(cctx, user)
	if err != nil {
		return nil, fmt.Errorf("%w: user sessions: %w", ErrStoreUnavailable, err)
	}
	return ids, nil
}

// RevokeUser deletes every session of user in the store behind the session
// and returns how many it deleted: "sign out everywhere". When this session
// is the user's, it is left as Destroy leaves it: the rest of the request
// sees a fresh, empty session (saved under a new id if the handler sets
// anything, a flash message say), and the browser's cookie is expired. An
// empty user has no sessions. A store failure is an error wrapping
// ErrStoreUnavailable, and changes nothing here.
func (s *Session) RevokeUser(ctx context.Context, user string) (int, error) {
	us, ok := s.store.(UserStore)
	if !ok {
		return 0, ErrNoUserIndex
	}
	if user == "" {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Loaded first, to tell whether it is the user's: unloaded, it was
	// found gone only by a later request, which then expired the cookie.
	s.loadLocked(ctx)
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	n, err := us.RevokeUser(cctx, user)
	if err != nil {
		return 0, fmt.Errorf("%w: revoke user: %w", ErrStoreUnavailable, err)
	}
	if s.loaded && s.userLocked() == user {
		s.destroyedLocked()
	}
	return n, nil
}

// userLocked is User with s.mu held and the session loaded.
func (s *Session) userLocked() string {
	var u string
	_ = s.getIntoLocked(fsm.UserKey, &u)
	return u
}
