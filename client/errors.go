package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// ErrClosed is returned by every call made after Close, and wrapped by the
// error of every call Close interrupted.
var ErrClosed = errors.New("kadosession: store closed")

// Errors a node reports, re-exported from package transport for errors.Is.
// Each matches any *transport.Error with its code; unwrap with errors.As to
// read the node's message and leader hint.
var (
	// ErrBadRequest: the request was invalid (a bad sid, key or data).
	// Never retried.
	ErrBadRequest = transport.ErrBadRequest
	// ErrTooLarge: a session or request exceeded the node's limit. Never
	// retried.
	ErrTooLarge = transport.ErrTooLarge
	// ErrNotLeader: the node could not serve the request and no leader could
	// be found within the retries.
	ErrNotLeader = transport.ErrNotLeader
	// ErrUnavailable: the cluster had no leader or was shutting down within
	// the retries.
	ErrUnavailable = transport.ErrUnavailable
	// ErrTimeout: the node's own deadline for the request passed. The
	// operation may or may not have taken effect. Not retried.
	ErrTimeout = transport.ErrTimeout
	// ErrInternal: a bug or an I/O failure on the node. Not retried.
	ErrInternal = transport.ErrInternal
	// ErrUnauthorized: a missing or wrong auth token. Never retried.
	ErrUnauthorized = transport.ErrUnauthorized
	// ErrOverloaded: the node refused the connection or request for load
	// within the retries.
	ErrOverloaded = transport.ErrOverloaded
)

// class says what the retry loop does after a failed attempt.
type class uint8

const (
	classFinal    class = iota // return the error
	classNext                  // back off, then try the next known node
	classFollow                // try the leader the node named, at once
	classTimedOut              // return the error, but start the next call on the next node
	classEnded                 // the caller's context ended: return the error
)

// callError is what a failed attempt returns: a message that names the op,
// the node and what happened, the cause for errors.Is and errors.As, and
// what to do next.
type callError struct {
	text  string
	cause error
	class class
	// leader is the node's hint with classFollow.
	leader string
}

func (e *callError) Error() string { return e.text }
func (e *callError) Unwrap() error { return e.cause }

// callErr turns what package transport returned for a failed attempt into a
// *callError; other errors (ctx's, transport.ErrDeadline) are returned as
// they are.
func (s *Store) callErr(op transport.Op, addr string, err error) error {
	var (
		de *transport.DialError
		ce *transport.ConnError
		re *transport.ResponseError
	)
	switch {
	case errors.As(err, &ce):
		return lostError(op, addr, ce.Err)
	case errors.Is(err, transport.ErrClosed): // the pool, closed by Close
		return ErrClosed
	case errors.As(err, &de):
		return connectError(addr, de.Err, s.cfg.DialTimeout)
	case errors.As(err, &re):
		return &callError{
			text:  fmt.Sprintf("kadosession: %s on %s: malformed response: %v", op, addr, re.Err),
			cause: re,
			class: classFinal,
		}
	}
	return err
}

// connectError reports a failed dial, TLS handshake or preamble. A token
// the node refused is final: every node would refuse it.
func connectError(addr string, err error, limit time.Duration) *callError {
	class := classNext
	if errors.Is(err, transport.ErrUnauthorized) {
		class = classFinal
	}
	return &callError{
		text:  fmt.Sprintf("kadosession: connect to %s: %s", addr, describe(err, limit)),
		cause: err,
		class: class,
	}
}

// lostError reports a request whose connection failed before its answer
// came; cause is why the connection failed (transport.ConnError.Err).
func lostError(op transport.Op, addr string, cause error) *callError {
	if errors.Is(cause, transport.ErrClosed) {
		return &callError{
			text:  fmt.Sprintf("kadosession: %s on %s: store closed while the request was in flight", op, addr),
			cause: ErrClosed,
			class: classFinal,
		}
	}
	var te *transport.Error
	if errors.As(cause, &te) {
		// The node said why it dropped the connection (too many
		// connections, an unsupported protocol version…).
		e := serverError(op, addr, te)
		e.text = fmt.Sprintf("kadosession: %s on %s: connection closed by the node: %s", op, addr, te.Error())
		return e
	}
	return &callError{
		text:  fmt.Sprintf("kadosession: %s on %s: connection lost: %s", op, addr, describe(cause, 0)),
		cause: cause,
		class: classNext,
	}
}

// serverError reports an error the node answered with, classified by code.
func serverError(op transport.Op, addr string, te *transport.Error) *callError {
	e := &callError{
		text:  fmt.Sprintf("kadosession: %s on %s: %s", op, addr, te.Error()),
		cause: te,
		class: classFinal,
	}
	switch te.Code {
	case transport.CodeNotLeader:
		e.class = classNext
		if te.Leader != "" && te.Leader != addr && checkAddr(te.Leader) == nil {
			e.class, e.leader = classFollow, te.Leader
		}
	case transport.CodeUnavailable, transport.CodeOverloaded:
		e.class = classNext
	}
	return e
}

// timeoutError reports an attempt that hit Config.RequestTimeout.
func timeoutError(op transport.Op, addr string, d time.Duration) *callError {
	return &callError{
		text:  fmt.Sprintf("kadosession: %s on %s: timed out after %s", op, addr, d),
		cause: context.DeadlineExceeded,
		class: classTimedOut,
	}
}

// contextError reports a call whose own context ended (or whose deadline
// passed a moment before its timer fired).
func contextError(op transport.Op, addr string, ctx context.Context) *callError {
	cause, why := ctx.Err(), context.Cause(ctx)
	if cause == nil {
		cause, why = context.DeadlineExceeded, context.DeadlineExceeded
	}
	return &callError{
		text:  fmt.Sprintf("kadosession: %s on %s: %v", op, addr, why),
		cause: cause,
		class: classEnded,
	}
}

// describe turns a network error into the words that matter ("connection
// refused", "timed out after 2s", "the node closed the connection"),
// dropping Go's "dial tcp a->b:" prefixes the caller's message repeats.
func describe(err error, limit time.Duration) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "the node closed the connection"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		if limit > 0 {
			return "timed out after " + limit.String()
		}
		return "timed out"
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}
