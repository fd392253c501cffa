package gorillastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/middleware"
)

// ErrInvalidCookie is wrapped by the error New and Get return for a cookie
// that fails its signature, decryption or age check, or decodes to an
// impossible id; the securecookie error is in the chain too (errors.As with
// securecookie.Error). The session returned with it is new.
var ErrInvalidCookie = errors.New("gorillastore: invalid session cookie")

// Store is a gorilla/sessions Store keeping session values in a kadosession
// middleware.Store and only a signed id in the cookie.
//
// Its methods are safe for concurrent use by many goroutines, provided the
// exported fields are set before the Store is first used and not changed
// afterwards.
type Store struct {
	// Codecs sign (and optionally encrypt) the id in the cookie; New builds
	// them from its key pairs with securecookie.CodecsFromPairs.
	Codecs []securecookie.Codec
	// Options is the default cookie configuration each new session copies:
	// Path "/", MaxAge six hours (middleware.DefaultDuration), HttpOnly,
	// SameSite=Lax. Change MaxAge through the MaxAge method so the codecs
	// agree.
	Options *sessions.Options
	// Serializer encodes the values; nil means GobSerializer.
	Serializer Serializer

	store middleware.Store
}

var _ sessions.Store = (*Store)(nil)

// New returns a Store keeping sessions in store, with cookies signed by
// keyPairs as in gorilla's NewCookieStore: for each pair a hash key (32 or
// 64 bytes recommended) and an optional encryption key (16, 24 or 32 bytes
// for AES), the first pair used to encode and all tried to decode (key
// rotation). It never fails; without a hash key every Save and every Get
// with a cookie returns securecookie's error. store must not be nil.
func New(store middleware.Store, keyPairs ...[]byte) *Store {
	s := &Store{
		Codecs: securecookie.CodecsFromPairs(keyPairs...),
		Options: &sessions.Options{
			Path:     "/",
			HttpOnly: true,
			SameSite: http.SameSiteLaxMode,
		},
		store: store,
	}
	s.MaxAge(int(middleware.DefaultDuration / time.Second))
	return s
}

// MaxAge sets the default cookie MaxAge, in seconds, and the age beyond
// which the codecs refuse a cookie's signature (for a positive age). Keep
// it no longer than the kadosession store's session duration: a cookie that
// outlives its session only leads to a new one. Not safe to call
// concurrently with the other methods.
func (s *Store) MaxAge(age int) {
	s.Options.MaxAge = age
	for _, c := range s.Codecs {
		if sc, ok := c.(*securecookie.SecureCookie); ok {
			sc.MaxAge(age)
		}
	}
}

// Get returns the session called name for r, cached in r's
// sessions.Registry: the first call per request runs New, later calls
// return the same *sessions.Session (and the first call's error). See New
// for the error contract.
func (s *Store) Get(r *http.Request, name string) (*sessions.Session, error) {
	return sessions.GetRegistry(r).Get(s, name)
}

// New loads the session called name for r without caching it; it never
// returns a nil session. Without a cookie, or with a validly signed cookie
// whose id the store does not hold, it returns a new empty session (IsNew,
// ID "") and a nil error: Save gives it a fresh id. With a cookie that
// fails verification it returns a new session and an error wrapping
// ErrInvalidCookie; when the store cannot answer, a new session that Save
// refuses and an error wrapping middleware.ErrStoreUnavailable; when the stored data
// cannot be decoded, a new session and an error wrapping ErrDecode. The
// store call uses r's context.
func (s *Store) New(r *http.Request, name string) (*sessions.Session, error) {
	session := sessions.NewSession(s, name)
	opts := *s.Options
	session.Options = &opts
	session.IsNew = true

	c, err := r.Cookie(name)
	if err != nil {
		return session, nil // no cookie: a new session
	}
	var id string
	if err := securecookie.DecodeMulti(name, c.Value, &id, s.Codecs...); err != nil {
		return session, fmt.Errorf("%w: %w", ErrInvalidCookie, err)
	}
	if err := fsm.ValidateSID(id); err != nil {
		return session, fmt.Errorf("%w: %w", ErrInvalidCookie, err)
	}
	data, found, err := s.store.Restore(r.Context(), id)
	if err != nil {
		err = fmt.Errorf("%w: gorillastore: load session: %w", middleware.ErrStoreUnavailable, err)
		session.Values[loadFailed{}] = err
		return session, err
	}
	if !found {
		return session, nil // strict: never adopt an unknown id
	}
	if err := s.serializer().Deserialize(data, session.Values); err != nil {
		clear(session.Values)
		return session, err
	}
	session.ID = id
	session.IsNew = false
	return session, nil
}

// loadFailed is the key under which New leaves, in the Values of the new
// session it returns when the store could not answer, the error it
// returned: Save refuses such a session.
type loadFailed struct{}

