package gorillastore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/kadosession/kadosession/middleware"
	"github.com/kadosession/kadosession/middleware/gorillastore"
)

const name = "session"

var hexID = regexp.MustCompile(`^[0-9a-f]{40}$`)

// newApp serves a small app on gs: /set?k=v stores a value (and an int key
// with the gob serializer), /get?k= prints one, /id prints the session id,
// /logout saves with MaxAge -1. A failed Get answers 200 with "error: …"
// first, so tests can see it.
func newApp(t *testing.T, gs *gorillastore.Store) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	load := func(w http.ResponseWriter, r *http.Request) *sessions.Session {
		s, err := gs.Get(r, name)
		if s == nil {
			t.Errorf("Get returned a nil session (err %v)", err)
		}
		if err != nil {
			fmt.Fprintf(w, "error: %v\n", err)
		}
		return s
	}
	mux.HandleFunc("/set", func(w http.ResponseWriter, r *http.Request) {
		s, err := gs.Get(r, name)
		if err != nil {
			t.Logf("Get: %v", err)
		}
		for k, v := range r.URL.Query() {
			s.Values[k] = v[0]
		}
		if _, isJSON := gs.Serializer.(gorillastore.JSONSerializer); !isJSON {
			s.Values[42] = "answer"
		}
		if err := s.Save(r, w); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, s.ID)
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		s := load(w, r)
		fmt.Fprint(w, s.Values[r.URL.Query().Get("k")])
	})
	mux.HandleFunc("/id", func(w http.ResponseWriter, r *http.Request) {
		s := load(w, r)
		fmt.Fprintf(w, "%s new=%v", s.ID, s.IsNew)
	})
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
		s := load(w, r)
		s.Options.MaxAge = -1
		if err := s.Save(r, w); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store) {
		gs := gorillastore.New(store, hashKey)
		srv := newApp(t, gs)
		c := newJarClient(t)

		if got := get(t, c, srv.URL+"/id"); got != " new=true" {
			t.Fatalf("first visit: %q, want a new session without an id", got)
		}
		id := get(t, c, srv.URL+"/set?user=alice")
		if !hexID.MatchString(id) {
			t.Fatalf("saved id %q is not 40 hex", id)
		}
		if got := get(t, c, srv.URL+"/get?k=user"); got != "alice" {
			t.Fatalf("get user = %q, want alice", got)
		}
		if got := get(t, c, srv.URL+"/id"); got != id+" new=false" {
			t.Fatalf("second visit: %q, want %s new=false", got, id)
		}
		// An update keeps the id and every value.
		if id2 := get(t, c, srv.URL+"/set?theme=dark"); id2 != id {
			t.Fatalf("id changed on update: %s -> %s", id, id2)
		}
		if got := get(t, c, srv.URL+"/get?k=user") + "," + get(t, c, srv.URL+"/get?k=theme"); got != "alice,dark" {
			t.Fatalf("values = %q, want alice,dark", got)
		}

		// The cookie holds only the signed id; the values are in kadosession.
		ck := cookie(c, srv, name)
		if ck == nil {
			t.Fatal("no cookie")
		}
		if strings.Contains(ck.Value, "alice") {
			t.Fatal("cookie carries session data")
		}
		var cookieID string
		if err := securecookie.DecodeMulti(name, ck.Value, &cookieID, gs.Codecs...); err != nil || cookieID != id {
			t.Fatalf("cookie decodes to %q, %v; want %s", cookieID, err, id)
		}
		data, found, err := store.Restore(context.Background(), id)
		if err != nil || !found || data["gob"] == nil {
			t.Fatalf("stored session = %v, %v, %v; want a gob field", data, found, err)
		}
	})
}

