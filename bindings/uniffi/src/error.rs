//! The one error mapping of the UniFFI binding: `qpq_core::Error` becomes [`QpqError`], a typed
//! enum with one variant per pinned code, so Kotlin and Swift catch a type, never parse text.

use qpq_core::ErrorCode as CoreCode;

/// A failed call: one variant per code of `core/client/errors.toml`, each carrying the human
/// `detail` (never a secret) and, when the server gave one, `retry_after_ms`. Kotlin sees a
/// sealed `QpqException` with one subclass per variant; Swift an `enum QpqError: Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum QpqError {
    /// 1: the server could not be reached or the connection failed.
    #[error("Network: {detail}")]
    Network {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 2: not logged in, wrong password, or the session expired or was revoked.
    #[error("Unauthorized: {detail}")]
    Unauthorized {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 3: the user, conversation, message or key does not exist.
    #[error("NotFound: {detail}")]
    NotFound {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 4: conflicts with current state (username taken, a commit that kept losing).
    #[error("Conflict: {detail}")]
    Conflict {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 5: the caller passed something invalid.
    #[error("InvalidInput: {detail}")]
    InvalidInput {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 6: a cryptographic operation failed.
    #[error("Crypto: {detail}")]
    Crypto {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 7: the local encrypted store failed, is corrupt, or the key is wrong.
    #[error("Storage: {detail}")]
    Storage {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 8: the server asks to slow down; `retry_after_ms` says when to try again.
    #[error("RateLimited: {detail}")]
    RateLimited {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 9: the request did not complete in time.
    #[error("Timeout: {detail}")]
    Timeout {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 10: the client was closed (shut down).
    #[error("Closed: {detail}")]
    Closed {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 11: a bug or an unexpected server answer (also: a listener threw).
    #[error("Internal: {detail}")]
    Internal {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 12: a wait was interrupted or cancelled.
    #[error("Cancelled: {detail}")]
    Cancelled {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 13: the store is held by another process.
    #[error("Busy: {detail}")]
    Busy {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 14: not allowed (not an admin, a DM cannot be widened, ...).
    #[error("Forbidden: {detail}")]
    Forbidden {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// 15: the invited user is already in the conversation.
    #[error("AlreadyMember: {detail}")]
    AlreadyMember {
        /// What happened, for humans.
        detail: String,
        /// How long the server asked to wait, in milliseconds.
        retry_after_ms: Option<u64>,
    },
}

impl QpqError {
    /// The error of `code` with this message and retry hint.
    fn of(code: CoreCode, detail: String, retry_after_ms: Option<u64>) -> QpqError {
        let (d, r) = (detail, retry_after_ms);
        match code {
            CoreCode::Network => QpqError::Network {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Unauthorized => QpqError::Unauthorized {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::NotFound => QpqError::NotFound {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Conflict => QpqError::Conflict {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::InvalidInput => QpqError::InvalidInput {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Crypto => QpqError::Crypto {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Storage => QpqError::Storage {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::RateLimited => QpqError::RateLimited {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Timeout => QpqError::Timeout {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Closed => QpqError::Closed {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Internal => QpqError::Internal {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Cancelled => QpqError::Cancelled {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Busy => QpqError::Busy {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::Forbidden => QpqError::Forbidden {
                detail: d,
                retry_after_ms: r,
            },
            CoreCode::AlreadyMember => QpqError::AlreadyMember {
                detail: d,
                retry_after_ms: r,
            },
        }
    }

    /// The pinned code of this error.
    pub fn code(&self) -> CoreCode {
        match self {
            QpqError::Network { .. } => CoreCode::Network,
            QpqError::Unauthorized { .. } => CoreCode::Unauthorized,
            QpqError::NotFound { .. } => CoreCode::NotFound,
            QpqError::Conflict { .. } => CoreCode::Conflict,
            QpqError::InvalidInput { .. } => CoreCode::InvalidInput,
            QpqError::Crypto { .. } => CoreCode::Crypto,
            QpqError::Storage { .. } => CoreCode::Storage,
            QpqError::RateLimited { .. } => CoreCode::RateLimited,
            QpqError::Timeout { .. } => CoreCode::Timeout,
            QpqError::Closed { .. } => CoreCode::Closed,
            QpqError::Internal { .. } => CoreCode::Internal,
            QpqError::Cancelled { .. } => CoreCode::Cancelled,
            QpqError::Busy { .. } => CoreCode::Busy,
            QpqError::Forbidden { .. } => CoreCode::Forbidden,
            QpqError::AlreadyMember { .. } => CoreCode::AlreadyMember,
        }
    }

    /// An `InvalidInput` error (a malformed id or key given by the caller).
    pub(crate) fn invalid(detail: impl Into<String>) -> QpqError {
        QpqError::InvalidInput {
            detail: detail.into(),
            retry_after_ms: None,
        }
    }
}

impl From<qpq_core::Error> for QpqError {
    fn from(e: qpq_core::Error) -> QpqError {
        let retry = e
            .retry_after()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        QpqError::of(e.code(), e.message().to_string(), retry)
    }
}

/// A foreign listener threw (or returned something the scaffolding could not read): reported
/// as `Internal`, logged, and the next event is still delivered.
impl From<uniffi::UnexpectedUniFFICallbackError> for QpqError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> QpqError {
        QpqError::Internal {
            detail: format!("a foreign callback failed: {}", e.reason),
            retry_after_ms: None,
        }
    }
}

/// Always fails, with the error of pinned code `number` (an unknown number gives
/// `InvalidInput`). It exists so each SDK can test that every row of `errors.toml` arrives
/// as its own typed error; it does nothing else.
#[uniffi::export]
pub fn error_for_code(number: u32) -> Result<(), QpqError> {
    match CoreCode::from_u32(number) {
        Some(code) => Err(QpqError::of(
            code,
            format!("error_for_code({number})"),
            None,
        )),
        None => Err(QpqError::invalid(format!("no error code {number}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_code_maps_to_its_own_variant_and_back() {
        for code in CoreCode::ALL {
            let e = QpqError::from(
                qpq_core::Error::new(code, "m")
                    .with_retry_after(Some(std::time::Duration::from_millis(7))),
            );
            assert_eq!(e.code(), code);
            assert!(e.to_string().starts_with(code.name()), "{e}");
            let err = error_for_code(code.as_u32()).expect_err("always fails");
            assert_eq!(err.code(), code);
        }
        let e = error_for_code(0).expect_err("always fails");
        assert_eq!(e.code(), CoreCode::InvalidInput);
    }
}