// Save stores session and sets its cookie on w. With session.Options.MaxAge
// < 0 it instead deletes the stored session (when it has an id) and sets a
// cookie that expires the browser's; the cookie is expired even when the
// delete fails, whose error (wrapping middleware.ErrStoreUnavailable) then
// means the session may still be stored. Otherwise a session without an id
// gets a fresh one from middleware.GenerateID, its values replace the
// stored ones (renewing its lifetime), and only then is the cookie set. An
// error wrapping ErrEncode means the values cannot be serialized;
// middleware.ErrSessionGone that the session was loaded from the store and
// has been deleted since (a logout elsewhere), so nothing was saved;
// middleware.ErrStoreUnavailable that the save may not have happened, or
// that session is the new one New returned when the store could not
// answer, which is not saved (gorilla's usual `s, _ := store.Get(r, name)`
// then saving would replace the user's stored session under a new id, and
// log the user out, after one failed read; give it new Values,
// session.Values = map[any]any{}, to save it as a new session anyway);
// middleware.ErrSessionTooLarge or ErrInvalidValue that the store refused
// the values; a securecookie error that the id could not be encoded (no
// hash key). No cookie is set on an error. The store calls use r's context
// without its cancellation (writeContext). Save must be called before the
// response's headers are written.
func (s *Store) Save(r *http.Request, w http.ResponseWriter, session *sessions.Session) error {
	opts := session.Options
	if opts == nil {
		opts = s.Options
	}
	if opts.MaxAge < 0 {
		var err error
		if session.ID != "" {
			if derr := s.store.Delete(writeContext(r), session.ID); derr != nil {
				err = middleware.StoreError("gorillastore: delete session", derr)
			}
		}
		http.SetCookie(w, sessions.NewCookie(session.Name(), "", opts))
		return err
	}

	if err, ok := session.Values[loadFailed{}].(error); ok {
		return fmt.Errorf("gorillastore: save session: not saved, since loading it failed (saved, it would have replaced the stored one under a new id and logged its user out): %w", err)
	}
	data, err := s.serializer().Serialize(session.Values)
	if err != nil {
		return err
	}
	if session.ID == "" {
		session.ID = middleware.GenerateID(clientIP(r), r.UserAgent())
	}
	encoded, err := securecookie.EncodeMulti(session.Name(), session.ID, s.Codecs...)
	if err != nil {
		return fmt.Errorf("gorillastore: encode cookie: %w", err)
	}
	if err := s.write(writeContext(r), session, data); err != nil {
		return err
	}
	http.SetCookie(w, sessions.NewCookie(session.Name(), encoded, opts))
	return nil
}

// writeContext is the context of Save's store calls: r's, without its
// cancellation, so that a save or a logout that started finishes when the
// client leaves (a logout cancelled halfway left the session alive), as
// the middleware's saves do; the store's own limits bound it (for the Go
// client, Config.RequestTimeout per attempt, and its retries).
func writeContext(r *http.Request) context.Context { return context.WithoutCancel(r.Context()) }

// write stores data as session's values. A session loaded from the store
// is written only if it still exists, with the store's PatchExisting when
// it has one (its fields set, the ones no longer there deleted): saved
// whole, a session a logout deleted meanwhile, in another request, came
// back with its user and all.
func (s *Store) write(ctx context.Context, session *sessions.Session, data map[string]json.RawMessage) error {
	p, ok := s.store.(middleware.ExistingPatcher)
	if session.IsNew || !ok {
		if err := s.store.Save(ctx, session.ID, data); err != nil {
			return middleware.StoreError("gorillastore: save session", err)
		}
		return nil
	}
	var del []string
	if _, gob := s.serializer().(GobSerializer); !gob {
		// Which fields to delete: the stored ones the values no longer
		// have (GobSerializer's one field is always set).
		cur, found, err := s.store.Restore(ctx, session.ID)
		if err != nil {
			return middleware.StoreError("gorillastore: save session: look it up", err)
		}
		if !found {
			return fmt.Errorf("gorillastore: save session: %w", middleware.ErrSessionGone)
		}
		for k := range cur {
			if _, keep := data[k]; !keep {
				del = append(del, k)
			}
		}
	}
	saved, err := p.PatchExisting(ctx, session.ID, data, del)
	if err != nil {
		return middleware.StoreError("gorillastore: save session", err)
	}
	if !saved {
		return fmt.Errorf("gorillastore: save session: %w", middleware.ErrSessionGone)
	}
	return nil
}

func (s *Store) serializer() Serializer {
	if s.Serializer == nil {
		return GobSerializer{}
	}
	return s.Serializer
}

// clientIP is r's remote host, mixed into a new id as Kado did.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
