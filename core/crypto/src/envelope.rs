//! The hybrid X25519 + ML-KEM-768 multi-recipient envelope (format v1).
//!
//! [`seal`] encrypts one plaintext for up to [`MAX_RECIPIENTS`] holders of a
//! [`HybridSecretKey`]; each of them can [`open`] it. Confidentiality holds as
//! long as *either* X25519 or ML-KEM-768 is unbroken.
//!
//! # Construction
//!
//! 1. A fresh random 32-byte content key `K` encrypts the plaintext once with
//!    ChaCha20-Poly1305, nonce = 12 zero bytes, associated data = the full
//!    envelope header (every byte before the ciphertext, i.e. all recipient
//!    entries) followed by the caller's `aad`. The all-zero nonce is safe
//!    because `K` is drawn fresh for every envelope and encrypts exactly one
//!    message, so a (key, nonce) pair is never reused.
//! 2. For each recipient with public key `(pk_x, pk_m)`:
//!    - a fresh ephemeral X25519 key `eph`; `ss_x = X25519(eph, pk_x)`, which
//!      must be contributory (not all-zero), else [`CryptoError::NonContributory`];
//!    - `(ct_m, ss_m) = ML-KEM-768.Encaps(pk_m)`;
//!    - `wrap_key = HKDF-SHA256(salt = "" , ikm = ss_m || ss_x,
//!      info = "qpq hybrid envelope v1 wrap" || ct_m || eph_pk || pk_x || pk_m)`,
//!      32 bytes. Both shared secrets, the ML-KEM ciphertext, the ephemeral
//!      key and both halves of the recipient key are bound into the key;
//!    - `wrapped_key = ChaCha20-Poly1305(wrap_key, nonce = 12 zero bytes,
//!      aad = version || suite || recipient_count || fingerprint || eph_pk || ct_m,
//!      msg = K)`. The zero nonce is safe because `wrap_key` depends on a
//!      fresh ephemeral key and a fresh ML-KEM encapsulation and is used once.
//!      (The wrapped keys themselves cannot be in their own associated data;
//!      the content AEAD in step 1 authenticates the complete header.)
//!
//! # Byte format (v1)
//!
//! All integers are big-endian.
//!
//! | offset | length | field |
//! |---|---|---|
//! | 0 | 1 | version = `0x01` |
//! | 1 | 1 | suite = `0x01` (X25519 + ML-KEM-768, HKDF-SHA256, ChaCha20-Poly1305) |
//! | 2 | 2 | recipient count `n`, `1..=1024` (u16) |
//! | 4 + 1176·i | 8 | recipient `i`: fingerprint of its public key ([`HybridPublicKey::fingerprint`]) |
//! | 12 + 1176·i | 32 | recipient `i`: ephemeral X25519 public key |
//! | 44 + 1176·i | 1088 | recipient `i`: ML-KEM-768 ciphertext `ct_m` |
//! | 1132 + 1176·i | 48 | recipient `i`: wrapped content key (32 B ciphertext + 16 B tag) |
//! | 4 + 1176·n | len(plaintext) + 16 | content ciphertext + Poly1305 tag |
//!
//! The header is the first `4 + 1176·n` bytes. Total size is
//! [`sealed_len`]`(n, len(plaintext))`; for one recipient and a 1 KiB message
//! that is 2220 bytes.
//!
//! # Public and secret key encodings
//!
//! - [`HybridPublicKey`]: X25519 public key (32 B) || ML-KEM-768 encapsulation
//!   key (1184 B) = [`HYBRID_PUBLIC_KEY_LEN`] = 1216 bytes.
//! - [`HybridSecretKey`] storage form: `0x01` || 64-byte seed
//!   ([`HYBRID_SECRET_KEY_LEN`] = 65 bytes). Both halves are derived from the
//!   seed, see [`HybridSecretKey::from_seed`].
//!
//! # What the envelope does not do
//!
//! It does not authenticate the sender: anyone can seal to a public key, and
//! any recipient knows `K` and could re-seal different content for the other
//! recipients. Sign the envelope (or its contents) with an
//! [`IdentityKey`](crate::identity::IdentityKey) when the sender matters. It
//! does not hide the plaintext length or the number of recipients, and the
//! fingerprints link envelopes addressed to the same key.

use core::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use ml_kem::{ml_kem_768, Decapsulate, KeyExport, B32};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;

type EncapsulationKey = ml_kem_768::EncapsulationKey;
type DecapsulationKey = ml_kem_768::DecapsulationKey;
type MlKemCiphertext = ml_kem_768::Ciphertext;

/// Envelope format version written in byte 0.
pub const ENVELOPE_VERSION: u8 = 1;
/// Algorithm suite written in byte 1: X25519 + ML-KEM-768, HKDF-SHA256,
/// ChaCha20-Poly1305.
pub const SUITE_X25519_MLKEM768: u8 = 1;
/// Largest number of recipients one envelope may carry.
pub const MAX_RECIPIENTS: usize = 1024;

const X25519_LEN: usize = 32;
const MLKEM_EK_LEN: usize = 1184;
const MLKEM_CT_LEN: usize = 1088;

