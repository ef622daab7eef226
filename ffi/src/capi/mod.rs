//! The `extern "C"` surface; the only module with `unsafe` code. Each function converts its
//! arguments, calls core and converts the result, inside [`call`], the one place that catches
//! panics.
//!
//! Conventions every function follows (the header's preamble states them for C):
//! - A fallible function returns `qpq_error*`: NULL on success, else an owned error.
//! - Out-params are written on success and set to NULL/0 first, so they never hold garbage.
//! - A `const T*` a function returns is borrowed from its argument: valid until that object
//!   is freed. A `T**` out-param receives an owned object the caller frees with `qpq_T_free`.
//! - An accessor given NULL returns NULL, 0 or false; a fallible function given NULL for a
//!   required pointer returns `QPQ_ERROR_INVALID_INPUT`.

// C passes raw pointers by contract (the header documents what each must point to); the
// functions are `extern "C"` entry points, not Rust API, so they are not marked `unsafe fn`.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
// `Ok(client.interrupt())` keeps a call that returns nothing one line inside `entry`.
#![allow(clippy::unit_arg)]

mod client;
mod config;
mod data;

pub use client::*;
pub use config::*;
pub use data::*;

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

use qpq_core::Error;

use crate::error::{self, qpq_code, qpq_error};

/// The ABI version this header describes: major in the high 16 bits, minor in the low 16.
/// The major changes only with a removal (and the soname with it); additions bump the minor.
pub const QPQ_ABI_VERSION: u32 = 2;

/// Runs one C call: the only `catch_unwind`, so a panic becomes `Internal`, never an abort.
fn call<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(error::panicked(p)))
}

/// A fallible C call: NULL on success, else an owned `qpq_error`.
fn entry(f: impl FnOnce() -> Result<(), Error>) -> *mut qpq_error {
    match call(f) {
        Ok(()) => null_mut(),
        Err(e) => Box::into_raw(Box::new(qpq_error::from(e))),
    }
}

/// An accessor: `f` on `*p`, or `fallback` for NULL (or a panic).
fn read<W, T>(p: *const W, fallback: T, f: impl FnOnce(&W) -> T) -> T {
    // SAFETY: the caller passes NULL or a live object of this type (the header's contract).
    match unsafe { p.as_ref() } {
        Some(w) => call(|| Ok(f(w))).unwrap_or(fallback),
        None => fallback,
    }
}

/// A required handle argument.
fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, Error> {
    // SAFETY: NULL or a live object of this type (the header's contract).
    unsafe { p.as_ref() }.ok_or_else(|| error::null_argument(name))
}

/// A required NUL-terminated UTF-8 string argument.
fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(error::null_argument(name));
    }
    // SAFETY: not NULL; the caller passes a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| error::not_utf8(name))
}

/// A `{ptr, len}` byte buffer argument; `ptr` may be NULL only when `len` is 0.
fn bytes_arg<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8], Error> {
    match (p.is_null(), len) {
        (true, 0) => Ok(&[]),
        (true, _) => Err(error::null_argument(name)),
        // SAFETY: not NULL; the caller passes `len` readable bytes that outlive the call.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(p, len) }),
    }
}

/// An array of `n` strings.
fn strs_arg<'a>(p: *const *const c_char, n: usize, name: &str) -> Result<Vec<&'a str>, Error> {
    if p.is_null() && n > 0 {
        return Err(error::null_argument(name));
    }
    (0..n)
        // SAFETY: not NULL (n > 0); the caller passes `n` readable pointers.
        .map(|i| str_arg(unsafe { *p.add(i) }, name))
        .collect()
}

/// An out-param: cleared to `empty` at once, so it holds no garbage whatever happens next.
fn out<'a, T>(p: *mut T, name: &str, empty: T) -> Result<&'a mut T, Error> {
    // SAFETY: NULL or a writable, aligned `T` (the header's contract).
    let slot = unsafe { p.as_mut() }.ok_or_else(|| error::null_argument(name))?;
    *slot = empty;
    Ok(slot)
}

/// Moves a value into an owned handle for C.
fn owned<T>(v: T) -> *mut T {
    Box::into_raw(Box::new(v))
}

/// Frees a handle made by [`owned`]; NULL is ignored.
fn free<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: made by `owned` (Box::into_raw) and not freed before (the header's contract).
        let _ = call(|| Ok(drop(unsafe { Box::from_raw(p) })));
    }
}

/// The ABI version of the linked library; compare with `QPQ_ABI_VERSION` from the header: the
/// major (high 16 bits) must be equal and the minor at least the header's. Thread-safe.
#[no_mangle]
pub extern "C" fn qpq_abi_version() -> u32 {
    QPQ_ABI_VERSION
}

/// The library's version (e.g. "0.1.0"), a static string. Thread-safe.
#[no_mangle]
pub extern "C" fn qpq_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The error's stable code; `QPQ_OK` for NULL.
#[no_mangle]
pub extern "C" fn qpq_error_code(error: *const qpq_error) -> qpq_code {
    read(error, qpq_code::QPQ_OK, |e| e.code)
}

/// The error's message (UTF-8, never secrets); borrowed from `error`. NULL for NULL.
#[no_mangle]
pub extern "C" fn qpq_error_message(error: *const qpq_error) -> *const c_char {
    read(error, std::ptr::null(), |e| e.message.as_ptr())
}

/// Milliseconds the server asked to wait before retrying; 0 when it gave no hint.
#[no_mangle]
pub extern "C" fn qpq_error_retry_after_ms(error: *const qpq_error) -> u64 {
    read(error, 0, |e| e.retry_after_ms)
}

/// The stable name of a code ("Unauthorized", as in every SDK), a static string; NULL for a
/// number this library does not know.
#[no_mangle]
pub extern "C" fn qpq_error_code_name(code: u32) -> *const c_char {
    qpq_core::ErrorCode::from_u32(code).map_or(std::ptr::null(), |c| code_names()[c as usize - 1])
}

fn code_names() -> [*const c_char; 15] {
    use qpq_core::ErrorCode as C;
    let n = |c: C| -> *const c_char {
        match c {
            C::Network => c"Network",
            C::Unauthorized => c"Unauthorized",
            C::NotFound => c"NotFound",
            C::Conflict => c"Conflict",
            C::InvalidInput => c"InvalidInput",
            C::Crypto => c"Crypto",
            C::Storage => c"Storage",
            C::RateLimited => c"RateLimited",
            C::Timeout => c"Timeout",
            C::Closed => c"Closed",
            C::Internal => c"Internal",
            C::Cancelled => c"Cancelled",
            C::Busy => c"Busy",
            C::Forbidden => c"Forbidden",
            C::AlreadyMember => c"AlreadyMember",
        }
        .as_ptr()
    };
    qpq_core::ErrorCode::ALL.map(n)
}

/// Frees an error; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_error_free(error: *mut qpq_error) {
    free(error)
}

/// Frees a string the library returned through a `char**` out-param; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_string_free(string: *mut c_char) {
    if !string.is_null() {
        // SAFETY: made by `CString::into_raw` in this library and not freed before.
        let _ = call(|| Ok(drop(unsafe { std::ffi::CString::from_raw(string) })));
    }
}

/// An owned C string for a `char**` out-param (a NUL inside becomes U+FFFD).
fn c_string(s: String) -> *mut c_char {
    std::ffi::CString::new(s.replace('\0', "\u{fffd}")).expect("NULs were replaced").into_raw()
}
