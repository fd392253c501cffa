package fsm

import (
	"bytes"
	"encoding/json"
	"slices"
	"sync"
)

// UserKey is the data key that tags a session with the id of its user
// (middleware Session.SetUser). The state machine keeps an index from user
// to sessions, rebuilt from the data on restore, so a snapshot (the
// save-file document) carries it without a format of its own.
const UserKey = "_user"

// userOf returns the user a session's compact data names, or "".
func userOf(data []byte) string {
	if !bytes.Contains(data, []byte(`"`+UserKey+`"`)) {
		return ""
	}
	fields, _, err := splitCompact(data, true) // dropped before data could change
	if err != nil {
		return ""
	}
	for _, f := range fields {
		if f.Key == UserKey {
			var u string
			if json.Unmarshal(f.Value, &u) == nil {
				return u
			}
		}
	}
	return ""
}

// userIndex maps users to their sessions. Apply updates it (one goroutine);
// readers may list concurrently.
type userIndex struct {
	mu   sync.RWMutex
	sids map[string]map[string]struct{}
}

func (u *userIndex) move(sid, from, to string) {
	if from == to {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if from != "" {
		if set := u.sids[from]; set != nil {
			delete(set, sid)
			if len(set) == 0 {
				delete(u.sids, from)
			}
		}
	}
	if to != "" {
		if u.sids == nil {
			u.sids = map[string]map[string]struct{}{}
		}
		set := u.sids[to]
		if set == nil {
			set = map[string]struct{}{}
			u.sids[to] = set
		}
		set[sid] = struct{}{}
	}
}

func (u *userIndex) list(user string) []string {
	u.mu.RLock()
	defer u.mu.RUnlock()
	out := make([]string, 0, len(u.sids[user]))
	for sid := range u.sids[user] {
		out = append(out, sid)
	}
	slices.Sort(out)
	return out
}

func (u *userIndex) reset(m map[string]map[string]struct{}) {
	u.mu.Lock()
	u.sids = m
	u.mu.Unlock()
}

// UserSessions returns the ids of the sessions tagged with user that have
// not expired at now for the given lifetime (ms), in byte order.
func (s *State) UserSessions(user string, now, duration int64) []string {
	var out []string
	for _, sid := range s.users.list(user) {
		if _, ok := s.Get(sid, now, duration); ok {
			out = append(out, sid)
		}
	}
	return out
}

// deleteUser removes every session of user and returns how many.
func (s *State) deleteUser(user string) int {
	n := 0
	for _, sid := range s.users.list(user) {
		n += s.remove(sid)
	}
	return n
}

// remove deletes one session and its index entry; 1 if it existed.
func (s *State) remove(sid string) int { return s.removeIf(sid, nil) }

// removeIf removes the session sid if it exists and cond (when not nil)
// holds for it, and returns how many it removed (0 or 1).
func (s *State) removeIf(sid string, cond func(*Record) bool) int {
	sh := s.shard(sid)
	sh.mu.Lock()
	old, ok := sh.sessions[sid]
	ok = ok && (cond == nil || cond(old))
	if ok {
		sh.own()
		delete(sh.sessions, sid)
	}
	sh.mu.Unlock()
	if !ok {
		return 0
	}
	s.users.move(sid, old.User, "")
	return 1
}