/// Length of an encoded [`HybridPublicKey`]: 32 + 1184 bytes.
pub const HYBRID_PUBLIC_KEY_LEN: usize = X25519_LEN + MLKEM_EK_LEN;
/// Length of a [`HybridSecretKey`] in storage form: format byte + 64-byte seed.
pub const HYBRID_SECRET_KEY_LEN: usize = 1 + SEED_LEN;
/// Length of a public key fingerprint (recipient id).
pub const FINGERPRINT_LEN: usize = 8;

const SEED_LEN: usize = 64;
const SECRET_KEY_FORMAT_V1: u8 = 1;
const PRELUDE_LEN: usize = 4;
const TAG_LEN: usize = 16;
const CONTENT_KEY_LEN: usize = 32;
const WRAPPED_KEY_LEN: usize = CONTENT_KEY_LEN + TAG_LEN;
/// Bytes of a recipient entry covered by the wrap AEAD's associated data.
const ENTRY_BOUND_LEN: usize = FINGERPRINT_LEN + X25519_LEN + MLKEM_CT_LEN;
const ENTRY_LEN: usize = ENTRY_BOUND_LEN + WRAPPED_KEY_LEN;

const WRAP_LABEL: &[u8] = b"qpq hybrid envelope v1 wrap";
const SECRET_KEY_LABEL: &[u8] = b"qpq hybrid secret key v1";

/// Fixed X25519 scalar used only to test whether a public key is low order.
const PROBE_SCALAR: [u8; 32] = [0x42; 32];

/// The size in bytes of an envelope sealed for `recipient_count` recipients
/// over a `plaintext_len`-byte plaintext.
pub const fn sealed_len(recipient_count: usize, plaintext_len: usize) -> usize {
    PRELUDE_LEN + recipient_count * ENTRY_LEN + plaintext_len + TAG_LEN
}

/// A recipient's public key: X25519 and ML-KEM-768 encapsulation key.
///
/// Obtain one from [`HybridSecretKey::public_key`] or parse it with
/// [`HybridPublicKey::from_bytes`]; both guarantee the key is well formed.
#[derive(Clone)]
pub struct HybridPublicKey {
    x25519: PublicKey,
    mlkem: EncapsulationKey,
    bytes: Box<[u8; HYBRID_PUBLIC_KEY_LEN]>,
}

impl HybridPublicKey {
    fn from_parts(x25519: PublicKey, mlkem: EncapsulationKey) -> HybridPublicKey {
        let mut bytes = Box::new([0u8; HYBRID_PUBLIC_KEY_LEN]);
        bytes[..X25519_LEN].copy_from_slice(x25519.as_bytes());
        bytes[X25519_LEN..].copy_from_slice(&mlkem.to_bytes());
        HybridPublicKey {
            x25519,
            mlkem,
            bytes,
        }
    }

    /// Parses the 1216-byte encoding (X25519 32 B || ML-KEM-768 1184 B).
    ///
    /// Fails with [`CryptoError::InvalidKey`] if the length is wrong, if the
    /// X25519 key is a low-order point (including all-zero), or if the
    /// ML-KEM key fails the FIPS 203 modulus check (a coefficient is not
    /// reduced mod q, detected by decoding, re-encoding and comparing).
    pub fn from_bytes(bytes: &[u8]) -> Result<HybridPublicKey, CryptoError> {
        if bytes.len() != HYBRID_PUBLIC_KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let (x_bytes, m_bytes) = bytes.split_at(X25519_LEN);
        let x_arr: [u8; X25519_LEN] = x_bytes.try_into().map_err(|_| CryptoError::InvalidKey)?;
        let x25519 = PublicKey::from(x_arr);
        // A clamped scalar times a low-order point is the identity, whose
        // encoding is all-zero: that is exactly what `was_contributory` detects.
        if !StaticSecret::from(PROBE_SCALAR)
            .diffie_hellman(&x25519)
            .was_contributory()
        {
            return Err(CryptoError::InvalidKey);
        }
        let encoded = ml_kem::Key::<EncapsulationKey>::try_from(m_bytes)
            .map_err(|_| CryptoError::InvalidKey)?;
        // `new` runs the FIPS 203 §7.2 modulus check; the re-encoding comparison keeps the
        // check explicit whatever the library version does.
        let mlkem = EncapsulationKey::new(&encoded).map_err(|_| CryptoError::InvalidKey)?;
        if mlkem.to_bytes() != encoded {
            return Err(CryptoError::InvalidKey);
        }
        Ok(HybridPublicKey::from_parts(x25519, mlkem))
    }

    /// Returns the 1216-byte encoding accepted by [`HybridPublicKey::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// The first 8 bytes of SHA-256 over [`HybridPublicKey::to_bytes`]. Used
    /// as the recipient id inside envelopes; not a security-critical binding
    /// (the full key is bound by the key derivation).
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let digest = Sha256::digest(&self.bytes[..]);
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        out
    }
}

impl PartialEq for HybridPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for HybridPublicKey {}

