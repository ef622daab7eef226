//! Cryptography shared by the qpq client and server: device identity keys,
//! the hybrid post-quantum envelope, the OPAQUE ciphersuite and safety numbers.
//!
//! Everything here is a pure function or a value type: callers pass in keys,
//! bytes and a random number generator and get bytes or keys back. This crate
//! does **no I/O, no storage, no networking, no logging and keeps no clock**;
//! it does not decide where keys live or when they rotate, and it does not
//! implement MLS (that is `openmls`, used by `qpq-core`). Secrets are
//! zeroized on drop and no secret type has a `Debug` impl that prints secret
//! bytes. Malformed input gives a [`CryptoError`], never a panic.
//!
//! | module | what |
//! |---|---|
//! | [`identity`] | one Ed25519 key per device: [`identity::IdentityKey`], [`identity::verify`] (strict) |
//! | [`envelope`] | X25519 + ML-KEM-768 multi-recipient envelope: [`envelope::seal`], [`envelope::open`] |
//! | [`opaque`] | [`opaque::OpaqueSuite`], the OPAQUE (RFC 9807) ciphersuite for accounts; use it with the re-exported [`opaque_ke`] |
//! | [`safety`] | [`safety::safety_number`], the 60-digit code users compare |
//!
//! # Envelope format v1
//!
//! Byte by byte (integers big-endian; the construction is explained in
//! [`envelope`]):
//!
//! ```text
//! offset          len   field
//! 0               1     version = 0x01
//! 1               1     suite   = 0x01  (X25519 + ML-KEM-768, HKDF-SHA256, ChaCha20-Poly1305)
//! 2               2     n = recipient count, 1..=1024
//! then n entries of 1176 bytes, entry i at 4 + 1176*i:
//!   +0            8     fingerprint = SHA-256(recipient public key)[0..8]
//!   +8            32    ephemeral X25519 public key
//!   +40           1088  ML-KEM-768 ciphertext
//!   +1128         48    content key wrapped with ChaCha20-Poly1305 (32 + 16 tag)
//! 4 + 1176*n      L+16  ChaCha20-Poly1305(content key, nonce 0,
//!                       aad = bytes [0, 4 + 1176*n) || caller aad) over the L-byte plaintext
//! ```
//!
//! A public key is 1216 bytes (X25519 32 || ML-KEM-768 encapsulation key
//! 1184). One recipient and a 1 KiB message give a 2220-byte envelope.
//! Test vectors: `core/crypto/tests/vectors/envelope-v1.json`.
//!
//! ```
//! use qpq_crypto::envelope::{open, seal, HybridSecretKey};
//! use rand::rngs::OsRng;
//!
//! let bob = HybridSecretKey::generate(&mut OsRng);
//! let envelope = seal(&mut OsRng, &[&bob.public_key()], b"conversation 7", b"hi bob")?;
//! let plaintext = open(&bob, b"conversation 7", &envelope)?;
//! assert_eq!(&plaintext[..], b"hi bob");
//! # Ok::<(), qpq_crypto::CryptoError>(())
//! ```

pub mod envelope;
mod error;
pub mod identity;
pub mod opaque;
pub mod safety;

pub use error::CryptoError;
pub use opaque_ke;

/// Lowercase hex, for `Debug` output of public values only.
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
