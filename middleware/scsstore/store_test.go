package scsstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/middleware"
	"github.com/kadosession/kadosession/middleware/scsstore"
)

// The tests below carry the expectations scs's own stores are tested
// against (find, find missing, commit new, commit updated, expiry, delete,
// all), run on the adapter over each backend.

func TestFind(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		if err := s.Commit("session_token", []byte("encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		b, found, err := s.Find("session_token")
		if err != nil || !found || !bytes.Equal(b, []byte("encoded_data")) {
			t.Fatalf("Find = %q, %v, %v; want encoded_data, true, nil", b, found, err)
		}
	})
}

func TestFindMissing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		b, found, err := s.Find("missing_session_token")
		if err != nil || found || b != nil {
			t.Fatalf("Find = %q, %v, %v; want nil, false, nil", b, found, err)
		}
	})
}

func TestFindMalformedToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store, scsstore.WithPrefix(""))
		for _, tok := range []string{"", strings.Repeat("x", 600), "\xff\xfe"} {
			b, found, err := s.Find(tok)
			if err != nil || found || b != nil {
				t.Errorf("Find(%q) = %q, %v, %v; want nil, false, nil", tok, b, found, err)
			}
			if err := s.Delete(tok); err != nil {
				t.Errorf("Delete(%q) = %v; want nil", tok, err)
			}
			if err := s.Commit(tok, []byte("x"), time.Now().Add(time.Minute)); !errors.Is(err, scsstore.ErrInvalidToken) {
				t.Errorf("Commit(%q) = %v; want ErrInvalidToken", tok, err)
			}
		}
	})
}

// TestFindForeignRecord: a session under the same id that the adapter did
// not write (a kadosession middleware session, say) is not found, not an
// error, and never handed to scs.
func TestFindForeignRecord(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		ctx := context.Background()
		for _, data := range []map[string]json.RawMessage{
			{"user": json.RawMessage(`"alice"`)},
			{"scs": json.RawMessage(`"!!not base64"`), "exp": json.RawMessage(`9999999999999`)},
			{"scs": json.RawMessage(`"AAAA"`), "exp": json.RawMessage(`"soon"`)},
		} {
			if err := store.Save(ctx, scsstore.DefaultPrefix+"foreign", data); err != nil {
				t.Fatalf("Save: %v", err)
			}
			b, found, err := s.Find("foreign")
			if err != nil || found || b != nil {
				t.Errorf("Find over %v = %q, %v, %v; want nil, false, nil", data, b, found, err)
			}
		}
	})
}

func TestCommitNew(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		expiry := time.Now().Add(time.Minute)
		if err := s.Commit("session_token", []byte("encoded_data"), expiry); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		// The record in kadosession: the prefixed id, base64 data and the
		// expiry in ms.
		data, found, err := store.Restore(context.Background(), "scs:session_token")
		if err != nil || !found {
			t.Fatalf("Restore = %v, %v", found, err)
		}
		if got := string(data["scs"]); got != `"ZW5jb2RlZF9kYXRh"` {
			t.Errorf("scs field = %s, want base64 of encoded_data", got)
		}
		var exp int64
		want := expiry.UnixMilli() // rounded up: never taken for expired early
		if expiry.After(time.UnixMilli(want)) {
			want++
		}
		if err := json.Unmarshal(data["exp"], &exp); err != nil || exp != want {
			t.Errorf("exp field = %s, want %d", data["exp"], want)
		}
		if len(data) != 2 {
			t.Errorf("record has %d fields, want 2: %v", len(data), data)
		}
	})
}

func TestCommitUpdated(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		clk := newClock()
		s := scsstore.New(store, scsstore.WithClock(clk.Now))
		if err := s.Commit("session_token", []byte("encoded_data"), clk.Now().Add(time.Minute)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if err := s.Commit("session_token", []byte("new_encoded_data"), clk.Now().Add(time.Hour)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		b, found, err := s.Find("session_token")
		if err != nil || !found || !bytes.Equal(b, []byte("new_encoded_data")) {
			t.Fatalf("Find = %q, %v, %v; want new_encoded_data", b, found, err)
		}
		// The expiry was overwritten too: alive past the first one.
		clk.Advance(2 * time.Minute)
		if _, found, _ := s.Find("session_token"); !found {
			t.Fatal("session expired at the first commit's expiry; the second should have replaced it")
		}
	})
}

