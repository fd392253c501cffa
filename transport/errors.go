package transport

import (
	"errors"
	"fmt"
)

// Code classifies an error sent over the wire.
type Code byte

// Error codes of the native protocol. Their values are on the wire.
const (
	CodeOK           Code = 0
	CodeBadRequest   Code = 1 // the request was malformed or invalid
	CodeTooLarge     Code = 2 // a frame, document or session exceeded a limit
	CodeNotLeader    Code = 3 // this node cannot serve it; Error.Leader may say who can
	CodeUnavailable  Code = 4 // no leader, shutting down, or a peer unreachable
	CodeTimeout      Code = 5 // the request's deadline passed before it completed
	CodeInternal     Code = 6 // a bug or an I/O failure on the node
	CodeUnauthorized Code = 7 // a missing or wrong auth token
	CodeOverloaded   Code = 8 // too many connections or requests in flight
	CodeNotFound     Code = 9 // a patch with IfExists found no live session
)

func (c Code) String() string {
	switch c {
	case CodeOK:
		return "ok"
	case CodeBadRequest:
		return "bad request"
	case CodeTooLarge:
		return "too large"
	case CodeNotLeader:
		return "not leader"
	case CodeUnavailable:
		return "unavailable"
	case CodeTimeout:
		return "timeout"
	case CodeInternal:
		return "internal error"
	case CodeUnauthorized:
		return "unauthorized"
	case CodeOverloaded:
		return "overloaded"
	case CodeNotFound:
		return "not found"
	}
	return fmt.Sprintf("code %d", byte(c))
}

// Error is an error a node reported. Compare it with errors.Is against the
// sentinels below (which match on Code) or unwrap it with errors.As to read
// the message and the leader hint.
type Error struct {
	Code    Code
	Message string
	// Leader is the address of the current leader, when a node answering
	// CodeNotLeader knows it.
	Leader string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Message
}

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Sentinels for errors.Is; each matches any *Error with its Code.
var (
	ErrBadRequest   = &Error{Code: CodeBadRequest}
	ErrTooLarge     = &Error{Code: CodeTooLarge}
	ErrNotLeader    = &Error{Code: CodeNotLeader}
	ErrUnavailable  = &Error{Code: CodeUnavailable}
	ErrTimeout      = &Error{Code: CodeTimeout}
	ErrInternal     = &Error{Code: CodeInternal}
	ErrUnauthorized = &Error{Code: CodeUnauthorized}
	ErrOverloaded   = &Error{Code: CodeOverloaded}
	ErrNotFound     = &Error{Code: CodeNotFound}
)

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// AsError converts any error to an *Error for the wire: an *Error anywhere in
// the chain keeps its code (its message becomes err's full text), anything
// else is CodeInternal.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return &Error{Code: e.Code, Message: err.Error(), Leader: e.Leader}
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}
