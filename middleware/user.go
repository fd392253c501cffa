package middleware

import (
	"context"
	"errors"

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
	var u string
	_ = s.GetInto(fsm.UserKey, &u)
	return u
}

// UserSessions lists the sessions of user in the store behind the session.
func (s *Session) UserSessions(ctx context.Context, user string) ([]string, error) {
	us, ok := s.store.(UserStore)
	if !ok {
		return nil, ErrNoUserIndex
	}
	return us.UserSessions(ctx, user)
}

// RevokeUser deletes every session of user in the store behind the
// session (this one included, if it is the user's).
func (s *Session) RevokeUser(ctx context.Context, user string) (int, error) {
	us, ok := s.store.(UserStore)
	if !ok {
		return 0, ErrNoUserIndex
	}
	return us.RevokeUser(ctx, user)
}
