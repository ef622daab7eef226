//! The one place where errors become C values: core's [`qpq_core::Error`], the bridge's own
//! argument errors and caught panics all end as a [`qpq_error`] with a stable code.

use std::any::Any;
use std::ffi::CString;

use qpq_core::{Error, ErrorCode};

/// The stable error codes of core's pinned table (`core/client/errors.toml`). Numbers never
/// change; a newer library may return a number this header does not name yet.
#[repr(u32)]
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qpq_code {
    /// No error: what `qpq_error_code(NULL)` returns.
    QPQ_OK = 0,
    /// The server could not be reached or the connection failed.
    QPQ_ERROR_NETWORK = 1,
    /// Not logged in, wrong password, or the session expired or was revoked.
    QPQ_ERROR_UNAUTHORIZED = 2,
    /// The user, conversation, message or key does not exist.
    QPQ_ERROR_NOT_FOUND = 3,
    /// Conflicts with current state (username taken, a commit that kept losing the race).
    QPQ_ERROR_CONFLICT = 4,
    /// The caller passed something invalid (a NULL pointer, bad name, body too large, bad id).
    QPQ_ERROR_INVALID_INPUT = 5,
    /// A cryptographic operation failed.
    QPQ_ERROR_CRYPTO = 6,
    /// The local encrypted store failed, is corrupt, or the key is wrong.
    QPQ_ERROR_STORAGE = 7,
    /// The server asks to slow down; see `qpq_error_retry_after_ms`.
    QPQ_ERROR_RATE_LIMITED = 8,
    /// The request did not complete in time.
    QPQ_ERROR_TIMEOUT = 9,
    /// The client was closed.
    QPQ_ERROR_CLOSED = 10,
    /// A bug (a caught panic) or an unexpected server answer.
    QPQ_ERROR_INTERNAL = 11,
    /// A wait was interrupted (`qpq_client_interrupt`).
    QPQ_ERROR_CANCELLED = 12,
    /// The store is held by another process.
    QPQ_ERROR_BUSY = 13,
    /// Not allowed: not an admin, a DM cannot be widened, blocked, consent missing.
    QPQ_ERROR_FORBIDDEN = 14,
    /// The invited user is already in the conversation.
    QPQ_ERROR_ALREADY_MEMBER = 15,
}

impl From<ErrorCode> for qpq_code {
    fn from(c: ErrorCode) -> qpq_code {
        use qpq_code::*;
        match c {
            ErrorCode::Network => QPQ_ERROR_NETWORK,
            ErrorCode::Unauthorized => QPQ_ERROR_UNAUTHORIZED,
            ErrorCode::NotFound => QPQ_ERROR_NOT_FOUND,
            ErrorCode::Conflict => QPQ_ERROR_CONFLICT,
            ErrorCode::InvalidInput => QPQ_ERROR_INVALID_INPUT,
            ErrorCode::Crypto => QPQ_ERROR_CRYPTO,
            ErrorCode::Storage => QPQ_ERROR_STORAGE,
            ErrorCode::RateLimited => QPQ_ERROR_RATE_LIMITED,
            ErrorCode::Timeout => QPQ_ERROR_TIMEOUT,
            ErrorCode::Closed => QPQ_ERROR_CLOSED,
            ErrorCode::Internal => QPQ_ERROR_INTERNAL,
            ErrorCode::Cancelled => QPQ_ERROR_CANCELLED,
            ErrorCode::Busy => QPQ_ERROR_BUSY,
            ErrorCode::Forbidden => QPQ_ERROR_FORBIDDEN,
            ErrorCode::AlreadyMember => QPQ_ERROR_ALREADY_MEMBER,
        }
    }
}

/// An error: a stable code, a message for humans (never secrets) and the server's retry hint.
/// Owned by the caller, who frees it with `qpq_error_free`.
pub struct qpq_error {
    pub(crate) code: qpq_code,
    pub(crate) message: CString,
    pub(crate) retry_after_ms: u64,
}

impl From<Error> for qpq_error {
    fn from(e: Error) -> qpq_error {
        let text = e.message().replace('\0', "\u{fffd}");
        qpq_error {
            code: e.code().into(),
            message: CString::new(text).expect("NULs were replaced"),
            retry_after_ms: e.retry_after().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A NULL where a pointer was required.
pub(crate) fn null_argument(name: &str) -> Error {
    Error::new(ErrorCode::InvalidInput, format!("{name} is NULL"))
}

/// A string argument that is not UTF-8.
pub(crate) fn not_utf8(name: &str) -> Error {
    Error::new(ErrorCode::InvalidInput, format!("{name} is not UTF-8"))
}

/// A value out of its range (a key of the wrong length, an index past the end).
pub(crate) fn invalid(what: String) -> Error {
    Error::new(ErrorCode::InvalidInput, what)
}

/// A panic caught at the boundary: a bug in qpq, reported as `Internal`.
pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::new(ErrorCode::Internal, format!("a bug in qpq (panic): {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every core code maps to the C constant with the same number.
    #[test]
    fn c_codes_have_core_numbers() {
        for c in ErrorCode::ALL {
            assert_eq!(qpq_code::from(c) as u32, c.as_u32(), "{}", c.name());
        }
    }

    #[test]
    fn retry_after_and_nul_in_messages_survive() {
        let e = Error::new(ErrorCode::RateLimited, "slow\0down")
            .with_retry_after(Some(std::time::Duration::from_millis(1500)));
        let c = qpq_error::from(e);
        assert_eq!(c.code, qpq_code::QPQ_ERROR_RATE_LIMITED);
        assert_eq!(c.retry_after_ms, 1500);
        assert_eq!(c.message.to_str().ok(), Some("slow\u{fffd}down"));
    }
}
