package transport

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorIs(t *testing.T) {
	notLeader := &Error{Code: CodeNotLeader, Message: "go to the leader", Leader: "a:1"}
	wrapped := fmt.Errorf("save: %w", notLeader)
	cases := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"same code", notLeader, ErrNotLeader, true},
		{"other code", notLeader, ErrTimeout, false},
		{"wrapped", wrapped, ErrNotLeader, true},
		{"Errorf", Errorf(CodeTooLarge, "frame of %d bytes", 9), ErrTooLarge, true},
		{"plain error", errors.New("x"), ErrInternal, false},
		{"sentinel to itself", ErrOverloaded, ErrOverloaded, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := errors.Is(tc.err, tc.target); got != tc.want {
				t.Fatalf("errors.Is(%v, %v) = %v, want %v", tc.err, tc.target, got, tc.want)
			}
		})
	}
	var e *Error
	if !errors.As(wrapped, &e) || e.Leader != "a:1" {
		t.Fatalf("errors.As lost the leader: %+v", e)
	}
}

func TestAsError(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want Error
	}{
		{"plain error is internal", errors.New("boom"), Error{Code: CodeInternal, Message: "boom"}},
		{"an *Error keeps its code", Errorf(CodeBadRequest, "bad sid"), Error{Code: CodeBadRequest, Message: "bad sid"}},
		{"wrapped keeps code and leader, message is the full text",
			fmt.Errorf("save s: %w", &Error{Code: CodeNotLeader, Message: "not leader", Leader: "b:2"}),
			Error{Code: CodeNotLeader, Message: "save s: not leader", Leader: "b:2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := AsError(tc.err); *got != tc.want {
				t.Fatalf("AsError = %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	if got := (&Error{Code: CodeUnavailable}).Error(); got != "unavailable" {
		t.Errorf("empty message: %q", got)
	}
	if got := (&Error{Code: CodeUnavailable, Message: "no leader"}).Error(); got != "no leader" {
		t.Errorf("message: %q", got)
	}
	for c, want := range map[Code]string{CodeOK: "ok", CodeBadRequest: "bad request", CodeTooLarge: "too large",
		CodeNotLeader: "not leader", CodeUnavailable: "unavailable", CodeTimeout: "timeout", CodeInternal: "internal error",
		CodeUnauthorized: "unauthorized", CodeOverloaded: "overloaded", Code(99): "code 99"} {
		if c.String() != want {
			t.Errorf("Code(%d) = %q, want %q", byte(c), c.String(), want)
		}
	}
}