// TestExpiryWithinAMillisecond: a commit expiring less than a millisecond
// from now is found now (it was taken for expired: its expiry was rounded
// down to the ms), and not once that moment passed.
func TestExpiryWithinAMillisecond(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		clk := newClock()
		clk.Advance(time.Millisecond - clk.Now().Sub(clk.Now().Truncate(time.Millisecond)) + 100*time.Microsecond) // 0.1 ms past a ms
		s := scsstore.New(store, scsstore.WithClock(clk.Now))
		if err := s.Commit("t", []byte("x"), clk.Now().Add(500*time.Microsecond)); err != nil {
			t.Fatal(err)
		}
		if _, found, _ := s.Find("t"); !found {
			t.Fatal("a session expiring in 0.5 ms was not found")
		}
		clk.Advance(2 * time.Millisecond)
		if _, found, _ := s.Find("t"); found {
			t.Fatal("found 1.5 ms after its expiry")
		}
	})
}

func TestExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		clk := newClock()
		s := scsstore.New(store, scsstore.WithClock(clk.Now))
		if err := s.Commit("session_token", []byte("encoded_data"), clk.Now().Add(100*time.Millisecond)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if _, found, _ := s.Find("session_token"); !found {
			t.Fatal("Find before expiry: not found")
		}
		clk.Advance(101 * time.Millisecond)
		b, found, err := s.Find("session_token")
		if err != nil || found || b != nil {
			t.Fatalf("Find after expiry = %q, %v, %v; want nil, false, nil", b, found, err)
		}
	})
}

// TestExpiryRealClock is TestExpiry on the wall clock, as scs's own stores
// are tested.
func TestExpiryRealClock(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		if err := s.Commit("session_token", []byte("encoded_data"), time.Now().Add(100*time.Millisecond)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		poll(t, "expiry", func() bool {
			_, found, err := s.Find("session_token")
			return err == nil && !found
		}, 5*time.Second)
	})
}

func TestCommitPastExpiryDeletes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		if err := s.Commit("session_token", []byte("encoded_data"), time.Now().Add(time.Minute)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if err := s.Commit("session_token", []byte("encoded_data"), time.Now().Add(-time.Second)); err != nil {
			t.Fatalf("Commit in the past: %v", err)
		}
		if _, found, err := store.Restore(context.Background(), "scs:session_token"); err != nil || found {
			t.Fatalf("record after a commit in the past: found=%v err=%v; want deleted", found, err)
		}
	})
}

func TestDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		if err := s.Commit("session_token", []byte("encoded_data"), time.Now().Add(time.Second)); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if err := s.Delete("session_token"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, found, err := store.Restore(context.Background(), "scs:session_token"); err != nil || found {
			t.Fatalf("record after Delete: found=%v err=%v", found, err)
		}
		if _, found, err := s.Find("session_token"); err != nil || found {
			t.Fatalf("Find after Delete: found=%v err=%v", found, err)
		}
		// Idempotent: deleting again, or a token never stored, is nil.
		if err := s.Delete("session_token"); err != nil {
			t.Fatalf("second Delete: %v", err)
		}
		if err := s.Delete("never_stored"); err != nil {
			t.Fatalf("Delete of an unknown token: %v", err)
		}
	})
}

// Both kadosession stores list sessions themselves.
var (
	_ scsstore.Lister = (*middleware.MemoryStore)(nil)
	_ scsstore.Lister = (*client.Store)(nil)
)

// TestAll runs on each backend through the store's own Lister, no
// WithLister: MemoryStore.List in process, and client.Store.List over a
// real node (the "list" admin op).
func TestAll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		if r, ok := store.(*recordingStore); ok {
			store = r.MemoryStore // list with MemoryStore.List, not the recorder's
		}
		if _, ok := store.(scsstore.Lister); !ok {
			t.Fatalf("%T does not implement scsstore.Lister", store)
		}
		clk := newClock()
		s := scsstore.New(store, scsstore.WithClock(clk.Now))
		all, err := s.All()
		if err != nil || all == nil || len(all) != 0 {
			t.Fatalf("All on an empty store = %v, %v; want an empty non-nil map", all, err)
		}
		ctx := context.Background()
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(s.Commit("token_1", []byte("data_1"), clk.Now().Add(time.Minute)))
		must(s.Commit("token_2", []byte("data_2"), clk.Now().Add(time.Hour)))
		must(s.Commit("token_3", []byte("data_3"), clk.Now().Add(time.Second)))
		must(s.Commit("token_4", []byte("data_4"), clk.Now().Add(time.Hour)))
		must(s.Delete("token_4"))
		// Not the adapter's: a foreign record under the prefix and a session
		// outside it.
		must(store.Save(ctx, "scs:foreign", map[string]json.RawMessage{"user": json.RawMessage(`1`)}))
		must(store.Save(ctx, "token_5", map[string]json.RawMessage{"user": json.RawMessage(`1`)}))
		clk.Advance(2 * time.Second) // token_3 expires

		for _, all := range []func() (map[string][]byte, error){
			s.All,
			func() (map[string][]byte, error) { return s.AllCtx(ctx) },
		} {
			got, err := all()
			if err != nil {
				t.Fatalf("All: %v", err)
			}
			want := map[string][]byte{"token_1": []byte("data_1"), "token_2": []byte("data_2")}
			if len(got) != len(want) {
				t.Fatalf("All = %q, want %q", got, want)
			}
			for k, v := range want {
				if !bytes.Equal(got[k], v) {
					t.Fatalf("All = %q, want %q", got, want)
				}
			}
		}
	})
}

