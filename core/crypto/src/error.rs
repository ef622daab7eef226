//! The error type shared by every operation in this crate.

/// Why a cryptographic operation failed.
///
/// Messages are short, lowercase and never contain key bytes, plaintext or
/// anything derived from secrets. Callers should treat every variant of a
/// failed [`open`](crate::envelope::open) or [`verify`](crate::identity::verify)
/// the same way: the input is not trustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key has the wrong length, is not a valid encoding, or is a
    /// low-order X25519 point.
    #[error("invalid key")]
    InvalidKey,
    /// An envelope is truncated, has a bad recipient count or is otherwise
    /// malformed.
    #[error("invalid envelope")]
    InvalidEnvelope,
    /// Authenticated decryption failed: wrong key, tampered bytes or wrong
    /// associated data.
    #[error("decryption failed")]
    Decrypt,
    /// The envelope has no entry for this secret key.
    #[error("not a recipient")]
    NotARecipient,
    /// An X25519 exchange produced the all-zero shared secret (low-order
    /// public key).
    #[error("non-contributory key exchange")]
    NonContributory,
    /// A signature is malformed or does not verify.
    #[error("invalid signature")]
    Signature,
    /// The envelope (or stored key) has a version or suite this build does
    /// not know.
    #[error("unsupported version")]
    UnsupportedVersion,
    /// The recipient list given to [`seal`](crate::envelope::seal) is empty,
    /// longer than [`MAX_RECIPIENTS`](crate::envelope::MAX_RECIPIENTS) or
    /// contains the same key twice.
    #[error("invalid recipient list")]
    InvalidRecipients,
    /// An OPAQUE message is malformed, or a registration step failed.
    #[error("opaque protocol error")]
    Opaque,
    /// An OPAQUE login did not finish: a wrong password, an unknown username or a malformed
    /// or tampered server message (deliberately indistinguishable).
    #[error("opaque login failed")]
    OpaqueLogin,
}
