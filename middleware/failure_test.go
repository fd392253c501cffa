package middleware

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kadosession/kadosession/fsm"
	"github.com/kadosession/kadosession/transport"
)

func TestStoreFailureAnswers503(t *testing.T) {
	tests := []struct {
		name        string
		failRestore bool
		failWrite   bool
		withCookie  bool
		handler     http.HandlerFunc
		wantBody    string
		wantLog     string
		wantCode    int    // 0: 503
		wantLevel   string // "": [ERROR]
	}{
		{
			name: "restore fails on read", failRestore: true, withCookie: true,
			handler:  getHandler("user"),
			wantBody: "session store unavailable", wantLog: "store is down",
		},
		{
			name: "save of a new session fails", failWrite: true,
			handler: func(w http.ResponseWriter, r *http.Request) {
				FromContext(r.Context()).Set("user", "alice")
				http.Redirect(w, r, "/home", http.StatusFound)
			},
			wantBody: "session store unavailable", wantLog: "store is down",
		},
		{
			name: "patch fails", failWrite: true, withCookie: true,
			handler:  setHandler("b", "2"),
			wantBody: "session store unavailable", wantLog: "store is down",
		},
		{
			name: "handler writes nothing", failWrite: true,
			handler:  func(w http.ResponseWriter, r *http.Request) { FromContext(r.Context()).Set("a", 1) },
			wantBody: "session store unavailable", wantLog: "store is down",
		},
		{
			name: "unencodable value",
			handler: func(w http.ResponseWriter, r *http.Request) {
				FromContext(r.Context()).Set("ch", make(chan int))
				fmt.Fprint(w, "ok")
			},
			wantBody: "session data could not be saved", wantLog: "unsupported type", wantCode: 500,
		},
		{
			// The request's data, not an outage: a warning, and a 500.
			name: "session over the store's size limit",
			handler: func(w http.ResponseWriter, r *http.Request) {
				FromContext(r.Context()).Set("blob", strings.Repeat("x", 100<<10))
				fmt.Fprint(w, "ok")
			},
			wantBody: "session data could not be saved", wantLog: "session too large", wantCode: 500, wantLevel: "[WARN]",
		},
		{
			name: "session over the store's key limit",
			handler: func(w http.ResponseWriter, r *http.Request) {
				for i := range 20 {
					FromContext(r.Context()).Set(fmt.Sprint("k", i), i)
				}
				fmt.Fprint(w, "ok")
			},
			wantBody: "session data could not be saved", wantLog: "keys, the limit is 16", wantCode: 500, wantLevel: "[WARN]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := NewMemoryStore(MemoryOptions{MaxSessionSize: 64 << 10, MaxKeys: 16, PruneFrequency: -1})
			t.Cleanup(func() { _ = mem.Close() })
			store := &countingStore{Store: mem}
			req := httptest.NewRequest("GET", "/", nil)
			if tt.withCookie {
				sid := GenerateID("", "")
				if err := mem.Save(context.Background(), sid, map[string]json.RawMessage{"a": json.RawMessage(`1`)}); err != nil {
					t.Fatal(err)
				}
				req.AddCookie(&http.Cookie{Name: "session", Value: sid})
			}
			store.failRestore.Store(tt.failRestore)
			store.failWrite.Store(tt.failWrite)
			var logs lockedBuffer
			resp := serve(Options{Store: store, Logger: testLogger(&logs)}, tt.handler, req)

			body := mustRead(t, resp)
			code, level := cmp.Or(tt.wantCode, http.StatusServiceUnavailable), cmp.Or(tt.wantLevel, "[ERROR]")
			if resp.StatusCode != code || strings.TrimSpace(body) != tt.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, code, tt.wantBody)
			}
			if retry := resp.Header.Get("Retry-After"); (code == http.StatusServiceUnavailable) != (retry != "") {
				t.Fatalf("Retry-After %q on a %d", retry, code)
			}
			if loc := resp.Header.Get("Location"); loc != "" {
				t.Fatalf("the handler's Location %q leaked into the 500", loc)
			}
			if c := resp.Header.Values("Set-Cookie"); len(c) != 0 {
				t.Fatalf("Set-Cookie %q on a failed save", c)
			}
			if !strings.Contains(logs.String(), tt.wantLog) || !strings.Contains(logs.String(), level) {
				t.Fatalf("log %q, want %s mentioning %q", logs.String(), level, tt.wantLog)
			}
		})
	}
}

