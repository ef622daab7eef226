// Package qpq is the Go SDK of quicproquo (qpq): end-to-end encrypted group messaging with
// MLS (optionally post-quantum), OPAQUE accounts and an encrypted local store, over QUIC.
//
// It wraps the qpq engine through its C ABI (libqpq, linked statically with cgo). A [Client]
// is one account on one store directory; it is safe for use by many goroutines at once.
// Every call that may block takes a [context.Context] first: cancelling it makes the call
// return ctx.Err() promptly. A wait for events ([Client.NextEvent], [Client.Events]) is
// interrupted inside the engine; any other call returns at once while the engine finishes
// the operation in the background (its outcome is then discarded), bounded by the request
// timeout.
//
// Errors carry a stable [Code] from the engine's pinned table: test them with errors.Is
// against the sentinels ([ErrUnauthorized], [ErrNotFound], ...) or read the details with
// errors.As into a *[Error].
//
// Building: the package links target/debug/libqpq.a of the repository it lives in (the path
// is relative to this directory, so no CGO_LDFLAGS are needed). sdks/go/test.sh builds the
// library and runs the tests; by hand, run `cargo build -p qpq-ffi` at the repository root
// first.
package qpq