// TestGobNonStringKeys: the default serializer keeps keys and values of
// any gob type.
func TestGobNonStringKeys(t *testing.T) {
	store := openMemory(t)
	gs := gorillastore.New(store, hashKey)
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := gs.New(r, name)
	s.Values[42] = "answer"
	s.Values["n"] = 7
	s.AddFlash("saved")
	if err := gs.Save(r, w, s); err != nil {
		t.Fatal(err)
	}
	r2 := httptest.NewRequest("GET", "/", nil)
	r2.AddCookie(w.Result().Cookies()[0])
	s2, err := gs.New(r2, name)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Values[42] != "answer" || s2.Values["n"] != 7 {
		t.Fatalf("values = %v", s2.Values)
	}
	if f := s2.Flashes(); len(f) != 1 || f[0] != "saved" {
		t.Fatalf("flashes = %v", f)
	}
}

func TestJSONSerializer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store) {
		gs := gorillastore.New(store, hashKey)
		gs.Serializer = gorillastore.JSONSerializer{}
		srv := newApp(t, gs)
		c := newJarClient(t)
		id := get(t, c, srv.URL+"/set?user=alice")
		if got := get(t, c, srv.URL+"/get?k=user"); got != "alice" {
			t.Fatalf("get user = %q", got)
		}
		// Stored as plain kadosession fields.
		data, found, err := store.Restore(context.Background(), id)
		if err != nil || !found || string(data["user"]) != `"alice"` {
			t.Fatalf("stored = %v, %v, %v; want user=\"alice\"", data, found, err)
		}

		// A non-string key cannot be stored.
		r := httptest.NewRequest("GET", "/", nil)
		s, _ := gs.New(r, name)
		s.Values[1] = "x"
		if err := gs.Save(r, httptest.NewRecorder(), s); !errors.Is(err, gorillastore.ErrEncode) {
			t.Fatalf("Save with an int key = %v; want ErrEncode", err)
		}
	})
}

func TestMaxAgeNegativeDeletes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store) {
		srv := newApp(t, gorillastore.New(store, hashKey))
		c := newJarClient(t)
		id := get(t, c, srv.URL+"/set?user=alice")
		get(t, c, srv.URL+"/logout")
		if _, found, err := store.Restore(context.Background(), id); err != nil || found {
			t.Fatalf("session after logout: found=%v err=%v; want deleted", found, err)
		}
		if ck := cookie(c, srv, name); ck != nil {
			t.Fatalf("cookie after logout: %v", ck)
		}
		if got := get(t, c, srv.URL+"/id"); got != " new=true" {
			t.Fatalf("after logout: %q, want a new session", got)
		}
	})
}

func TestMaxAgeNegativeStoreDown(t *testing.T) {
	fs := &failingStore{Store: openMemory(t)}
	gs := gorillastore.New(fs, hashKey)
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := gs.New(r, name)
	if err := gs.Save(r, httptest.NewRecorder(), s); err != nil {
		t.Fatal(err)
	}
	fs.down.Store(true)
	s.Options.MaxAge = -1
	w := httptest.NewRecorder()
	err := gs.Save(r, w, s)
	if !errors.Is(err, errDown) || !errors.Is(err, middleware.ErrStoreUnavailable) {
		t.Fatalf("Save = %v; want errDown wrapped in ErrStoreUnavailable", err)
	}
	if cks := w.Result().Cookies(); len(cks) != 1 || cks[0].MaxAge >= 0 {
		t.Fatalf("cookies = %v; want one expiring cookie", cks)
	}
}

func TestTamperedCookie(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store) {
		gs := gorillastore.New(store, hashKey)
		srv := newApp(t, gs)
		c := newJarClient(t)
		id := get(t, c, srv.URL+"/set?user=alice")
		ck := cookie(c, srv, name)

		// Flip one character of the signed value.
		v := []byte(ck.Value)
		i := len(v) / 2
		if v[i] == 'A' {
			v[i] = 'B'
		} else {
			v[i] = 'A'
		}
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(&http.Cookie{Name: name, Value: string(v)})
		s, err := gs.Get(r, name)
		if s == nil || !s.IsNew || s.ID != "" || len(s.Values) != 0 {
			t.Fatalf("session for a tampered cookie = %+v; want a new empty one", s)
		}
		var sErr securecookie.Error
		if !errors.Is(err, gorillastore.ErrInvalidCookie) || !errors.As(err, &sErr) {
			t.Fatalf("Get = %v; want ErrInvalidCookie wrapping a securecookie.Error", err)
		}
		w := httptest.NewRecorder()
		if err := s.Save(r, w); err != nil {
			t.Fatal(err)
		}
		if s.ID == id || !hexID.MatchString(s.ID) {
			t.Fatalf("id after saving = %q (tampered one named %s)", s.ID, id)
		}

		// A cookie signed with another key is refused the same way.
		other := gorillastore.New(store, []byte("another key, another key, 32 b!"))
		r2 := httptest.NewRequest("GET", "/", nil)
		r2.AddCookie(ck)
		if s, err := other.New(r2, name); !errors.Is(err, gorillastore.ErrInvalidCookie) || s == nil || !s.IsNew {
			t.Fatalf("New with a foreign key = %v, %v", s, err)
		}
	})
}