// Options.ErrorFunc chooses the response to a failed session, and is told
// which failure it was.
func TestErrorFuncAnswersFailures(t *testing.T) {
	store := &countingStore{Store: newStore(t)}
	var got []error
	opts := Options{Store: store, Logger: testLogger(new(lockedBuffer)), ErrorFunc: func(w http.ResponseWriter, r *http.Request, err error) {
		got = append(got, err)
		if r.URL.Path != "/page" {
			t.Errorf("ErrorFunc got the request for %s", r.URL.Path)
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, "<p>Please try again in a minute.</p>")
	}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/elsewhere")
		FromContext(r.Context()).Set("a", 1)
		fmt.Fprint(w, "secret page")
	})
	store.failWrite.Store(true)
	resp := serve(opts, handler, httptest.NewRequest("GET", "/page", nil))
	body := mustRead(t, resp)
	if resp.StatusCode != http.StatusTeapot || body != "<p>Please try again in a minute.</p>" || resp.Header.Get("Location") != "" {
		t.Fatalf("got %d %q (Location %q); want ErrorFunc's page alone", resp.StatusCode, body, resp.Header.Get("Location"))
	}
	if len(got) != 1 || !errors.Is(got[0], ErrStoreUnavailable) {
		t.Fatalf("ErrorFunc got %v, want one error wrapping ErrStoreUnavailable", got)
	}
	store.failWrite.Store(false)
	got = nil
	resp = serve(opts, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		FromContext(r.Context()).Set("ch", make(chan int))
	}), httptest.NewRequest("GET", "/page", nil))
	mustRead(t, resp)
	if len(got) != 1 || !errors.Is(got[0], ErrInvalidValue) || errors.Is(got[0], ErrStoreUnavailable) {
		t.Fatalf("ErrorFunc got %v, want one error wrapping ErrInvalidValue alone", got)
	}
}

// mustRead returns the response's body.
func mustRead(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteAfterFailureReportsIt(t *testing.T) {
	store := &countingStore{Store: newStore(t)}
	store.failWrite.Store(true)
	var writeErr error
	resp := serve(Options{Store: store, Logger: testLogger(new(lockedBuffer))}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		FromContext(r.Context()).Set("a", 1)
		_, writeErr = w.Write([]byte("secret page"))
	}), httptest.NewRequest("GET", "/", nil))
	if body := mustRead(t, resp); strings.Contains(body, "secret") {
		t.Fatalf("the handler's body reached the client: %q", body)
	}
	if writeErr == nil || !strings.Contains(writeErr.Error(), "store is down") {
		t.Fatalf("Write after a failed save returned %v", writeErr)
	}
}

func TestFailureAfterHeadersIsLogged(t *testing.T) {
	tests := []struct {
		name     string
		existing bool
		handler  func(s *Session, store *countingStore, w http.ResponseWriter)
		wantLog  string
		wantSave bool
	}{
		{
			name: "save fails after the first byte", existing: true,
			handler: func(s *Session, store *countingStore, w http.ResponseWriter) {
				_ = s.Get("a")
				fmt.Fprint(w, "ok")
				store.failWrite.Store(true)
				s.Set("late", 1)
			},
			wantLog: "[ERROR]",
		},
		{
			name: "changes after the first byte are saved", existing: true,
			handler: func(s *Session, store *countingStore, w http.ResponseWriter) {
				fmt.Fprint(w, "ok")
				s.Set("late", 1)
			},
			wantSave: true,
		},
		{
			name: "new session after the first byte is not saved",
			handler: func(s *Session, store *countingStore, w http.ResponseWriter) {
				fmt.Fprint(w, "ok")
				s.Set("late", 1)
			},
			wantLog: "cookie could not be set",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newStore(t)
			store := &countingStore{Store: mem}
			req := httptest.NewRequest("GET", "/", nil)
			sid := GenerateID("", "")
			if tt.existing {
				if err := mem.Save(context.Background(), sid, map[string]json.RawMessage{"a": json.RawMessage(`1`)}); err != nil {
					t.Fatal(err)
				}
				req.AddCookie(&http.Cookie{Name: "session", Value: sid})
			}
			var logs lockedBuffer
			resp := serve(Options{Store: store, Logger: testLogger(&logs)}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.handler(FromContext(r.Context()), store, w)
			}), req)
			if resp.StatusCode != http.StatusOK || mustRead(t, resp) != "ok" {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if tt.wantLog != "" && !strings.Contains(logs.String(), tt.wantLog) {
				t.Fatalf("log %q, want %q", logs.String(), tt.wantLog)
			}
			if tt.wantLog == "" && logs.String() != "" {
				t.Fatalf("unexpected log %q", logs.String())
			}
			data, _, _ := mem.Restore(context.Background(), sid)
			if _, saved := data["late"]; saved != tt.wantSave {
				t.Fatalf("late key saved = %v, want %v", saved, tt.wantSave)
			}
			if !tt.existing && mem.Len() != 0 {
				t.Fatalf("an unreachable new session was stored")
			}
		})
	}
}

// blockingStore never answers until its context ends.
type blockingStore struct{ Store }

func (blockingStore) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	<-ctx.Done()
	return nil, false, ctx.Err()
}

