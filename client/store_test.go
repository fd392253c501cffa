package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kadosession/kadosession/client"
	"github.com/kadosession/kadosession/middleware"
	"github.com/kadosession/kadosession/transport"
)

// The Store satisfies the interface the middleware consumes.
var _ middleware.Store = (*client.Store)(nil)

func TestRoundTrip(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}})
	ctx := context.Background()

	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	data, found, err := s.Restore(ctx, "nobody")
	if err != nil || found || data != nil {
		t.Fatalf("Restore(unknown) = %v, %v, %v; want nil, false, nil", data, found, err)
	}

	want := map[string]json.RawMessage{"user": raw(`"alice"`), "n": raw(`1`), "obj": raw(`{"a":[1,2]}`)}
	if err := s.Save(ctx, "sid1", want); err != nil {
		t.Fatalf("Save: %v", err)
	}
	got, found, err := s.Restore(ctx, "sid1")
	if err != nil || !found || !reflect.DeepEqual(got, want) {
		t.Fatalf("Restore = %s, %v, %v; want %s", got, found, err, want)
	}

	if err := s.Patch(ctx, "sid1", map[string]json.RawMessage{"n": raw(`2`), "new": nil}, []string{"obj", "absent"}); err != nil {
		t.Fatalf("Patch: %v", err)
	}
	want = map[string]json.RawMessage{"user": raw(`"alice"`), "n": raw(`2`), "new": raw(`null`)}
	if got, _, err = s.Restore(ctx, "sid1"); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Restore after Patch = %s, %v; want %s", got, err, want)
	}

	if err := s.Touch(ctx, "sid1"); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if err := s.Delete(ctx, "sid1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, found, err := s.Restore(ctx, "sid1"); err != nil || found {
		t.Fatalf("Restore after Delete: found=%v err=%v", found, err)
	}

	if err := s.SaveRaw(ctx, "sid2", []byte(`{"k":"v"}`)); err != nil {
		t.Fatalf("SaveRaw: %v", err)
	}
	b, found, err := s.RestoreRaw(ctx, "sid2")
	if err != nil || !found || string(b) != `{"k":"v"}` {
		t.Fatalf("RestoreRaw = %s, %v, %v", b, found, err)
	}
	if err := s.Save(ctx, "sid3", nil); err != nil {
		t.Fatalf("Save(nil): %v", err)
	}
	if got, found, err := s.Restore(ctx, "sid3"); err != nil || !found || got == nil || len(got) != 0 {
		t.Fatalf("Restore of an empty session = %v, %v, %v; want an empty map", got, found, err)
	}

	out, err := s.Admin(ctx, []byte(`{"op":"status"}`))
	if err != nil || string(out) != `{"echo":{"op":"status"}}` {
		t.Fatalf("Admin = %s, %v", out, err)
	}
	if n := ts.accepted.Load(); n > client.DefaultPoolSize {
		t.Errorf("server accepted %d connections; want at most %d", n, client.DefaultPoolSize)
	}
}

func TestServerErrorsPropagate(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		is       error
		text     string // after "kadosession: save on ADDR: "
		attempts int64
	}{
		{"bad request", transport.Errorf(transport.CodeBadRequest, "invalid sid \"x\": too short"), client.ErrBadRequest, `invalid sid "x": too short`, 1},
		{"too large", transport.Errorf(transport.CodeTooLarge, "session of 2000000 bytes exceeds the limit"), client.ErrTooLarge, "session of 2000000 bytes exceeds the limit", 1},
		{"unauthorized", transport.Errorf(transport.CodeUnauthorized, "wrong token"), client.ErrUnauthorized, "wrong token", 1},
		{"plain error is internal", errors.New("disk full"), client.ErrInternal, "disk full", 1},
		{"unavailable is retried", transport.Errorf(transport.CodeUnavailable, "no leader"), client.ErrUnavailable, "no leader (gave up after 3 attempts)", 3},
		{"not leader without hint is retried", transport.Errorf(transport.CodeNotLeader, "not the leader"), client.ErrNotLeader, "not the leader (gave up after 3 attempts)", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newMemHandler()
			h.hook = func(context.Context, transport.Op, string) error { return tt.err }
			ts := startServer(t, "127.0.0.1:0", h)
			s := newStore(t, client.Config{Addrs: []string{ts.addr}, MaxRetries: 2})
			err := s.Save(context.Background(), "sid", map[string]json.RawMessage{"a": raw("1")})
			if err == nil {
				t.Fatal("Save succeeded; want an error")
			}
			if want := "kadosession: save on " + ts.addr + ": " + tt.text; err.Error() != want {
				t.Errorf("error text = %q\nwant         %q", err, want)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			var te *transport.Error
			if !errors.As(err, &te) {
				t.Errorf("errors.As(*transport.Error) failed for %v", err)
			}
			if n := h.calls.Load(); n != tt.attempts {
				t.Errorf("handler called %d times; want %d", n, tt.attempts)
			}
		})
	}
}

func TestInvalidJSONRefusedBeforeSending(t *testing.T) {
	h := newMemHandler()
	ts := startServer(t, "127.0.0.1:0", h)
	s := newStore(t, client.Config{Addrs: []string{ts.addr}})
	ctx := context.Background()
	err := s.Save(ctx, "sid", map[string]json.RawMessage{"ok": raw("1"), "bad": raw("{nope")})
	if !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), `key "bad" is not valid JSON`) {
		t.Errorf("Save with invalid JSON: %v", err)
	}
	err = s.Patch(ctx, "sid", map[string]json.RawMessage{"bad": raw("[")}, nil)
	if !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), `key "bad" is not valid JSON`) {
		t.Errorf("Patch with invalid JSON: %v", err)
	}
	if n := h.calls.Load(); n != 0 {
		t.Errorf("handler called %d times; want 0", n)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  client.Config
		want string // substring of the error; "" = valid
	}{
		{"minimal", client.Config{Addrs: []string{"127.0.0.1:3001"}}, ""},
		{"several with duplicates", client.Config{Addrs: []string{"a:1", "b:2", "a:1"}, Consistency: client.Stale, MaxRetries: -1}, ""},
		{"no addrs", client.Config{}, "Addrs is empty"},
		{"no port", client.Config{Addrs: []string{"localhost"}}, `Addrs[0]: "localhost" is not host:port`},
		{"bad port", client.Config{Addrs: []string{"a:1", "b:http"}}, `Addrs[1]: "b:http" has no valid port`},
		{"no host", client.Config{Addrs: []string{":3001"}}, `":3001" has no host`},
		{"negative pool", client.Config{Addrs: []string{"a:1"}, PoolSize: -1}, "PoolSize -1 is out of range"},
		{"negative dial timeout", client.Config{Addrs: []string{"a:1"}, DialTimeout: -1}, "DialTimeout -1ns is negative"},
		{"negative request timeout", client.Config{Addrs: []string{"a:1"}, RequestTimeout: -1}, "RequestTimeout -1ns is negative"},
		{"unknown consistency", client.Config{Addrs: []string{"a:1"}, Consistency: 9}, "unknown Consistency 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := client.New(tt.cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				s.Close()
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("New succeeded; want an error containing %q", tt.want)
			}
			if !errors.Is(err, client.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v; want ErrInvalidConfig containing %q", err, tt.want)
			}
		})
	}
}