// TestUnknownID: a validly signed cookie naming an id the store does not
// hold is never adopted.
func TestUnknownID(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store) {
		gs := gorillastore.New(store, hashKey)
		srv := newApp(t, gs)
		c := newJarClient(t)
		planted := middleware.GenerateID("attacker", "agent")
		enc, err := securecookie.EncodeMulti(name, planted, gs.Codecs...)
		if err != nil {
			t.Fatal(err)
		}
		c.Jar.SetCookies(mustURL(t, srv.URL), []*http.Cookie{{Name: name, Value: enc, Path: "/"}})
		if got := get(t, c, srv.URL+"/id"); got != " new=true" {
			t.Fatalf("unknown id: %q, want a new session without an id (no error)", got)
		}
		id := get(t, c, srv.URL+"/set?user=alice")
		if id == planted || !hexID.MatchString(id) {
			t.Fatalf("saved under %q; the planted id was %s", id, planted)
		}
		if _, found, _ := store.Restore(context.Background(), planted); found {
			t.Fatal("the planted id was stored")
		}

		// A session deleted behind the cookie's back is not resurrected
		// either.
		if err := store.Delete(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		if id2 := get(t, c, srv.URL+"/set?user=bob"); id2 == id {
			t.Fatal("a deleted session's id was reused")
		}
	})
}

func TestCookieAttributes(t *testing.T) {
	gs := gorillastore.New(openMemory(t), hashKey)
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := gs.New(r, name)
	w := httptest.NewRecorder()
	if err := gs.Save(r, w, s); err != nil {
		t.Fatal(err)
	}
	cks := w.Result().Cookies()
	if len(cks) != 1 {
		t.Fatalf("cookies = %v", cks)
	}
	ck := cks[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" || ck.MaxAge != 6*3600 {
		t.Fatalf("cookie = %+v; want HttpOnly, SameSite=Lax, Path=/, MaxAge=21600", ck)
	}
}

// TestGetRegistry: Get caches one session per request and name.
func TestGetRegistry(t *testing.T) {
	gs := gorillastore.New(openMemory(t), hashKey)
	r := httptest.NewRequest("GET", "/", nil)
	a, err1 := gs.Get(r, name)
	b, err2 := gs.Get(r, name)
	if err1 != nil || err2 != nil || a != b {
		t.Fatalf("Get twice = %p, %p (%v, %v); want the same session", a, b, err1, err2)
	}
	if c, _ := gs.New(r, name); c == a {
		t.Fatal("New returned the cached session")
	}
}