func TestStoreCallsAreBounded(t *testing.T) {
	var logs lockedBuffer
	srv := newServer(t, Options{Store: blockingStore{newStore(t)}, Timeout: 50 * time.Millisecond, Logger: testLogger(&logs)}, getHandler("a"))
	srv.setSID(t, "session", GenerateID("", ""))
	start := time.Now()
	resp, body := srv.get(t, "/")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "session store unavailable") {
		t.Fatalf("got %d %q, want 503", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the request took %v despite a 50ms timeout", d)
	}
	if !strings.Contains(logs.String(), "deadline exceeded") {
		t.Fatalf("log %q, want the deadline", logs.String())
	}
}

// TestStoreErrorSaysWhatFailed: a store's refusal of the data is not
// reported as an outage (an app answering ErrStoreUnavailable with 503
// blamed the store for the request's own data).
func TestStoreErrorSaysWhatFailed(t *testing.T) {
	for _, tt := range []struct {
		err, want error
	}{
		{fmt.Errorf("x: %w", fsm.ErrBadKey), ErrInvalidValue},
		{fmt.Errorf("x: %w", fsm.ErrBadData), ErrInvalidValue},
		{transport.Errorf(transport.CodeBadRequest, "key is empty"), ErrInvalidValue},
		{fmt.Errorf("x: %w", fsm.ErrTooManyKeys), ErrSessionTooLarge},
		{transport.Errorf(transport.CodeTooLarge, "too big"), ErrSessionTooLarge},
		{io.ErrUnexpectedEOF, ErrStoreUnavailable},
		{context.DeadlineExceeded, ErrStoreUnavailable},
	} {
		got := StoreError("save", tt.err)
		if !errors.Is(got, tt.want) || !errors.Is(got, tt.err) {
			t.Errorf("StoreError(%v) = %v; want it to wrap %v and the store's error", tt.err, got, tt.want)
		}
		for _, other := range []error{ErrInvalidValue, ErrSessionTooLarge, ErrStoreUnavailable} {
			if other != tt.want && errors.Is(got, other) {
				t.Errorf("StoreError(%v) = %v, also %v", tt.err, got, other)
			}
		}
	}
}

// gatedLoadStore is a real store whose Restore first waits until released
// or its context ends: a slow network store.
type gatedLoadStore struct {
	Store
	started chan struct{}
	release chan struct{}
	ended   chan error // what each gated Restore returned
}

func (g *gatedLoadStore) Restore(ctx context.Context, sid string) (map[string]json.RawMessage, bool, error) {
	g.started <- struct{}{}
	select {
	case <-ctx.Done():
		g.ended <- ctx.Err()
		return nil, false, ctx.Err()
	case <-g.release:
	}
	data, found, err := g.Store.Restore(ctx, sid)
	g.ended <- err
	return data, found, err
}

// TestLoadStopsWhenTheClientLeaves: the session's load runs under the
// request's context, so a client that disconnects stops it (it ran on to
// Options.Timeout, holding the handler and a store call for nobody); a
// save still runs without the request's cancellation, and finishes after
// the client has gone.
func TestLoadStopsWhenTheClientLeaves(t *testing.T) {
	st := newStore(t)
	sid := GenerateID("", "")
	if err := st.Save(context.Background(), sid, map[string]json.RawMessage{"a": json.RawMessage(`"1"`)}); err != nil {
		t.Fatal(err)
	}
	gated := &gatedLoadStore{Store: st, started: make(chan struct{}, 1), release: make(chan struct{}), ended: make(chan error, 1)}
	handlerErr, setDone := make(chan error, 1), make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/load", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		_ = s.Get("a")
		handlerErr <- s.Err()
	})
	mux.HandleFunc("/set", func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		s.Set("b", "2") // loaded: released at once
		setDone <- struct{}{}
		<-r.Context().Done()
		// Returns after its client left: the middleware saves now.
	})
	srv := newServer(t, Options{Store: gated, Timeout: 30 * time.Second}, mux)
	srv.setSID(t, "session", sid)

	// leave requests path and disconnects once ready says so.
	leave := func(path string, ready <-chan struct{}) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		done := make(chan error, 1)
		go func() {
			resp, err := srv.client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatalf("GET %s: the handler did not get there", path)
		}
		cancel()
		if err := <-done; err == nil {
			t.Fatalf("GET %s: answered, though the client left", path)
		}
	}

	leave("/load", gated.started)
	left := time.Now()
	select {
	case err := <-gated.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the load of a request whose client left ended with %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the load ran on for %s after the client left", time.Since(left).Round(time.Millisecond))
	}
	if err := <-handlerErr; !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("the handler's session error: %v, want ErrStoreUnavailable and context.Canceled", err)
	}

	close(gated.release)
	leave("/set", setDone)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		data, _, err := st.Restore(context.Background(), sid)
		if err == nil && string(data["b"]) == `"2"` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a change made before the client left was not saved: %v %v", data, err)
		}
	}
}
