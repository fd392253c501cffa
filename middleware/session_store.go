package middleware

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/fsm"
)

// loadLocked loads the session once; later calls do nothing. A load error is
// remembered in loadErr and leaves the session empty.
func (s *Session) loadLocked(ctx context.Context) {
	if s.loaded {
		return
	}
	if s.id == "" {
		// No cookie, or one of our name but not an id's shape, which is
		// left alone: it may be another application's (a parent domain's
		// "session" cookie), and expiring it would not remove that one.
		s.freshLocked()
		return
	}
	s.loaded = true
	s.dirty.clear()
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	data, found, err := restore(cctx, s.store, s.id)
	if err == nil && !found && s.web != nil && s.id == s.web.cookieID {
		data, found, err = s.web.otherCookie(cctx, s)
	}
	s.data.reset(data) // the store's answer when it found the session: no copy made
	if err != nil || !found {
		s.data.clear()
	}
	switch {
	case err != nil:
		s.loadErr = fmt.Errorf("%w: restore: %w", ErrStoreUnavailable, err)
	case !found && s.web != nil && s.id != s.web.cookieID:
		// This request's own fresh id, never saved (a Restore of a new
		// session): still fresh, and still detached if it was.
		detached := s.detached
		s.freshLocked()
		s.detached = detached
	case !found && s.web != nil:
		moved := s.movedLocked(ctx)
		s.freshLocked() // strict mode: never adopt an id the store does not hold
		switch moved {
		case movedNot:
			// A cookie naming nothing is dropped, unless a new session is
			// saved under a cookie of its own: the browser sent it with
			// every request, each a store lookup for nothing.
			s.web.destroyed()
		case movedLately:
			// The pre-login cookie of a request that raced a login: its
			// response must not replace the login's cookie, neither
			// expired nor naming a session of its own.
			s.detached = true
		case movedUnsure:
			// The cookie is left alone, but writes are kept (in a session
			// of their own): detached, a store that cannot read markers
			// (one that refuses such sids) would drop every write of
			// every visitor with a dead cookie.
		}
	case !found:
		s.isNew = true
	default:
		s.data.remove(fsm.WrittenKey)
		s.isNew = false
		s.takeMetaLocked()
		if why := s.endedLocked(); why != "" {
			// A write: it finishes even if the client has gone.
			s.endLocked(context.WithoutCancel(ctx), why) // treated as absent: a fresh id, as in strict mode
		}
	}
}

// A login's Regenerate leaves a marker under the old id plus movedSuffix
// (never a cookie's id: validID refuses the colon) holding when it moved
// the session, {"at": <ms since epoch>}. A request that carries the old
// cookie and finds the session gone within movedGrace of that was sent
// before the browser had the login's cookie (a page's other requests, a
// second tab): it gets an empty session, and its response sends no cookie
// and saves nothing, where expiring the dead cookie would log the user out
// again when that response arrives after the login's. Past movedGrace the
// old cookie is an ordinary dead one, and the marker is deleted.
const (
	movedSuffix = ":moved"
	movedGrace  = 30 * time.Second
	movedKey    = "at"
)

// moved is what a dead cookie's marker says.
type moved int

const (
	movedNot    moved = iota // no marker: an ordinary dead cookie
	movedLately              // moved by a login within movedGrace
	movedUnsure              // the marker could not be read: the cookie is not expired
)

// movedLocked looks for the marker of s.id, a cookie's id the store does
// not hold.
func (s *Session) movedLocked(ctx context.Context) moved {
	marker := s.id + movedSuffix
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	data, found, err := restore(cctx, s.store, marker)
	if err != nil {
		s.web.log(hclog.Warn, "could not tell whether a login moved this cookie's session; the dead cookie is not expired", s.id, err)
		return movedUnsure
	}
	if !found {
		return movedNot
	}
	var at int64
	_ = json.Unmarshal(markerTime(data), &at) // a marker of another shape counts as old
	// Either way: the login may have run on another server, whose clock
	// is ahead of this one's.
	if age := s.web.cfg.now().UnixMilli() - at; age > -movedGrace.Milliseconds() && age < movedGrace.Milliseconds() {
		return movedLately
	}
	dctx, dcancel := s.callCtx(context.WithoutCancel(ctx)) // a write: it finishes even if the client has gone
	defer dcancel()
	if err := s.store.Delete(dctx, marker); err != nil {
		s.web.log(hclog.Debug, "could not delete an old login's marker", s.id, err)
	}
	return movedNot
}

