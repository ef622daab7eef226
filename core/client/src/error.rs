//! The public error type and the one place where every layer's internal error becomes it.

use std::fmt;
use std::time::Duration;

use qpq_proto::Status;

/// Stable numeric error codes shared by every language binding. Numbers never change; the
/// pinned table is `core/client/errors.toml` (number, name, meaning), which every SDK tests
/// itself against.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The server could not be reached or the connection failed.
    Network = 1,
    /// Not logged in, wrong password, or the session expired or was revoked.
    Unauthorized = 2,
    /// The user, conversation or key does not exist.
    NotFound = 3,
    /// Conflicts with current state (username taken, concurrent commit that kept losing).
    Conflict = 4,
    /// The caller passed something invalid.
    InvalidInput = 5,
    /// A cryptographic operation failed (cannot decrypt, bad signature, MLS error).
    Crypto = 6,
    /// The local encrypted store failed, is corrupt, or the key is wrong.
    Storage = 7,
    /// The server asks to slow down.
    RateLimited = 8,
    /// The request did not complete in time.
    Timeout = 9,
    /// The client was closed.
    Closed = 10,
    /// A bug or an unexpected server answer.
    Internal = 11,
    /// A wait was interrupted or cancelled (e.g. [`crate::Client::interrupt`]).
    Cancelled = 12,
    /// The store is held by another process.
    Busy = 13,
    /// Not allowed: not an admin, a DM cannot be widened, blocked, consent missing.
    Forbidden = 14,
    /// The invited user is already in the conversation.
    AlreadyMember = 15,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Network,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::InvalidInput,
        ErrorCode::Crypto,
        ErrorCode::Storage,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::Closed,
        ErrorCode::Internal,
        ErrorCode::Cancelled,
        ErrorCode::Busy,
        ErrorCode::Forbidden,
        ErrorCode::AlreadyMember,
    ];

    /// Stable name, identical in every SDK.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Network => "Network",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::InvalidInput => "InvalidInput",
            ErrorCode::Crypto => "Crypto",
            ErrorCode::Storage => "Storage",
            ErrorCode::RateLimited => "RateLimited",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Closed => "Closed",
            ErrorCode::Internal => "Internal",
            ErrorCode::Cancelled => "Cancelled",
            ErrorCode::Busy => "Busy",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::AlreadyMember => "AlreadyMember",
        }
    }

    /// The numeric value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code with this number; `None` for a number this version does not know.
    pub fn from_u32(n: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_u32() == n)
    }
}

/// The error every public [`crate::Client`] method returns: a stable code, a human message
/// that never contains secrets, and when the server said so, how long to wait before retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

impl Error {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with a retry hint.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Error {
        self.retry_after = retry_after;
        self
    }

    /// How long the server asked to wait before trying again (`RateLimited`, sometimes
    /// `Network` for an unavailable server); `None` when it gave no hint.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidInput, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Internal, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::NotFound, message)
    }

    pub(crate) fn crypto(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Crypto, message)
    }

    pub(crate) fn closed() -> Error {
        Error::new(ErrorCode::Closed, "the client is closed")
    }

    pub(crate) fn not_logged_in() -> Error {
        Error::new(ErrorCode::Unauthorized, "not logged in")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Error {}

/// Failures of the network layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    /// Could not connect.
    #[error("cannot connect to the server: {0}")]
    Connect(String),
    /// The connection or stream failed.
    #[error("connection failed: {0}")]
    Transport(String),
    /// No answer in time.
    #[error("the server did not answer in time")]
    Timeout,
    /// The server answered with an error status.
    #[error("{message}")]
    Status {
        /// Status of the response.
        status: Status,
        /// Server message.
        message: String,
        /// The server's retry hint (0 = none), milliseconds.
        retry_after_ms: u64,
    },
    /// The answer did not decode.
    #[error("malformed server answer: {0}")]
    Protocol(String),
    /// TLS configuration problem.
    #[error("tls configuration: {0}")]
    Tls(String),
}