// TestAllWithLister: a Lister given with WithLister is used instead of the
// store's own.
func TestAllWithLister(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, l lister) {
		s := scsstore.New(store, scsstore.WithLister(l))
		if err := s.Commit("t", []byte("d"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		all, err := s.All()
		if err != nil || len(all) != 1 || string(all["t"]) != "d" {
			t.Fatalf("All = %q, %v", all, err)
		}
	})
}

// TestAllStoreIsLister: a store that implements Lister itself needs no
// WithLister.
func TestAllStoreIsLister(t *testing.T) {
	m := middleware.NewMemoryStore(middleware.MemoryOptions{PruneFrequency: -1})
	defer m.Close()
	s := scsstore.New(m)
	if err := s.Commit("t", []byte("d"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	all, err := s.All()
	if err != nil || len(all) != 1 || string(all["t"]) != "d" {
		t.Fatalf("All = %q, %v", all, err)
	}
}

// TestAllNotIterable: a store without List (here a MemoryStore seen only
// as a middleware.Store) and no WithLister cannot iterate.
func TestAllNotIterable(t *testing.T) {
	m := middleware.NewMemoryStore(middleware.MemoryOptions{PruneFrequency: -1})
	defer m.Close()
	s := scsstore.New(struct{ middleware.Store }{m})
	if all, err := s.All(); !errors.Is(err, scsstore.ErrNotIterable) || all != nil {
		t.Fatalf("All = %v, %v; want nil, ErrNotIterable", all, err)
	}
	if _, err := s.AllCtx(context.Background()); !errors.Is(err, scsstore.ErrNotIterable) {
		t.Fatalf("AllCtx = %v; want ErrNotIterable", err)
	}
}

type failingLister struct{}

var errListDown = errors.New("list is down")

func (failingLister) List(context.Context, string) (map[string]map[string]json.RawMessage, error) {
	return nil, errListDown
}

func TestAllListerError(t *testing.T) {
	m := middleware.NewMemoryStore(middleware.MemoryOptions{PruneFrequency: -1})
	defer m.Close()
	s := scsstore.New(m, scsstore.WithLister(failingLister{}))
	_, err := s.All()
	if !errors.Is(err, errListDown) || !errors.Is(err, middleware.ErrStoreUnavailable) {
		t.Fatalf("All = %v; want errListDown wrapped in ErrStoreUnavailable", err)
	}
}

func TestPrefix(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		a := scsstore.New(store, scsstore.WithPrefix("app-a:"))
		b := scsstore.New(store, scsstore.WithPrefix("app-b:"))
		if err := a.Commit("tok", []byte("a"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, found, _ := b.Find("tok"); found {
			t.Fatal("a session committed under one prefix was found under another")
		}
		if _, found, _ := store.Restore(context.Background(), "app-a:tok"); !found {
			t.Fatal("no record under app-a:tok")
		}
	})
}

// TestCancelledContext: a cancelled context is an error, not a not-found,
// and the error keeps context.Canceled in its chain.
func TestCancelledContext(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, found, err := s.FindCtx(ctx, "tok"); !errors.Is(err, context.Canceled) || !errors.Is(err, middleware.ErrStoreUnavailable) || found {
			t.Errorf("FindCtx = %v, %v; want context.Canceled", found, err)
		}
		if err := s.CommitCtx(ctx, "tok", []byte("x"), time.Now().Add(time.Minute)); !errors.Is(err, context.Canceled) {
			t.Errorf("CommitCtx = %v; want context.Canceled", err)
		}
		if err := s.DeleteCtx(ctx, "tok"); !errors.Is(err, context.Canceled) {
			t.Errorf("DeleteCtx = %v; want context.Canceled", err)
		}
	})
}

// TestConcurrent: many goroutines committing, finding and deleting
// distinct tokens (run with -race).
func TestConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store middleware.Store, _ lister) {
		s := scsstore.New(store)
		errs := make(chan error, 16)
		for i := range 16 {
			go func() {
				tok := "tok-" + string(rune('a'+i))
				want := []byte(tok)
				if err := s.Commit(tok, want, time.Now().Add(time.Minute)); err != nil {
					errs <- err
					return
				}
				b, found, err := s.Find(tok)
				if err == nil && (!found || !bytes.Equal(b, want)) {
					err = errors.New("lost " + tok)
				}
				if err == nil {
					err = s.Delete(tok)
				}
				errs <- err
			}()
		}
		for range 16 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})
}