// markMovedLocked leaves the marker of oldID, the id a login just moved
// the session from. A failure is only logged: the login stands, and a
// request racing it may then expire the new cookie.
func (s *Session) markMovedLocked(ctx context.Context, oldID string) {
	at := strconv.AppendInt(nil, s.web.cfg.now().UnixMilli(), 10)
	data := sessionData{{Key: movedKey, Value: at}}
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	if err := save(cctx, s.store, oldID+movedSuffix, data); err != nil {
		s.web.log(hclog.Warn, "could not mark the pre-login id as moved; a request racing the login may log the user out", oldID, err)
		return
	}
	sweepMarkerLater(s.store, oldID+movedSuffix, at, s.timeout)
}

// movedSweepAfter is how long after a login the server that wrote its
// marker deletes it. A marker is needed only within movedGrace; left to
// the store's duration, every login would count twice in the store's
// sessions (kadosession status, /metrics, MemoryStore.Len) for a day. A
// server that stops meanwhile leaves its markers to expire with the
// store's duration, or to the next request with the old cookie. A
// variable for tests.
var movedSweepAfter = movedGrace + time.Second

// sweepMarkerLater deletes marker after movedSweepAfter if it still holds
// at: a second login from the same pre-login cookie (a double-clicked
// form) writes a marker of its own, which keeps its own grace. Store
// calls are bounded by timeout, or DefaultTimeout when it sets none (a
// background call has no request deadline to fall back on). Failures are
// ignored: the marker then expires with the store's duration.
func sweepMarkerLater(store Store, marker string, at []byte, timeout time.Duration) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	time.AfterFunc(movedSweepAfter, func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		data, found, err := restore(ctx, store, marker)
		if err != nil || !found {
			return
		}
		if t := markerTime(data); t != nil && !bytes.Equal(t, at) {
			return // a later login's
		}
		_ = store.Delete(ctx, marker)
	})
}

// markerTime is the time a login's marker holds (its movedKey value), or
// nil when it holds none.
func markerTime(data sessionData) json.RawMessage {
	for _, f := range data {
		if f.Key == movedKey {
			return f.Value
		}
	}
	return nil
}

// newID returns a fresh id: from the client's address and agent in a
// middleware request.
func (s *Session) newID() string {
	if s.web != nil {
		return s.web.newID()
	}
	return GenerateID("", "")
}

// freshLocked turns the session into a new, empty one under a new id.
func (s *Session) freshLocked() {
	s.id = s.newID()
	s.loaded = true
	s.isNew = true
	s.data.clear()
	s.dirty.clear()
	s.loadErr = nil
	s.valueErr = nil
	s.detached = false
	s.meta, s.metaDirty = sessionMeta{}, false
}

// Restore loads the session from the store, discarding changes not yet
// saved: Kado's restore. An unknown or expired sid gives an empty session
// (in a middleware request, under a fresh id). It returns an error wrapping
// ErrStoreUnavailable when the store fails; the session is then empty and
// the error is remembered (see Err).
func (s *Session) Restore(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loaded = false
	s.loadErr = nil
	s.valueErr = nil
	s.loadLocked(ctx)
	return s.loadErr
}