func TestStoreUnavailable(t *testing.T) {
	fs := &failingStore{Store: openMemory(t)}
	gs := gorillastore.New(fs, hashKey)
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := gs.New(r, name)
	w := httptest.NewRecorder()
	if err := gs.Save(r, w, s); err != nil {
		t.Fatal(err)
	}
	fs.down.Store(true)
	r2 := httptest.NewRequest("GET", "/", nil)
	r2.AddCookie(w.Result().Cookies()[0])
	s2, err := gs.New(r2, name)
	if s2 == nil || !s2.IsNew || !errors.Is(err, middleware.ErrStoreUnavailable) || !errors.Is(err, errDown) {
		t.Fatalf("New with the store down = %v, %v", s2, err)
	}
	w2 := httptest.NewRecorder()
	if err := gs.Save(r2, w2, s2); !errors.Is(err, middleware.ErrStoreUnavailable) {
		t.Fatalf("Save with the store down = %v", err)
	}
	if len(w2.Result().Cookies()) != 0 {
		t.Fatal("a cookie was set for a session that was not saved")
	}

	// Back up, a session whose load failed is still not saved: gorilla's
	// usual `s, _ := store.Get(r, name)` then saving gave the user a new id
	// and cookie after one failed read, and logged them out.
	fs.down.Store(false)
	s2.Values["flash"] = "hi"
	w3 := httptest.NewRecorder()
	if err := gs.Save(r2, w3, s2); !errors.Is(err, middleware.ErrStoreUnavailable) || !errors.Is(err, errDown) {
		t.Fatalf("Save of a session whose load failed = %v", err)
	}
	if len(w3.Result().Cookies()) != 0 {
		t.Fatal("a cookie was set for a session whose load failed")
	}
	if s3, err := gs.New(r2, name); err != nil || s3.IsNew {
		t.Fatalf("the stored session after the refused save: %+v, %v", s3, err)
	}
	// New Values: saved as a new session.
	s2.Values = map[any]any{"fresh": true}
	w5 := httptest.NewRecorder()
	if err := gs.Save(r2, w5, s2); err != nil || len(w5.Result().Cookies()) != 1 || s2.ID == "" {
		t.Fatalf("Save of the session given new Values = %v", err)
	}
	// A logout while the store is down still expires the cookie.
	fs.down.Store(true)
	s4, err := gs.New(r2, name)
	if !errors.Is(err, middleware.ErrStoreUnavailable) {
		t.Fatalf("New with the store down again = %v", err)
	}
	s4.Options.MaxAge = -1
	w4 := httptest.NewRecorder()
	if err := gs.Save(r2, w4, s4); err != nil || len(w4.Result().Cookies()) != 1 || w4.Result().Cookies()[0].MaxAge >= 0 {
		t.Fatalf("a logout after a failed load = %v, cookies %v", err, w4.Result().Cookies())
	}
}

// TestUndecodableData: data the serializer cannot read gives a new session
// and ErrDecode.
func TestUndecodableData(t *testing.T) {
	store := openMemory(t)
	gs := gorillastore.New(store, hashKey)
	id := middleware.GenerateID("", "")
	if err := store.Save(context.Background(), id, map[string]json.RawMessage{"user": json.RawMessage(`"alice"`)}); err != nil {
		t.Fatal(err)
	}
	enc, _ := securecookie.EncodeMulti(name, id, gs.Codecs...)
	r := httptest.NewRequest("GET", "/", nil)
	r.AddCookie(&http.Cookie{Name: name, Value: enc})
	s, err := gs.New(r, name)
	if !errors.Is(err, gorillastore.ErrDecode) || s == nil || !s.IsNew || s.ID != "" || len(s.Values) != 0 {
		t.Fatalf("New over foreign data = %+v, %v", s, err)
	}
}

func TestNoHashKey(t *testing.T) {
	gs := gorillastore.New(openMemory(t))
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := gs.New(r, name)
	if err := gs.Save(r, httptest.NewRecorder(), s); err == nil {
		t.Fatal("Save without a hash key succeeded")
	}
}

// TestKeyRotation: a cookie signed with an old key pair is still read when
// that pair follows the new one.
func TestKeyRotation(t *testing.T) {
	store := openMemory(t)
	oldKey := []byte("the old hash key, 32 bytes long!")
	old := gorillastore.New(store, oldKey)
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := old.New(r, name)
	s.Values["user"] = "alice"
	w := httptest.NewRecorder()
	if err := old.Save(r, w, s); err != nil {
		t.Fatal(err)
	}
	rotated := gorillastore.New(store, hashKey, nil, oldKey, nil)
	r2 := httptest.NewRequest("GET", "/", nil)
	r2.AddCookie(w.Result().Cookies()[0])
	s2, err := rotated.New(r2, name)
	if err != nil || s2.IsNew || s2.Values["user"] != "alice" {
		t.Fatalf("rotated New = %v, %v", s2, err)
	}
}