impl NetError {
    pub(crate) fn status(&self) -> Option<Status> {
        match self {
            NetError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Failures of the local store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Wrong key or not a qpq store.
    #[error("cannot open the store: wrong passphrase or key, or the file is not a qpq store (the file was not modified)")]
    WrongKey,
    /// SQLite failed.
    #[error("store: {0}")]
    Sqlite(String),
    /// Filesystem failed.
    #[error("store file: {0}")]
    Io(String),
    /// Stored data is inconsistent.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// Failures of the MLS layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MlsError {
    /// openmls refused or failed.
    #[error("mls: {0}")]
    Openmls(String),
    /// A message or Welcome could not be decrypted or verified.
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

/// Failures of OPAQUE login/registration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// Wrong username or password.
    #[error("wrong username or password")]
    BadCredentials,
    /// OPAQUE protocol failure.
    #[error("opaque: {0}")]
    Protocol(String),
}

impl From<NetError> for Error {
    fn from(e: NetError) -> Error {
        let code = match &e {
            NetError::Connect(_) | NetError::Transport(_) => ErrorCode::Network,
            NetError::Timeout => ErrorCode::Timeout,
            NetError::Protocol(_) => ErrorCode::Internal,
            NetError::Tls(_) => ErrorCode::InvalidInput,
            NetError::Status { status, .. } => match status {
                Status::Unauthorized => ErrorCode::Unauthorized,
                Status::Forbidden => ErrorCode::Forbidden,
                Status::NotFound => ErrorCode::NotFound,
                Status::Conflict => ErrorCode::Conflict,
                Status::RateLimited => ErrorCode::RateLimited,
                Status::BadRequest | Status::PayloadTooLarge => ErrorCode::InvalidInput,
                Status::DeadlineExceeded => ErrorCode::Timeout,
                Status::Unavailable => ErrorCode::Network,
                _ => ErrorCode::Internal,
            },
        };
        let retry_after = match &e {
            NetError::Status { retry_after_ms, .. } if *retry_after_ms > 0 => {
                Some(Duration::from_millis(*retry_after_ms))
            }
            _ => None,
        };
        let message = match &e {
            NetError::Status {
                status: Status::Unauthorized,
                message,
                ..
            } => format!("session expired or revoked, log in again ({message})"),
            NetError::Status {
                status, message, ..
            } => {
                format!("server: {} ({message})", status.name())
            }
            other => other.to_string(),
        };
        Error::new(code, message).with_retry_after(retry_after)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::new(ErrorCode::Storage, e.to_string())
    }
}

impl From<MlsError> for Error {
    fn from(e: MlsError) -> Error {
        Error::new(ErrorCode::Crypto, e.to_string())
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        match e {
            AuthError::BadCredentials => Error::new(ErrorCode::Unauthorized, e.to_string()),
            AuthError::Protocol(_) => Error::new(ErrorCode::Crypto, e.to_string()),
        }
    }
}

impl From<qpq_crypto::CryptoError> for Error {
    fn from(e: qpq_crypto::CryptoError) -> Error {
        Error::new(ErrorCode::Crypto, format!("crypto: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.as_u32() as usize, i + 1);
            assert_eq!(ErrorCode::from_u32(c.as_u32()), Some(*c));
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::Internal.name(), "Internal");
    }

    /// The Rust enum is exactly the pinned table `core/client/errors.toml`: same numbers, same
    /// names, every code documented, none missing on either side.
    #[test]
    fn codes_match_the_pinned_table() {
        struct Row {
            number: u32,
            name: String,
            meaning: String,
        }
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/errors.toml"))
            .expect("errors.toml is checked in next to Cargo.toml");
        // A small reader for the table's fixed shape (`[[code]]` then `key = value` lines),
        // so the check needs no TOML dependency.
        let mut rows: Vec<Row> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line == "[[code]]" {
                rows.push(Row {
                    number: 0,
                    name: String::new(),
                    meaning: String::new(),
                });
                continue;
            }
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            let row = rows.last_mut().expect("a key before the first [[code]]");
            let unquoted = value.trim_matches('"').to_string();
            match key {
                "number" => row.number = value.parse().expect("a number"),
                "name" => row.name = unquoted,
                "meaning" => row.meaning = unquoted,
                other => panic!("unknown key {other} in errors.toml"),
            }
        }
        struct Table {
            code: Vec<Row>,
        }
        let table = Table { code: rows };
        assert_eq!(table.code.len(), ErrorCode::ALL.len(), "one row per code");
        for (row, code) in table.code.iter().zip(ErrorCode::ALL) {
            assert_eq!(
                (row.number, row.name.as_str()),
                (code.as_u32(), code.name()),
                "errors.toml row {} differs from ErrorCode",
                row.number
            );
            assert!(
                !row.meaning.trim().is_empty(),
                "{} has no meaning",
                row.name
            );
        }
    }

    #[test]
    fn server_status_maps_to_codes_and_keeps_retry_after() {
        let e = Error::from(NetError::Status {
            status: Status::RateLimited,
            message: "slow down".into(),
            retry_after_ms: 1500,
        });
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        let e = Error::from(NetError::Status {
            status: Status::Forbidden,
            message: "not an admin".into(),
            retry_after_ms: 0,
        });
        assert_eq!(e.code(), ErrorCode::Forbidden);
        assert_eq!(e.retry_after(), None);
    }
}