// Save writes the session's changes to the store now: Kado's save. A new
// session is written whole (Store.Save), changed keys only otherwise
// (Store.Patch), and an unchanged session is renewed (an empty
// PatchExisting when the store has it, Store.Touch otherwise). It loads
// the session first when it was not loaded. It returns the remembered error
// of a failed load or a rejected Set without writing, or an error wrapping
// ErrStoreUnavailable when the store fails (the changes stay pending and are
// tried again by the next save).
//
// In a middleware request Save is optional: the middleware saves a modified
// session before the response's first byte.
func (s *Session) Save(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saveLocked(ctx, true)
}

// saveLocked writes pending changes. explicit is false for the middleware's
// own saves, which write nothing unless the session was modified.
func (s *Session) saveLocked(ctx context.Context, explicit bool) error {
	if !s.loaded {
		if !explicit {
			return nil // never used in this request
		}
		s.loadLocked(ctx)
	}
	if s.loadErr != nil {
		return s.loadErr
	}
	if s.valueErr != nil {
		return s.valueErr
	}
	if s.detached {
		if len(s.dirty.fields) > 0 {
			s.web.log(hclog.Info, "a request sent before a login's cookie reached the browser, or after the session was deleted, changed the session; its changes were dropped", "", nil)
			s.dirty.clear()
		}
		if explicit {
			return ErrSessionGone
		}
		return nil
	}
	if s.isNew && !explicit && len(s.dirty.fields) == 0 {
		return nil // a new session nobody wrote to is not worth storing
	}
	if !explicit && !s.isNew && !s.modifiedLocked() && !s.metaDirty {
		return nil // nothing to write (a read-only request): no store call
	}
	s.stampLocked()
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	var err error
	wasNew := s.isNew
	switch {
	case s.isNew:
		err = save(cctx, s.store, s.id, s.withMeta())
	case len(s.dirty.fields) > 0 || s.metaDirty:
		set := make(sessionData, 0, len(s.dirty.fields)+1)
		var del []string
		for _, d := range s.dirty.fields {
			if v, ok := s.data.get(d.Key); ok {
				set = append(set, fsm.Field{Key: d.Key, Value: v})
			} else {
				del = append(del, d.Key)
			}
		}
		if s.metaDirty {
			set = append(set, fsm.Field{Key: MetaKey, Value: s.metaValue()})
		}
		var live bool
		live, err = patchExisting(cctx, s.store, s.id, set, del)
		if err == nil && !live {
			s.goneLocked()
			if explicit {
				return ErrSessionGone
			}
			return nil
		}
	default: // explicit, nothing changed: renew it
		var live bool
		live, err = renewExisting(cctx, s.store, s.id)
		if err == nil && !live {
			s.goneLocked()
			return ErrSessionGone
		}
	}
	if err != nil {
		return StoreError("save", err)
	}
	s.isNew = false
	s.metaDirty = false
	s.dirty.clear()
	if s.web != nil {
		s.web.saved(s.id, wasNew)
	}
	return nil
}

// goneLocked turns s, whose session was deleted since this request loaded
// it, into a fresh, empty one: the deletion (a logout or a login's
// Regenerate elsewhere) wins over this request's changes, which are
// dropped. The response leaves the client's cookie alone: the request that
// deleted the session has set it already (expired after a logout, a new id
// after a login), and expiring it here would undo a login.
func (s *Session) goneLocked() {
	old := s.id
	s.freshLocked()
	if s.web != nil {
		s.web.log(hclog.Info, "the session was deleted while this request used it (a logout, login or revocation elsewhere); its changes were dropped", old, nil)
		s.web.cookie = cookieKeep
		// Nor do later changes in this request save a session of their
		// own, whose cookie would replace a login's.
		s.detached = true
	}
}