impl core::hash::Hash for HybridPublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridPublicKey")
            .field("fingerprint", &crate::hex_string(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// A recipient's secret key: X25519 static secret and ML-KEM-768
/// decapsulation key, both derived from a 64-byte seed.
///
/// Zeroized on drop (seed, X25519 secret and ML-KEM key). `Debug` prints only
/// the public key fingerprint. Not `Clone` on purpose.
pub struct HybridSecretKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    x25519: StaticSecret,
    mlkem: DecapsulationKey,
    public: HybridPublicKey,
}

// Every field zeroizes itself on drop: `Zeroizing`, `StaticSecret` (x25519-dalek
// `zeroize` feature) and `DecapsulationKey` (ml-kem `zeroize` feature); the
// public key is not secret.
impl ZeroizeOnDrop for HybridSecretKey {}

impl HybridSecretKey {
    /// Generates a fresh key: draws a 64-byte seed from `rng` and calls
    /// [`HybridSecretKey::from_seed`].
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> HybridSecretKey {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        rng.fill_bytes(&mut seed[..]);
        HybridSecretKey::from_seed(&seed)
    }

    /// Derives a key deterministically from a 64-byte seed.
    ///
    /// `okm = HKDF-SHA256(salt = "", ikm = seed, info = "qpq hybrid secret key v1")`,
    /// 96 bytes: `okm[0..32]` is the X25519 secret (clamped by X25519 as
    /// usual), `okm[32..64]` and `okm[64..96]` are the ML-KEM-768 `d` and `z`
    /// seeds of FIPS 203 `ML-KEM.KeyGen_internal(d, z)`. The same seed gives
    /// the same key in every version of this format.
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> HybridSecretKey {
        let mut okm = Zeroizing::new([0u8; 96]);
        Hkdf::<Sha256>::new(Some(&[]), seed)
            .expand(SECRET_KEY_LABEL, &mut okm[..])
            .expect("96 bytes is a valid HKDF-SHA256 output length");
        let mut x_secret = Zeroizing::new([0u8; 32]);
        x_secret.copy_from_slice(&okm[..32]);
        let x25519 = StaticSecret::from(*x_secret);
        // `from_seed` splits the 64 bytes into FIPS 203's d (first half) and z (second half).
        let mut dz = ml_kem::Seed::try_from(&okm[32..96]).expect("64-byte slice");
        let mlkem = DecapsulationKey::from_seed(dz);
        dz.as_mut_slice().zeroize();
        let ek = mlkem.encapsulation_key().clone();
        let public = HybridPublicKey::from_parts(PublicKey::from(&x25519), ek);
        HybridSecretKey {
            seed: Zeroizing::new(*seed),
            x25519,
            mlkem,
            public,
        }
    }

    /// Returns the storage form: `0x01` || 64-byte seed (65 bytes). Keep it
    /// secret; the buffer is zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(HYBRID_SECRET_KEY_LEN));
        out.push(SECRET_KEY_FORMAT_V1);
        out.extend_from_slice(&self.seed[..]);
        out
    }

    /// Parses the storage form written by [`HybridSecretKey::to_bytes`].
    ///
    /// Fails with [`CryptoError::InvalidKey`] on a wrong length and
    /// [`CryptoError::UnsupportedVersion`] on an unknown format byte.
    pub fn from_bytes(bytes: &[u8]) -> Result<HybridSecretKey, CryptoError> {
        if bytes.len() != HYBRID_SECRET_KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        if bytes[0] != SECRET_KEY_FORMAT_V1 {
            return Err(CryptoError::UnsupportedVersion);
        }
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        seed.copy_from_slice(&bytes[1..]);
        Ok(HybridSecretKey::from_seed(&seed))
    }

    /// Returns the matching public key.
    pub fn public_key(&self) -> HybridPublicKey {
        self.public.clone()
    }
}

impl fmt::Debug for HybridSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridSecretKey")
            .field(
                "fingerprint",
                &crate::hex_string(&self.public.fingerprint()),
            )
            .finish_non_exhaustive()
    }
}

