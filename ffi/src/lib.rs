//! `qpq-ffi`: the stable C ABI of [`qpq_core`] (header `include/qpq.h`, library `libqpq`).
//!
//! What it does: exposes the whole public [`qpq_core::Client`] API as `extern "C"` functions
//! following DESIGN.md §7: opaque handles, every fallible call returning a `qpq_error*` (NULL on
//! success) that carries core's stable code, results through out-params, NUL-terminated UTF-8
//! strings and `{ptr, len}` byte buffers, a `qpq_*_free` for everything it allocates (each
//! accepting NULL), and no panic crossing the boundary. Events are pulled
//! (`qpq_client_next_event`) and a blocked pull can be interrupted from another thread.
//!
//! What it will not do: hold any messaging logic (a behaviour C needs goes into `qpq-core`),
//! keep a thread-local "last error", call back into C (ADR 0070), or expose core's debug and
//! test hooks.
//!
//! Layout: `capi/` is the only module with `unsafe` code; `error.rs` is the only place where an
//! error becomes a C value.

#![deny(unsafe_code)]
// Types carry their C names (`qpq_client`), so the header and the Rust source read alike.
#![allow(non_camel_case_types)]

#[allow(unsafe_code)]
mod capi;
mod error;

pub use capi::*;
pub use error::{qpq_code, qpq_error};