// Regenerate moves the session to a new id, keeping its data (unsaved
// changes included): call it when a user logs in, so an id planted before
// the login is worthless after it. The data is saved whole under the new id,
// then the old id is deleted from the store; in a middleware request the
// cookie is updated, and a small record under the old id plus ":moved"
// (never a valid cookie) notes when, so that for the next 30 seconds a
// request still carrying the old cookie (sent before the login's response
// arrived) gets an empty session that saves nothing and sends no cookie,
// instead of expiring or replacing the login's cookie. That record lasts
// as a session does (the store's duration), or until the old cookie comes
// back after the 30 seconds; it holds no session data and names no user.
//
// It returns ErrHeadersSent (changing nothing) when the response's headers
// already went out, ErrSessionGone when the session was deleted since this
// request loaded it (a logout or RevokeUser elsewhere: the session is then a
// fresh, empty one, which a further Regenerate moves as a new session), the
// remembered error of a failed load or rejected Set, or an error wrapping
// ErrStoreUnavailable. When saving under the new id fails
// nothing changed; when only deleting the old id fails, the session has
// moved but the old id may still be valid until it expires.
func (s *Session) Regenerate(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.web != nil && s.web.headersSent {
		return ErrHeadersSent
	}
	loadedBefore := s.loaded
	s.loadLocked(ctx)
	if s.loadErr != nil {
		return s.loadErr
	}
	if s.valueErr != nil {
		return s.valueErr
	}
	newID := s.newID()
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	if loadedBefore && !s.isNew && s.id != "" {
		// Saved whole under a new id, a session a logout or RevokeUser
		// deleted since this request loaded it would come back, its user
		// tag and all: look first (a session loaded just now is current).
		_, found, err := restore(cctx, s.store, s.id)
		if err != nil {
			return StoreError("regenerate: look up the session", err)
		}
		if !found {
			s.goneLocked()
			return ErrSessionGone
		}
	}
	s.stampLocked() // the creation time moves with the data: no lifetime renewal by regenerating
	if err := save(cctx, s.store, newID, s.withMeta()); err != nil {
		return StoreError("regenerate: save under the new id", err)
	}
	oldID, wasNew := s.id, s.isNew
	s.id = newID
	s.isNew = false
	s.detached = false // a login from a request that raced another: the later login wins
	s.metaDirty = false
	s.dirty.clear()
	if s.web != nil {
		s.web.saved(newID, true)
	}
	if wasNew {
		return nil // the old id was never stored
	}
	if s.web != nil {
		s.markMovedLocked(ctx, oldID) // before the delete: whoever finds the old id gone finds the marker
	}
	dctx, dcancel := s.callCtx(ctx)
	defer dcancel()
	if err := s.store.Delete(dctx, oldID); err != nil {
		return fmt.Errorf("%w: regenerate: delete the old id: %w", ErrStoreUnavailable, err)
	}
	return nil
}

// Destroy deletes the session from the store and empties it: call it when a
// user logs out. In a middleware request the session becomes a new, empty
// one under a fresh id (saved, with its own cookie, only if the handler then
// writes to it), and the client's cookie is expired — unless the headers
// already went out, in which case the stale cookie stays in the browser but
// names nothing. In a request whose session was gone already (a login
// moved it moments ago, or it was deleted while the request ran) it leaves
// the cookie alone: it may name the login's session by now. It returns an
// error wrapping ErrStoreUnavailable, changing nothing, when the store
// fails.
func (s *Session) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.detached {
		// The session this request came with is gone already (moved by
		// a login, or deleted): the cookie may name the login's session
		// by now, and is left alone.
		s.data.clear()
		s.dirty.clear()
		return nil
	}
	if s.id != "" && !(s.loaded && s.isNew && s.web != nil) {
		cctx, cancel := s.callCtx(ctx)
		defer cancel()
		if err := s.store.Delete(cctx, s.id); err != nil {
			return fmt.Errorf("%w: destroy: %w", ErrStoreUnavailable, err)
		}
	}
	s.destroyedLocked()
	return nil
}

// destroyedLocked empties the session once the store no longer holds it.
func (s *Session) destroyedLocked() {
	if s.web == nil {
		id := s.id
		s.freshLocked()
		s.id = id // Kado-style sessions keep the id they were made with
		return
	}
	s.freshLocked()
	s.web.destroyed()
}
