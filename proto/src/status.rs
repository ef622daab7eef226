//! Response status codes (the first byte of a response frame).

use std::fmt;

/// Outcome of a request, carried in the response header. Values never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The request succeeded.
    Ok = 0,
    /// The request was malformed or violated a rule (wrong sizes, empty payload, ...).
    BadRequest = 1,
    /// No valid session token, or failed authentication.
    Unauthorized = 2,
    /// Authenticated, but not allowed (not a member, device limit, ...).
    Forbidden = 3,
    /// The named user, key, channel or blob does not exist.
    NotFound = 4,
    /// Too many requests; `Error.retry_after_ms` says when to retry.
    RateLimited = 5,
    /// Conflicts with the current state (commit for a stale epoch, username taken).
    Conflict = 6,
    /// The frame or a field exceeds a size limit.
    PayloadTooLarge = 7,
    /// The request did not arrive, or could not be served, in time.
    DeadlineExceeded = 8,
    /// The server cannot serve now (draining, storage full); retry later.
    Unavailable = 9,
    /// A server-side failure; nothing was changed.
    Internal = 10,
    /// The method id is unknown or not implemented.
    UnknownMethod = 11,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::NotFound,
        Status::RateLimited,
        Status::Conflict,
        Status::PayloadTooLarge,
        Status::DeadlineExceeded,
        Status::Unavailable,
        Status::Internal,
        Status::UnknownMethod,
    ];

    /// The wire byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Parses a wire byte; `None` for codes this version does not know.
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.get(usize::from(code)).copied()
    }

    /// Stable name, as used in logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::BadRequest => "BadRequest",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "NotFound",
            Status::RateLimited => "RateLimited",
            Status::Conflict => "Conflict",
            Status::PayloadTooLarge => "PayloadTooLarge",
            Status::DeadlineExceeded => "DeadlineExceeded",
            Status::Unavailable => "Unavailable",
            Status::Internal => "Internal",
            Status::UnknownMethod => "UnknownMethod",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_stable() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.code()), i);
            assert_eq!(Status::from_code(s.code()), Some(*s));
        }
        assert_eq!(Status::from_code(12), None);
        assert_eq!(Status::UnknownMethod.code(), 11);
        assert_eq!(Status::Conflict.to_string(), "Conflict");
    }
}
