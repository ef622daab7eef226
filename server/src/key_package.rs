//! Upload validation of MLS KeyPackages (plan K-3).
//!
//! The server stays MLS-unaware for messages, but a KeyPackage it hands out is a promise about
//! a device: "this is how to add me to a group". So every uploaded KeyPackage is parsed with
//! openmls and refused unless it is one of our ciphersuites (and the one the upload names),
//! both signatures verify, its BasicCredential identity and signature key are the uploading
//! device's Ed25519 key, its lifetime covers now (and is not longer than openmls' maximum
//! range), it is at most [`MAX_KEY_PACKAGE_BYTES`], and its `init_key` is not repeated.
//!
//! What it will not do: look at the device's other state, or check anything about the
//! leaf's capabilities beyond what openmls' `KeyPackageIn::validate` does. The repeated-init-key
//! check here covers one upload; storage checks it against the device's stored KeyPackages.

use std::time::SystemTime;

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{BasicCredential, KeyPackageIn, KeyPackageVerifyError, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use sha2::{Digest, Sha256};

use crate::storage::Key32;

/// Largest KeyPackage accepted, in bytes. Ours are about 0.3 KiB (classic) and 2.7 KiB
/// (X-Wing); 8 KiB leaves room for extensions without letting the directory store bulk data.
pub const MAX_KEY_PACKAGE_BYTES: usize = 8 * 1024;

/// Why an uploaded KeyPackage was refused. Every variant answers `BadRequest`; the message
/// names the rule (never key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPackageError {
    /// Zero bytes.
    #[error("a KeyPackage is never empty")]
    Empty,
    /// Over [`MAX_KEY_PACKAGE_BYTES`].
    #[error("a KeyPackage is at most {max} bytes, got {len}")]
    TooLarge {
        /// Size of the refused KeyPackage.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The upload names a ciphersuite the server does not accept.
    #[error("ciphersuite {0:#06x} is not accepted; use 0x0001 or 0x004f")]
    UnsupportedSuite(u32),
    /// The KeyPackage's ciphersuite is not the one the upload names.
    #[error("KeyPackage ciphersuite {found:#06x} differs from the upload's {declared:#06x}")]
    SuiteMismatch {
        /// The ciphersuite field of the KeyPackage.
        found: u16,
        /// `UploadKeyPackageRequest.ciphersuite`.
        declared: u32,
    },
    /// Not a TLS-encoded MLS KeyPackage (or trailing bytes).
    #[error("not an MLS KeyPackage: {0}")]
    Malformed(String),
    /// The KeyPackage or its leaf node signature does not verify.
    #[error("KeyPackage signature does not verify: {0}")]
    BadSignature(String),
    /// The lifetime does not cover now, or spans more than openmls allows.
    #[error("KeyPackage lifetime is not acceptable: {0}")]
    Lifetime(String),
    /// Anything else `KeyPackageIn::validate` refuses (protocol version, init key equal to
    /// the encryption key, extensions not in the capabilities).
    #[error("invalid KeyPackage: {0}")]
    Invalid(String),
    /// The credential is not a BasicCredential whose identity is the uploading device's key.
    #[error("KeyPackage credential does not name the uploading device")]
    ForeignCredential,
    /// The leaf's signature key is not the uploading device's key.
    #[error("KeyPackage signature key is not the uploading device's key")]
    ForeignSignatureKey,
    /// Two KeyPackages of one upload share an `init_key`.
    #[error("two KeyPackages of the upload share an init_key")]
    DuplicateInitKey,
}

/// A KeyPackage that passed [`validate`]: what storage needs besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidKeyPackage {
    /// SHA-256 of the HPKE `init_key` (unique per device in storage).
    pub init_key_hash: Key32,
    /// Carries the RFC 9420 `last_resort` extension: it becomes the device's last-resort
    /// KeyPackage (issue 17 item 13), not part of the stock.
    pub last_resort: bool,
}

/// Validates one uploaded KeyPackage of `device_key`, named as `declared_suite` by the upload,
/// at wall-clock time `now` (lifetimes are wall-clock by definition).
pub fn validate(
    bytes: &[u8],
    declared_suite: u32,
    device_key: &Key32,
    now: SystemTime,
) -> Result<ValidKeyPackage, KeyPackageError> {
    if bytes.is_empty() {
        return Err(KeyPackageError::Empty);
    }
    if bytes.len() > MAX_KEY_PACKAGE_BYTES {
        return Err(KeyPackageError::TooLarge {
            len: bytes.len(),
            max: MAX_KEY_PACKAGE_BYTES,
        });
    }
    if qpq_proto::suite::by_id(declared_suite).is_none() {
        return Err(KeyPackageError::UnsupportedSuite(declared_suite));
    }
    // KeyPackageTBS starts with version (u16) then cipher_suite (u16): refuse a foreign suite
    // before any signature work.
    let found = match bytes {
        [_, _, hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => return Err(KeyPackageError::Malformed("truncated".into())),
    };
    if u32::from(found) != declared_suite {
        return Err(KeyPackageError::SuiteMismatch {
            found,
            declared: declared_suite,
        });
    }
    let kp_in = KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|e| KeyPackageError::Malformed(e.to_string()))?;
    let kp = kp_in
        .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
        .map_err(|e| match e {
            KeyPackageVerifyError::InvalidSignature
            | KeyPackageVerifyError::InvalidLeafNodeSignature => {
                KeyPackageError::BadSignature(e.to_string())
            }
            KeyPackageVerifyError::LifetimeError(_) | KeyPackageVerifyError::MissingLifetime => {
                KeyPackageError::Lifetime(e.to_string())
            }
            other => KeyPackageError::Invalid(other.to_string()),
        })?;
    // `validate` checked the lifetime against the system clock; check it against `now` too
    // (the caller's clock, the same one in production) and bound its length.
    let lifetime = kp.life_time();
    lifetime
        .validate_with_time(now)
        .map_err(|e| KeyPackageError::Lifetime(e.to_string()))?;
    if !lifetime.has_acceptable_range() {
        return Err(KeyPackageError::Lifetime(
            "longer than the maximum lifetime range".into(),
        ));
    }
    let leaf = kp.leaf_node();
    let identity = BasicCredential::try_from(leaf.credential().clone())
        .map_err(|_| KeyPackageError::ForeignCredential)?;
    if identity.identity() != device_key.as_slice() {
        return Err(KeyPackageError::ForeignCredential);
    }
    if leaf.signature_key().as_slice() != device_key.as_slice() {
        return Err(KeyPackageError::ForeignSignatureKey);
    }
    Ok(ValidKeyPackage {
        init_key_hash: Sha256::digest(kp.hpke_init_key().as_slice()).into(),
        last_resort: kp.last_resort(),
    })
}

/// Validates every KeyPackage of one upload; the first failure refuses the whole upload
/// (nothing of it is stored). Also refuses a repeated `init_key` within the upload.
pub fn validate_upload(
    packages: &[bytes::Bytes],
    declared_suite: u32,
    device_key: &Key32,
    now: SystemTime,
) -> Result<Vec<ValidKeyPackage>, (usize, KeyPackageError)> {
    let mut seen = std::collections::HashSet::with_capacity(packages.len());
    let mut out = Vec::with_capacity(packages.len());
    for (i, p) in packages.iter().enumerate() {
        let v = validate(p, declared_suite, device_key, now).map_err(|e| (i, e))?;
        if !seen.insert(v.init_key_hash) {
            return Err((i, KeyPackageError::DuplicateInitKey));
        }
        out.push(v);
    }
    Ok(out)
}