/// Derives the 32-byte key that wraps the content key for one recipient.
///
/// `HKDF-SHA256(salt = "", ikm = ss_m || ss_x,
/// info = WRAP_LABEL || ct_m || eph_pk || pk_x || pk_m)`.
fn derive_wrap_key(
    ss_m: &[u8],
    ss_x: &[u8; 32],
    ct_m: &[u8],
    eph_pk: &[u8; 32],
    pk_x: &[u8; 32],
    pk_m: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(ss_m);
    ikm[32..].copy_from_slice(ss_x);
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&[]), &ikm[..])
        .expand_multi_info(&[WRAP_LABEL, ct_m, eph_pk, pk_x, pk_m], &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

fn zero_nonce() -> Nonce {
    Nonce::default()
}

/// Encrypts `plaintext` for every key in `recipients`.
///
/// `aad` is authenticated but not encrypted; the same `aad` must be passed to
/// [`open`]. Randomness drawn from `rng`, in order: the 32-byte content key,
/// then per recipient (in list order) 32 bytes of X25519 ephemeral secret and
/// 32 bytes of ML-KEM encapsulation randomness `m`. The output format is in
/// the [module docs](self).
///
/// Fails with [`CryptoError::InvalidRecipients`] if `recipients` is empty,
/// longer than [`MAX_RECIPIENTS`] or lists a key (fingerprint) twice, and
/// with [`CryptoError::NonContributory`] if an X25519 exchange yields the
/// all-zero secret (impossible for keys from [`HybridPublicKey::from_bytes`]).
pub fn seal<R: CryptoRngCore + ?Sized>(
    rng: &mut R,
    recipients: &[&HybridPublicKey],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(CryptoError::InvalidRecipients);
    }
    let mut fingerprints: Vec<[u8; FINGERPRINT_LEN]> =
        recipients.iter().map(|r| r.fingerprint()).collect();
    fingerprints.sort_unstable();
    if fingerprints.windows(2).any(|w| w[0] == w[1]) {
        return Err(CryptoError::InvalidRecipients);
    }
    let count = u16::try_from(recipients.len()).map_err(|_| CryptoError::InvalidRecipients)?;

    let mut content_key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    rng.fill_bytes(&mut content_key[..]);

    let mut out = Vec::with_capacity(sealed_len(recipients.len(), plaintext.len()));
    out.push(ENVELOPE_VERSION);
    out.push(SUITE_X25519_MLKEM768);
    out.extend_from_slice(&count.to_be_bytes());

    for recipient in recipients {
        let mut eph_bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut eph_bytes[..]);
        let eph = StaticSecret::from(*eph_bytes);
        let eph_pk = PublicKey::from(&eph);
        let ss_x = eph.diffie_hellman(&recipient.x25519);
        if !ss_x.was_contributory() {
            return Err(CryptoError::NonContributory);
        }

        let mut m = B32::default();
        rng.fill_bytes(m.as_mut_slice());
        let (ct_m, mut ss_m) = recipient.mlkem.encapsulate_deterministic(&m);
        m.as_mut_slice().zeroize();

        let entry_start = out.len();
        out.extend_from_slice(&recipient.fingerprint());
        out.extend_from_slice(eph_pk.as_bytes());
        out.extend_from_slice(&ct_m);

        let wrap_key = derive_wrap_key(
            &ss_m,
            ss_x.as_bytes(),
            &ct_m,
            eph_pk.as_bytes(),
            recipient.x25519.as_bytes(),
            &recipient.bytes[X25519_LEN..],
        );
        ss_m.as_mut_slice().zeroize();

        let mut wrap_aad = Vec::with_capacity(PRELUDE_LEN + ENTRY_BOUND_LEN);
        wrap_aad.extend_from_slice(&out[..PRELUDE_LEN]);
        wrap_aad.extend_from_slice(&out[entry_start..]);
        let wrapped = ChaCha20Poly1305::new(Key::from_slice(&wrap_key[..]))
            .encrypt(
                &zero_nonce(),
                Payload {
                    msg: &content_key[..],
                    aad: &wrap_aad,
                },
            )
            .expect("ChaCha20-Poly1305 encrypts a 32-byte message");
        out.extend_from_slice(&wrapped);
    }

    let mut content_aad = Vec::with_capacity(out.len() + aad.len());
    content_aad.extend_from_slice(&out);
    content_aad.extend_from_slice(aad);
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&content_key[..]))
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: plaintext,
                aad: &content_aad,
            },
        )
        .map_err(|_| CryptoError::InvalidEnvelope)?;
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The validated outer structure of an envelope.
struct Parsed<'a> {
    prelude: &'a [u8],
    entries: &'a [u8],
    header: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse(envelope: &[u8]) -> Result<Parsed<'_>, CryptoError> {
    if envelope.len() < PRELUDE_LEN {
        return Err(CryptoError::InvalidEnvelope);
    }
    if envelope[0] != ENVELOPE_VERSION || envelope[1] != SUITE_X25519_MLKEM768 {
        return Err(CryptoError::UnsupportedVersion);
    }
    let count = usize::from(u16::from_be_bytes([envelope[2], envelope[3]]));
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(CryptoError::InvalidEnvelope);
    }
    let header_len = PRELUDE_LEN + count * ENTRY_LEN;
    if envelope.len() < header_len + TAG_LEN {
        return Err(CryptoError::InvalidEnvelope);
    }
    let (header, ciphertext) = envelope.split_at(header_len);
    Ok(Parsed {
        prelude: &header[..PRELUDE_LEN],
        entries: &header[PRELUDE_LEN..],
        header,
        ciphertext,
    })
}

/// Lists the recipient fingerprints of an envelope, in order, without
/// decrypting anything. Useful for routing; the list is not authenticated
/// until [`open`] succeeds.
pub fn recipient_fingerprints(envelope: &[u8]) -> Result<Vec<[u8; FINGERPRINT_LEN]>, CryptoError> {
    let parsed = parse(envelope)?;
    Ok(parsed
        .entries
        .chunks_exact(ENTRY_LEN)
        .map(|entry| {
            let mut fp = [0u8; FINGERPRINT_LEN];
            fp.copy_from_slice(&entry[..FINGERPRINT_LEN]);
            fp
        })
        .collect())
}

