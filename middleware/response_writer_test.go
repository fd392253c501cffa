package middleware

import (
	"fmt"
	"net/http"
	"testing"
)

func TestFlushSavesFirst(t *testing.T) {
	store := newStore(t)
	srv := newServer(t, Options{Store: store}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		s.Set("user", "alice")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("ResponseController.Flush: %v", err)
		}
		if data, found, _ := store.Restore(r.Context(), s.ID()); !found || string(data["user"]) != `"alice"` {
			t.Errorf("after Flush the store holds %s (found %v)", data, found)
		}
		w.(http.Flusher).Flush() // the old interface still works too
		fmt.Fprint(w, "streamed")
	}))
	resp, body := srv.get(t, "/")
	if body != "streamed" || len(resp.Cookies()) != 1 {
		t.Fatalf("body %q, cookies %v; want the body and the session cookie", body, resp.Cookies())
	}
	if got := restoreString(t, store, resp.Cookies()[0].Value, "user"); got != "alice" {
		t.Fatalf("user = %q", got)
	}
}

func TestHijackThroughResponseController(t *testing.T) {
	store := newStore(t)
	srv := newServer(t, Options{Store: store}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		sid := s.Set("user", "alice").ID()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		defer conn.Close()
		if data, found, _ := store.Restore(r.Context(), sid); !found || string(data["user"]) != `"alice"` {
			t.Errorf("after Hijack the store holds %s (found %v)", data, found)
		}
		fmt.Fprint(brw, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
		if err := brw.Flush(); err != nil {
			t.Error(err)
		}
	}))
	_, body := srv.get(t, "/")
	if body != "hijacked" {
		t.Fatalf("body %q", body)
	}
}

func TestUnwrapReachesTheUnderlyingWriter(t *testing.T) {
	var inner http.ResponseWriter
	srv := newServer(t, Options{Store: newStore(t)}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			t.Error("the middleware's writer has no Unwrap")
			return
		}
		inner = u.Unwrap()
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			t.Errorf("EnableFullDuplex through Unwrap: %v", err)
		}
	}))
	srv.get(t, "/")
	if inner == nil {
		t.Fatal("Unwrap returned nil")
	}
}

func TestInformationalHeadersPassThrough(t *testing.T) {
	store := newStore(t)
	srv := newServer(t, Options{Store: store}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := FromContext(r.Context())
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		s.Set("after", "hints") // still before the real headers
		fmt.Fprint(w, "ok")
	}))
	resp, body := srv.get(t, "/")
	if body != "ok" || len(resp.Cookies()) != 1 {
		t.Fatalf("body %q, cookies %v", body, resp.Cookies())
	}
	if got := restoreString(t, store, resp.Cookies()[0].Value, "after"); got != "hints" {
		t.Fatalf("after = %q", got)
	}
}
