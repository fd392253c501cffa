package middleware

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// logSalt is drawn once per process: the hashes in this process's logs can
// be matched with each other, never with a session id.
var logSalt = func() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // documented never to fail
	return b
}()

// sidHash is how a log line names a session: the first 12 hex characters of
// SHA-256(salt ‖ sid). Session ids are bearer credentials and are never
// logged in clear.
func sidHash(sid string) string {
	if sid == "" {
		return ""
	}
	h := sha256.New()
	h.Write(logSalt)
	h.Write([]byte(sid))
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// redact replaces every session id in msg (a store's error text may quote
// the id it failed on) by its hash.
func redact(msg string, sids ...string) string {
	for _, sid := range sids {
		if sid != "" {
			msg = strings.ReplaceAll(msg, sid, "sid:"+sidHash(sid))
		}
	}
	return msg
}

// sidForLog returns the session's current id, for a log line made outside
// the session's lock.
func (s *Session) sidForLog() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}