/// Recomputes the wrap key of one recipient entry (the recipient's side of the KEMs).
fn entry_wrap_key(sk: &HybridSecretKey, bound: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let eph_bytes: [u8; X25519_LEN] = bound[FINGERPRINT_LEN..FINGERPRINT_LEN + X25519_LEN]
        .try_into()
        .map_err(|_| CryptoError::InvalidEnvelope)?;
    let ct_bytes = &bound[FINGERPRINT_LEN + X25519_LEN..];

    let eph_pk = PublicKey::from(eph_bytes);
    let ss_x = sk.x25519.diffie_hellman(&eph_pk);
    if !ss_x.was_contributory() {
        return Err(CryptoError::NonContributory);
    }
    let ct_m = MlKemCiphertext::try_from(ct_bytes).map_err(|_| CryptoError::InvalidEnvelope)?;
    let mut ss_m = sk.mlkem.decapsulate(&ct_m);
    let wrap_key = derive_wrap_key(
        &ss_m,
        ss_x.as_bytes(),
        ct_bytes,
        &eph_bytes,
        sk.public.x25519.as_bytes(),
        &sk.public.bytes[X25519_LEN..],
    );
    ss_m.as_mut_slice().zeroize();
    Ok(wrap_key)
}

/// Recovers the content key from one recipient entry.
fn unwrap_entry(
    sk: &HybridSecretKey,
    prelude: &[u8],
    entry: &[u8],
) -> Result<Zeroizing<[u8; CONTENT_KEY_LEN]>, CryptoError> {
    let (bound, wrapped) = entry.split_at(ENTRY_BOUND_LEN);
    let wrap_key = entry_wrap_key(sk, bound)?;
    let mut wrap_aad = Vec::with_capacity(PRELUDE_LEN + ENTRY_BOUND_LEN);
    wrap_aad.extend_from_slice(prelude);
    wrap_aad.extend_from_slice(bound);
    let unwrapped = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(&wrap_key[..]))
            .decrypt(
                &zero_nonce(),
                Payload {
                    msg: wrapped,
                    aad: &wrap_aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)?,
    );
    let mut content_key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    if unwrapped.len() != CONTENT_KEY_LEN {
        return Err(CryptoError::Decrypt);
    }
    content_key.copy_from_slice(&unwrapped);
    Ok(content_key)
}

