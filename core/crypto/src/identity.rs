//! Device identity keys: one Ed25519 signing key per device.
//!
//! The secret half lives in [`IdentityKey`], which is zeroized on drop and has
//! no `Debug` output beyond the public key. Signatures are checked with
//! [`verify`], which uses Ed25519 strict verification (rejects small-order
//! and non-canonical public keys and signatures).

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A device's Ed25519 identity key (secret and public half).
///
/// Zeroized on drop. `Debug` prints only the public key. Not `Clone` on
/// purpose: persist it with [`IdentityKey::to_bytes`] and reload it with
/// [`IdentityKey::from_bytes`].
pub struct IdentityKey {
    signing: SigningKey,
}

// `SigningKey` zeroizes its secret in its own `Drop`; `IdentityKey` has no
// other field, so it is zeroized on drop as a whole.
impl ZeroizeOnDrop for IdentityKey {}

impl IdentityKey {
    /// Generates a fresh identity key from `rng` (use `rand::rngs::OsRng`
    /// outside tests).
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> IdentityKey {
        IdentityKey {
            signing: SigningKey::generate(rng),
        }
    }

    /// Restores a key from the 32-byte secret seed returned by
    /// [`IdentityKey::to_bytes`]. Every 32-byte value is a valid key.
    pub fn from_bytes(secret: &[u8; 32]) -> IdentityKey {
        IdentityKey {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// Returns the 32-byte secret seed for storage. The buffer is zeroized
    /// when dropped; keep it out of logs.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// Returns the 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `msg` (pure Ed25519, RFC 8032) and returns the 64-byte
    /// signature. Deterministic: the same key and message give the same
    /// signature.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(msg).to_bytes()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &crate::hex_string(&self.public_key()))
            .finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature with strict rules (`verify_strict`).
///
/// Fails with [`CryptoError::InvalidKey`] if `public` is not a valid point,
/// and with [`CryptoError::Signature`] if `sig` is not 64 bytes, is
/// malformed, or does not verify for `msg` under `public` (including weak /
/// small-order public keys).
pub fn verify(public: &[u8; PUBLIC_KEY_LEN], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| CryptoError::InvalidKey)?;
    let sig = Signature::from_slice(sig).map_err(|_| CryptoError::Signature)?;
    key.verify_strict(msg, &sig)
        .map_err(|_| CryptoError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn sign_verify_round_trip() {
        let key = IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(7));
        let sig = key.sign(b"hello");
        assert_eq!(verify(&key.public_key(), b"hello", &sig), Ok(()));
        assert_eq!(
            verify(&key.public_key(), b"hellO", &sig),
            Err(CryptoError::Signature)
        );
    }

    #[test]
    fn tampered_or_malformed_signature_fails() {
        let key = IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(8));
        let sig = key.sign(b"msg");
        for i in 0..sig.len() {
            let mut bad = sig;
            bad[i] ^= 0x01;
            assert!(verify(&key.public_key(), b"msg", &bad).is_err(), "byte {i}");
        }
        assert_eq!(
            verify(&key.public_key(), b"msg", &sig[..63]),
            Err(CryptoError::Signature)
        );
        let other = IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(9));
        assert!(verify(&other.public_key(), b"msg", &sig).is_err());
    }

    #[test]
    fn small_order_public_key_is_rejected() {
        // The identity point (y = 1) is small order; strict verification must
        // refuse it even with a "signature" that would pass lax checks.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert!(verify(&identity_point, b"anything", &sig).is_err());
    }

    #[test]
    fn bytes_round_trip_and_debug_hides_secret() {
        let key = IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(10));
        let secret = key.to_bytes();
        let restored = IdentityKey::from_bytes(&secret);
        assert_eq!(restored.public_key(), key.public_key());
        assert_eq!(restored.sign(b"x"), key.sign(b"x"));

        let debug = format!("{key:?}");
        assert!(debug.contains(&crate::hex_string(&key.public_key())));
        assert!(!debug.contains(&crate::hex_string(&secret[..])));
    }
}
