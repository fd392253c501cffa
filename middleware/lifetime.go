package middleware

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kadosession/kadosession/fsm"
)

// MetaKey is the reserved data key under which the middleware keeps a
// session's timestamps when Options.IdleTimeout or Options.AbsoluteLifetime
// is set: {"created": <ms since epoch>, "seen": <ms since epoch>}. It is
// never visible through a Session (Get, GetInto and Keys skip it; Set refuses
// it) and is written only while one of those options is on; a Kado
// application sharing the store sees it as one more key.
const MetaKey = "_meta"

// sessionMeta is the value stored under MetaKey.
type sessionMeta struct {
	Created int64 `json:"created"` // when the session was created (ms)
	Seen    int64 `json:"seen"`    // when a request last used it, within IdleTimeout/4 (ms)
}

// lifetimeOn reports whether the session's middleware enforces an idle
// timeout or an absolute lifetime.
func (s *Session) lifetimeOn() bool {
	return s.web != nil && (s.web.cfg.IdleTimeout > 0 || s.web.cfg.AbsoluteLifetime > 0)
}

func (s *Session) nowMs() int64 { return s.web.cfg.now().UnixMilli() }

// takeMetaLocked removes MetaKey from freshly loaded data and remembers its
// value. A session without (valid) timestamps, stored before the options
// were turned on or by another application, is adopted as created and seen
// now, and the timestamps are written by this request.
func (s *Session) takeMetaLocked() {
	raw, ok := s.data.get(MetaKey)
	s.data.remove(MetaKey)
	s.meta, s.metaDirty = sessionMeta{}, false
	if !s.lifetimeOn() {
		return
	}
	if !ok || json.Unmarshal(raw, &s.meta) != nil || s.meta.Created <= 0 || s.meta.Seen <= 0 {
		now := s.nowMs()
		s.meta = sessionMeta{Created: now, Seen: now}
		s.metaDirty = true
		return
	}
	if idle := s.web.cfg.IdleTimeout; idle > 0 && s.nowMs()-s.meta.Seen >= (idle/4).Milliseconds() {
		s.metaDirty = true // renew "seen" even if the request only reads
	}
}

// endedLocked reports why a loaded session must not be used any more: its
// idle timeout or absolute lifetime has passed ("" when neither has).
func (s *Session) endedLocked() string {
	if !s.lifetimeOn() {
		return ""
	}
	now, cfg := s.nowMs(), s.web.cfg
	switch {
	case cfg.AbsoluteLifetime > 0 && now-s.meta.Created >= cfg.AbsoluteLifetime.Milliseconds():
		return "absolute lifetime"
	case cfg.IdleTimeout > 0 && now-s.meta.Seen >= cfg.IdleTimeout.Milliseconds():
		return "idle timeout"
	}
	return ""
}

// endLocked deletes a session whose lifetime is over and turns s into a
// fresh one, as strict mode does for an unknown id. A failed delete is only
// logged: the session stays over for every later request anyway.
func (s *Session) endLocked(ctx context.Context, why string) {
	old := s.id
	cctx, cancel := s.callCtx(ctx)
	err := s.store.Delete(cctx, old)
	cancel()
	if err != nil {
		s.web.log(hclog.Warn, "could not delete a session past its "+why, old, err)
	} else {
		s.web.log(hclog.Debug, "session ended: "+why, old, nil)
	}
	s.freshLocked()
	s.web.destroyed() // its cookie goes too, as after Destroy
}

// stampLocked records that this request uses the session for writing:
// "seen" becomes now, and a new session gets its creation time.
func (s *Session) stampLocked() {
	if !s.lifetimeOn() {
		return
	}
	now := s.nowMs()
	if s.meta.Created <= 0 {
		s.meta.Created = now
	}
	s.meta.Seen = now
	s.metaDirty = true
}

// metaValue returns the encoded timestamps.
func (s *Session) metaValue() json.RawMessage {
	b, _ := json.Marshal(s.meta) // two int64s: cannot fail
	return b
}

// withMeta returns the session's data as it is stored: plus the timestamps
// when the session carries them. s.data (what the handler sees) is left
// alone.
func (s *Session) withMeta() sessionData {
	if !s.lifetimeOn() || s.meta.Created <= 0 {
		return s.data.fields
	}
	return append(slices.Clip(s.data.fields), fsm.Field{Key: MetaKey, Value: s.metaValue()})
}

func defaultNow() time.Time { return time.Now() }
