package qpq

import (
	"fmt"
	"time"
)

// Code is a stable error code of the engine's pinned table (core/client/errors.toml). Numbers
// never change; a newer engine may add codes.
type Code uint32

// The codes, with the same names in every qpq SDK.
const (
	CodeNetwork       Code = 1
	CodeUnauthorized  Code = 2
	CodeNotFound      Code = 3
	CodeConflict      Code = 4
	CodeInvalidInput  Code = 5
	CodeCrypto        Code = 6
	CodeStorage       Code = 7
	CodeRateLimited   Code = 8
	CodeTimeout       Code = 9
	CodeClosed        Code = 10
	CodeInternal      Code = 11
	CodeCancelled     Code = 12
	CodeBusy          Code = 13
	CodeForbidden     Code = 14
	CodeAlreadyMember Code = 15
)

var codeNames = map[Code]string{
	CodeNetwork: "Network", CodeUnauthorized: "Unauthorized", CodeNotFound: "NotFound",
	CodeConflict: "Conflict", CodeInvalidInput: "InvalidInput", CodeCrypto: "Crypto",
	CodeStorage: "Storage", CodeRateLimited: "RateLimited", CodeTimeout: "Timeout",
	CodeClosed: "Closed", CodeInternal: "Internal", CodeCancelled: "Cancelled", CodeBusy: "Busy",
	CodeForbidden: "Forbidden", CodeAlreadyMember: "AlreadyMember",
}

// String is the code's stable name, e.g. "Unauthorized".
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("Code(%d)", uint32(c))
}

// sentinel is the type of the Err* values: it matches every *Error with its code.
type sentinel Code

func (s sentinel) Error() string { return "qpq: " + Code(s).String() }

// Sentinel errors, one per code: errors.Is(err, qpq.ErrUnauthorized) tests a code.
var (
	ErrNetwork       error = sentinel(CodeNetwork)
	ErrUnauthorized  error = sentinel(CodeUnauthorized)
	ErrNotFound      error = sentinel(CodeNotFound)
	ErrConflict      error = sentinel(CodeConflict)
	ErrInvalidInput  error = sentinel(CodeInvalidInput)
	ErrCrypto        error = sentinel(CodeCrypto)
	ErrStorage       error = sentinel(CodeStorage)
	ErrRateLimited   error = sentinel(CodeRateLimited)
	ErrTimeout       error = sentinel(CodeTimeout)
	ErrClosed        error = sentinel(CodeClosed)
	ErrInternal      error = sentinel(CodeInternal)
	ErrCancelled     error = sentinel(CodeCancelled)
	ErrBusy          error = sentinel(CodeBusy)
	ErrForbidden     error = sentinel(CodeForbidden)
	ErrAlreadyMember error = sentinel(CodeAlreadyMember)
)

// Error is an error from the engine: its stable code, a message for humans (never secrets)
// and, when the server gave one, how long to wait before retrying.
type Error struct {
	// Code is the stable code.
	Code Code
	// Message is the human-readable message.
	Message string
	// RetryAfter is the server's retry hint (RateLimited, sometimes Network); 0 for none.
	RetryAfter time.Duration
}

// Error formats the code and the message.
func (e *Error) Error() string { return "qpq: " + e.Code.String() + ": " + e.Message }

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	s, ok := target.(sentinel)
	return ok && Code(s) == e.Code
}