// TestLogoutIsNotUndoneByARacingSave: a request that loaded the session
// before another request logged out (MaxAge < 0) cannot bring it back by
// saving: Save reports middleware.ErrSessionGone and stores nothing. With
// JSONSerializer, a value deleted from Values is deleted from the store.
func TestLogoutIsNotUndoneByARacingSave(t *testing.T) {
	for _, ser := range []gorillastore.Serializer{gorillastore.GobSerializer{}, gorillastore.JSONSerializer{}} {
		forEachBackend(t, func(t *testing.T, store middleware.Store) {
			gs := gorillastore.New(store, hashKey)
			gs.Serializer = ser
			// request returns a request carrying the cookies rec set.
			request := func(rec *httptest.ResponseRecorder) *http.Request {
				r := httptest.NewRequest("GET", "/", nil)
				for _, c := range rec.Result().Cookies() {
					r.AddCookie(c)
				}
				return r
			}
			r0 := httptest.NewRequest("GET", "/", nil)
			s0, _ := gs.New(r0, name)
			s0.Values["user"] = "alice"
			s0.Values["cart"] = "3 items"
			login := httptest.NewRecorder()
			if err := gs.Save(r0, login, s0); err != nil {
				t.Fatal(err)
			}
			id := s0.ID

			// A value deleted from Values is gone from the store.
			r1 := request(login)
			s1, err := gs.New(r1, name)
			if err != nil || s1.IsNew {
				t.Fatalf("load: new=%v err=%v", s1.IsNew, err)
			}
			delete(s1.Values, "cart")
			if err := gs.Save(r1, httptest.NewRecorder(), s1); err != nil {
				t.Fatal(err)
			}
			r2 := request(login)
			if s2, _ := gs.New(r2, name); s2.Values["cart"] != nil || s2.Values["user"] != "alice" {
				t.Fatalf("after deleting cart: %v", s2.Values)
			}

			// Request A loads; request B logs out; A saves.
			ra := request(login)
			sa, _ := gs.New(ra, name)
			rb := request(login)
			sb, _ := gs.New(rb, name)
			sb.Options.MaxAge = -1
			if err := gs.Save(rb, httptest.NewRecorder(), sb); err != nil {
				t.Fatal(err)
			}
			sa.Values["lastSeen"] = "now"
			recA := httptest.NewRecorder()
			if err := gs.Save(ra, recA, sa); !errors.Is(err, middleware.ErrSessionGone) {
				t.Fatalf("a save racing a logout: %v; want ErrSessionGone", err)
			}
			if _, found, _ := store.Restore(context.Background(), id); found {
				t.Fatal("the logged-out session came back")
			}
			if len(recA.Result().Cookies()) != 0 {
				t.Fatalf("the refused save set a cookie: %v", recA.Result().Cookies())
			}
		})
	}
}

// A client that leaves (its request's context cancelled) does not stop
// Save halfway: a save, and a logout's delete, still reach the store.
func TestSaveFinishesWhenTheClientLeaves(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store) {
		gs := gorillastore.New(store, hashKey)
		gone := func() *http.Request {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return httptest.NewRequest("GET", "/", nil).WithContext(ctx)
		}
		r := gone()
		s, err := gs.New(r, name)
		if err != nil {
			t.Fatal(err)
		}
		s.Values["user"] = "alice"
		if err := gs.Save(r, httptest.NewRecorder(), s); err != nil {
			t.Fatalf("save after the client left: %v", err)
		}
		if _, found, err := store.Restore(context.Background(), s.ID); err != nil || !found {
			t.Fatalf("the session saved after the client left: found %v, %v", found, err)
		}
		s.Options = &sessions.Options{MaxAge: -1}
		if err := gs.Save(gone(), httptest.NewRecorder(), s); err != nil {
			t.Fatalf("logout after the client left: %v", err)
		}
		if _, found, err := store.Restore(context.Background(), s.ID); err != nil || found {
			t.Fatalf("the session after a logout whose client left: found %v, %v; want it deleted", found, err)
		}
	})
}
