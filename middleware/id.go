package middleware

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// idLen is the length of an id from GenerateID: a hex SHA-1 digest.
const idLen = 2 * sha1.Size

// GenerateID returns a new session id: 40 lowercase hex characters, the
// SHA-1 digest of 32 bytes from crypto/rand, the current time, ip and
// userAgent. Like Kado's generateId it mixes in the client's address and
// agent, but its unpredictability comes from the 256 random bits (Kado's had
// about 7). It is safe for concurrent use and never fails: crypto/rand does
// not return errors on supported platforms.
func GenerateID(ip, userAgent string) string {
	var seed [32 + 8]byte
	_, _ = rand.Read(seed[:32]) // documented never to fail
	binary.BigEndian.PutUint64(seed[32:], uint64(time.Now().UnixNano()))
	h := sha1.New()
	h.Write(seed[:])
	h.Write([]byte(ip))
	h.Write([]byte{0}) // keep ("a","bc") and ("ab","c") apart
	h.Write([]byte(userAgent))
	return hex.EncodeToString(h.Sum(nil))
}

// validID reports whether s has the shape of an id from GenerateID (and of
// Kado's ids): exactly 40 lowercase hex characters. The middleware ignores a
// cookie of any other shape without asking the store.
func validID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