/// Decrypts an envelope addressed (among others) to `sk`.
///
/// `aad` must equal the `aad` given to [`seal`]. Returns the plaintext in a
/// buffer zeroized on drop. Never panics on malformed input; errors:
/// [`CryptoError::UnsupportedVersion`] (unknown version or suite),
/// [`CryptoError::InvalidEnvelope`] (truncated, zero or more than
/// [`MAX_RECIPIENTS`] recipients), [`CryptoError::NotARecipient`] (no entry
/// with this key's fingerprint), [`CryptoError::NonContributory`] (low-order
/// ephemeral key) and [`CryptoError::Decrypt`] (any tampering, wrong key or
/// wrong `aad`).
pub fn open(
    sk: &HybridSecretKey,
    aad: &[u8],
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let parsed = parse(envelope)?;
    let fingerprint = sk.public.fingerprint();

    // Fingerprints are only 64 bits, so a crafted key could collide with
    // ours: try every matching entry rather than only the first.
    let mut result = Err(CryptoError::NotARecipient);
    for entry in parsed.entries.chunks_exact(ENTRY_LEN) {
        if entry[..FINGERPRINT_LEN] != fingerprint {
            continue;
        }
        result = unwrap_entry(sk, parsed.prelude, entry);
        if result.is_ok() {
            break;
        }
    }
    let content_key = result?;

    let mut content_aad = Vec::with_capacity(parsed.header.len() + aad.len());
    content_aad.extend_from_slice(parsed.header);
    content_aad.extend_from_slice(aad);
    ChaCha20Poly1305::new(Key::from_slice(&content_key[..]))
        .decrypt(
            &zero_nonce(),
            Payload {
                msg: parsed.ciphertext,
                aad: &content_aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn key(n: u8) -> HybridSecretKey {
        HybridSecretKey::from_seed(&[n; SEED_LEN])
    }

    fn rng(n: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(n)
    }

    /// C-5: every ChaCha20-Poly1305 key an envelope uses (the content key and each
    /// recipient's wrap key, all with the zero nonce) is fresh: over many envelopes sealed
    /// with the OS RNG, as in production, 0 keys repeat, so 0 (key, nonce) pairs repeat.
    /// 2,000 envelopes here; `QPQ_LONG=1` seals the plan's 1,000,000 (run it with
    /// `--release`). Every tenth envelope has two recipients.
    #[test]
    #[allow(clippy::print_stdout)]
    fn c5_no_key_nonce_pair_repeats() {
        let n: usize = if std::env::var_os("QPQ_LONG").is_some() {
            1_000_000
        } else {
            2_000
        };
        let (a, b) = (key(1), key(2));
        let (pa, pb) = (a.public_key(), b.public_key());
        let threads = 2;
        let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (a, b, pa, pb) = (&a, &b, &pa, &pb);
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(n / threads * 2 + 2);
                        for i in (t..n).step_by(threads) {
                            let both = i % 10 == 0;
                            let recipients: Vec<&HybridPublicKey> =
                                if both { vec![pa, pb] } else { vec![pa] };
                            let env = seal(&mut rand::rngs::OsRng, &recipients, b"c5", b"m")
                                .expect("seal");
                            let parsed = parse(&env).expect("parse");
                            let mut entries = parsed.entries.chunks_exact(ENTRY_LEN);
                            for sk in if both { vec![a, b] } else { vec![a] } {
                                let entry = entries.next().expect("an entry per recipient");
                                let (bound, _) = entry.split_at(ENTRY_BOUND_LEN);
                                out.push(*entry_wrap_key(sk, bound).expect("wrap key"));
                            }
                            let k =
                                unwrap_entry(a, parsed.prelude, &env[PRELUDE_LEN..][..ENTRY_LEN])
                                    .expect("content key");
                            out.push(*k);
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        let expected = n + n / 10 + n;
        assert_eq!(keys.len(), expected);
        let distinct: std::collections::HashSet<[u8; 32]> = keys.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            keys.len(),
            "a (key, zero nonce) pair repeated"
        );
        println!("C-5: {n} envelopes, {} keys, 0 repeated", keys.len());
    }

    #[test]
    fn layout_constants() {
        assert_eq!(HYBRID_PUBLIC_KEY_LEN, 1216);
        assert_eq!(ENTRY_LEN, 1176);
        assert_eq!(sealed_len(1, 1024), 2220);
        assert_eq!(key(1).public_key().to_bytes().len(), HYBRID_PUBLIC_KEY_LEN);
    }

    #[test]
    fn round_trip_one_and_many_recipients() {
        let keys: Vec<HybridSecretKey> = (1..=4).map(key).collect();
        let publics: Vec<HybridPublicKey> = keys.iter().map(|k| k.public_key()).collect();
        let refs: Vec<&HybridPublicKey> = publics.iter().collect();
        for n in 1..=refs.len() {
            let env = seal(&mut rng(n as u64), &refs[..n], b"aad", b"hello world").expect("seal");
            assert_eq!(env.len(), sealed_len(n, 11));
            assert_eq!(
                recipient_fingerprints(&env).expect("parse"),
                publics[..n]
                    .iter()
                    .map(|p| p.fingerprint())
                    .collect::<Vec<_>>()
            );
            for (i, k) in keys.iter().enumerate() {
                let opened = open(k, b"aad", &env);
                if i < n {
                    assert_eq!(&opened.expect("recipient opens")[..], b"hello world");
                } else {
                    assert_eq!(opened, Err(CryptoError::NotARecipient));
                }
            }
        }
    }

    #[test]
    fn empty_plaintext_round_trip() {
        let k = key(1);
        let env = seal(&mut rng(0), &[&k.public_key()], b"", b"").expect("seal");
        assert_eq!(env.len(), sealed_len(1, 0));
        assert!(open(&k, b"", &env).expect("open").is_empty());
    }

    #[test]
    fn wrong_recipient_key_rejected() {
        let env = seal(&mut rng(1), &[&key(1).public_key()], b"", b"secret").expect("seal");
        assert_eq!(open(&key(2), b"", &env), Err(CryptoError::NotARecipient));

        // Same fingerprint forged onto another key's entry: the unwrap fails.
        let mut forged = seal(&mut rng(1), &[&key(2).public_key()], b"", b"secret").expect("seal");
        forged[PRELUDE_LEN..PRELUDE_LEN + FINGERPRINT_LEN]
            .copy_from_slice(&key(1).public_key().fingerprint());
        assert_eq!(open(&key(1), b"", &forged), Err(CryptoError::Decrypt));
    }

    #[test]
    fn changing_aad_rejected() {
        let k = key(1);
        let env = seal(&mut rng(2), &[&k.public_key()], b"conversation 1", b"hi").expect("seal");
        assert!(open(&k, b"conversation 1", &env).is_ok());
        assert_eq!(open(&k, b"conversation 2", &env), Err(CryptoError::Decrypt));
        assert_eq!(open(&k, b"", &env), Err(CryptoError::Decrypt));
    }

    #[test]
    fn every_single_byte_flip_rejected() {
        let k = key(1);
        let env = seal(&mut rng(3), &[&k.public_key()], b"aad", b"small").expect("seal");
        for i in 0..env.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = env.clone();
                bad[i] ^= mask;
                assert!(open(&k, b"aad", &bad).is_err(), "byte {i} mask {mask:#x}");
            }
        }
    }

    #[test]
    fn every_truncation_rejected() {
        let k = key(1);
        let env = seal(&mut rng(4), &[&k.public_key()], b"", b"small").expect("seal");
        for len in 0..env.len() {
            assert!(open(&k, b"", &env[..len]).is_err(), "length {len}");
        }
        let mut longer = env.clone();
        longer.push(0);
        assert!(open(&k, b"", &longer).is_err());
    }

    #[test]
    fn byte_flips_in_other_entries_rejected() {
        // Three recipients: recipient 0 must notice tampering with entries 1 and 2.
        let keys: Vec<HybridSecretKey> = (1..=3).map(key).collect();
        let publics: Vec<HybridPublicKey> = keys.iter().map(|k| k.public_key()).collect();
        let refs: Vec<&HybridPublicKey> = publics.iter().collect();
        let env = seal(&mut rng(5), &refs, b"", b"x").expect("seal");
        for i in (PRELUDE_LEN + ENTRY_LEN..PRELUDE_LEN + 3 * ENTRY_LEN).step_by(7) {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&keys[0], b"", &bad),
                Err(CryptoError::Decrypt),
                "byte {i}"
            );
        }
    }

    #[test]
    fn version_suite_and_count_checked() {
        let k = key(1);
        let env = seal(&mut rng(6), &[&k.public_key()], b"", b"m").expect("seal");
        let mut bad = env.clone();
        bad[0] = 2;
        assert_eq!(open(&k, b"", &bad), Err(CryptoError::UnsupportedVersion));
        let mut bad = env.clone();
        bad[1] = 2;
        assert_eq!(open(&k, b"", &bad), Err(CryptoError::UnsupportedVersion));
        let mut bad = env.clone();
        bad[2..4].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(open(&k, b"", &bad), Err(CryptoError::InvalidEnvelope));
        let mut bad = env.clone();
        bad[2..4].copy_from_slice(&1025u16.to_be_bytes());
        assert_eq!(open(&k, b"", &bad), Err(CryptoError::InvalidEnvelope));
        let mut bad = env;
        bad[2..4].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(open(&k, b"", &bad), Err(CryptoError::InvalidEnvelope));
        assert_eq!(open(&k, b"", &[]), Err(CryptoError::InvalidEnvelope));
    }

    #[test]
    fn recipient_list_checked() {
        let k = key(1).public_key();
        assert_eq!(
            seal(&mut rng(7), &[], b"", b"m"),
            Err(CryptoError::InvalidRecipients)
        );
        assert_eq!(
            seal(&mut rng(7), &[&k, &k], b"", b"m"),
            Err(CryptoError::InvalidRecipients)
        );
        let many = vec![&k; MAX_RECIPIENTS + 1];
        assert_eq!(
            seal(&mut rng(7), &many, b"", b"m"),
            Err(CryptoError::InvalidRecipients)
        );
    }

    #[test]
    fn wrap_key_depends_on_every_input() {
        let ss_m = [1u8; 32];
        let ss_x = [2u8; 32];
        let ct_m = [3u8; MLKEM_CT_LEN];
        let eph = [4u8; 32];
        let pk_x = [5u8; 32];
        let pk_m = [6u8; MLKEM_EK_LEN];
        let base = derive_wrap_key(&ss_m, &ss_x, &ct_m, &eph, &pk_x, &pk_m);
        assert_eq!(
            *base,
            *derive_wrap_key(&ss_m, &ss_x, &ct_m, &eph, &pk_x, &pk_m),
            "deterministic"
        );

        let flip = |b: &mut [u8]| b[b.len() - 1] ^= 1;
        let mut v = ss_m;
        flip(&mut v);
        assert_ne!(
            *base,
            *derive_wrap_key(&v, &ss_x, &ct_m, &eph, &pk_x, &pk_m),
            "ss_m"
        );
        let mut v = ss_x;
        flip(&mut v);
        assert_ne!(
            *base,
            *derive_wrap_key(&ss_m, &v, &ct_m, &eph, &pk_x, &pk_m),
            "ss_x"
        );
        let mut v = ct_m;
        flip(&mut v);
        assert_ne!(
            *base,
            *derive_wrap_key(&ss_m, &ss_x, &v, &eph, &pk_x, &pk_m),
            "ct_m"
        );
        let mut v = eph;
        flip(&mut v);
        assert_ne!(
            *base,
            *derive_wrap_key(&ss_m, &ss_x, &ct_m, &v, &pk_x, &pk_m),
            "eph"
        );
        let mut v = pk_x;
        flip(&mut v);
        assert_ne!(
            *base,
            *derive_wrap_key(&ss_m, &ss_x, &ct_m, &eph, &v, &pk_m),
            "pk_x"
        );
        let mut v = pk_m;
        flip(&mut v);
        assert_ne!(
            *base,
            *derive_wrap_key(&ss_m, &ss_x, &ct_m, &eph, &pk_x, &v),
            "pk_m"
        );
        // Swapping the two secrets must matter too (order is fixed).
        assert_ne!(
            *base,
            *derive_wrap_key(&ss_x, &ss_m, &ct_m, &eph, &pk_x, &pk_m),
            "order"
        );
    }

    /// Small-order u-coordinates on Curve25519 and its twist (including
    /// non-canonical encodings of 0 and 1), from the X25519 literature.
    fn low_order_points() -> Vec<[u8; 32]> {
        let hex_points = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        hex_points
            .iter()
            .map(|h| {
                let v = hex::decode(h).expect("valid hex");
                v.try_into().expect("32 bytes")
            })
            .collect()
    }

    #[test]
    fn low_order_x25519_public_key_rejected() {
        let good = key(1).public_key().to_bytes();
        for point in low_order_points() {
            let mut bad = good.clone();
            bad[..32].copy_from_slice(&point);
            assert_eq!(
                HybridPublicKey::from_bytes(&bad),
                Err(CryptoError::InvalidKey),
                "{}",
                crate::hex_string(&point)
            );

            // A key that bypassed parsing still cannot be sealed to.
            let mut forced = key(1).public_key();
            forced.x25519 = PublicKey::from(point);
            assert_eq!(
                seal(&mut rng(8), &[&forced], b"", b"m"),
                Err(CryptoError::NonContributory)
            );
        }
    }

    #[test]
    fn low_order_ephemeral_key_rejected_on_open() {
        let k = key(1);
        let env = seal(&mut rng(9), &[&k.public_key()], b"", b"m").expect("seal");
        let eph_at = PRELUDE_LEN + FINGERPRINT_LEN;
        for point in low_order_points() {
            let mut bad = env.clone();
            bad[eph_at..eph_at + 32].copy_from_slice(&point);
            assert_eq!(open(&k, b"", &bad), Err(CryptoError::NonContributory));
        }
    }

    #[test]
    fn public_key_parsing() {
        let pk = key(1).public_key();
        let bytes = pk.to_bytes();
        assert_eq!(HybridPublicKey::from_bytes(&bytes), Ok(pk.clone()));
        assert_eq!(
            HybridPublicKey::from_bytes(&bytes[..bytes.len() - 1]),
            Err(CryptoError::InvalidKey)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            HybridPublicKey::from_bytes(&longer),
            Err(CryptoError::InvalidKey)
        );
        assert_eq!(
            HybridPublicKey::from_bytes(&[]),
            Err(CryptoError::InvalidKey)
        );

        // Set the first 12-bit coefficient of the ML-KEM key to 0xfff >= q = 3329.
        let mut unreduced = bytes.clone();
        unreduced[X25519_LEN] = 0xff;
        unreduced[X25519_LEN + 1] |= 0x0f;
        assert_eq!(
            HybridPublicKey::from_bytes(&unreduced),
            Err(CryptoError::InvalidKey)
        );
        // The last coefficient of t_hat (bytes just before the 32-byte rho).
        let mut unreduced = bytes;
        let last = HYBRID_PUBLIC_KEY_LEN - 32 - 1;
        unreduced[last] = 0xff;
        unreduced[last - 1] |= 0xf0;
        assert_eq!(
            HybridPublicKey::from_bytes(&unreduced),
            Err(CryptoError::InvalidKey)
        );
    }

    #[test]
    fn secret_key_storage_round_trip() {
        let k = HybridSecretKey::generate(&mut rng(10));
        let stored = k.to_bytes();
        assert_eq!(stored.len(), HYBRID_SECRET_KEY_LEN);
        let restored = HybridSecretKey::from_bytes(&stored).expect("restore");
        assert_eq!(restored.public_key(), k.public_key());
        let env = seal(&mut rng(11), &[&k.public_key()], b"", b"m").expect("seal");
        assert_eq!(&open(&restored, b"", &env).expect("open")[..], b"m");

        assert_eq!(
            HybridSecretKey::from_bytes(&stored[1..]).map(|_| ()),
            Err(CryptoError::InvalidKey)
        );
        let mut bad = stored.to_vec();
        bad[0] = 2;
        assert_eq!(
            HybridSecretKey::from_bytes(&bad).map(|_| ()),
            Err(CryptoError::UnsupportedVersion)
        );
    }

    #[test]
    fn from_seed_is_deterministic_and_seed_sensitive() {
        assert_eq!(key(1).public_key(), key(1).public_key());
        assert_ne!(key(1).public_key(), key(2).public_key());
        let mut seed = [1u8; SEED_LEN];
        seed[63] ^= 1;
        assert_ne!(
            HybridSecretKey::from_seed(&seed).public_key(),
            key(1).public_key()
        );
    }

    #[test]
    fn debug_prints_no_secret() {
        let k = key(1);
        let debug = format!("{k:?}");
        assert!(debug.contains(&crate::hex_string(&k.public_key().fingerprint())));
        assert!(!debug.contains("0101010101"));
        let stored = k.to_bytes();
        assert!(!debug.contains(&crate::hex_string(&stored[1..9])));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn round_trip(
                seed in any::<u64>(),
                aad in proptest::collection::vec(any::<u8>(), 0..64),
                msg in proptest::collection::vec(any::<u8>(), 0..2048),
            ) {
                let k = key(1);
                let env = seal(&mut rng(seed), &[&k.public_key()], &aad, &msg).expect("seal");
                prop_assert_eq!(env.len(), sealed_len(1, msg.len()));
                prop_assert_eq!(&open(&k, &aad, &env).expect("open")[..], &msg[..]);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let _ = open(&key(1), b"", &bytes);
                let _ = recipient_fingerprints(&bytes);
                let _ = HybridPublicKey::from_bytes(&bytes);
                let _ = HybridSecretKey::from_bytes(&bytes);
            }

            #[test]
            fn arbitrary_bytes_with_valid_prelude_never_panic(
                count in 0u16..4,
                body in proptest::collection::vec(any::<u8>(), 0..4000),
            ) {
                let mut bytes = vec![ENVELOPE_VERSION, SUITE_X25519_MLKEM768];
                bytes.extend_from_slice(&count.to_be_bytes());
                bytes.extend_from_slice(&body);
                prop_assert!(open(&key(1), b"", &bytes).is_err());
            }
        }
    }
}
