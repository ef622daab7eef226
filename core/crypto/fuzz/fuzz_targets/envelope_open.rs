//! P-4: the hybrid envelope parser and decryptor. The first byte picks a mode:
//!
//! - 0: the rest is an envelope, opened with a fixed key (seed 0x10 × 64, the first recipient
//!   of `tests/vectors/envelope-v1.json`) and aad = "";
//! - 1: a valid envelope (sealed once at start-up for that key, 1 KiB plaintext) with bytes
//!   XORed in: the rest is read as (u16 position, u8 mask) triples; any change must be rejected;
//! - 2: the same valid envelope truncated at a position taken from the next two bytes and
//!   extended with the remaining bytes; any change must be rejected.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qpq_crypto::envelope::{open, recipient_fingerprints, seal, HybridSecretKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const AAD: &[u8] = b"qpq conversation 42";

struct Fixture {
    key: HybridSecretKey,
    envelope: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = HybridSecretKey::from_seed(&[0x10; 64]);
        let plaintext: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        let envelope = seal(
            &mut ChaCha20Rng::from_seed([4; 32]),
            &[&key.public_key()],
            AAD,
            &plaintext,
        )
        .expect("seal");
        assert!(open(&key, AAD, &envelope).is_ok());
        Fixture { key, envelope }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 3 {
        0 => {
            let _ = recipient_fingerprints(rest);
            if let Ok(pt) = open(&f.key, b"", rest) {
                // Only a well-formed envelope to this key can open; it must re-open.
                assert_eq!(open(&f.key, b"", rest).expect("re-open"), pt);
            }
        }
        1 => {
            let mut env = f.envelope.clone();
            for t in rest.chunks_exact(3) {
                let pos = usize::from(u16::from_be_bytes([t[0], t[1]])) % env.len();
                env[pos] ^= t[2];
            }
            let r = open(&f.key, AAD, &env);
            if env == f.envelope {
                assert!(r.is_ok());
            } else {
                assert!(r.is_err(), "a modified envelope opened");
            }
        }
        _ => {
            if rest.len() < 2 {
                return;
            }
            let cut = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % (f.envelope.len() + 1);
            let mut env = f.envelope[..cut].to_vec();
            env.extend_from_slice(&rest[2..]);
            let r = open(&f.key, AAD, &env);
            if env == f.envelope {
                assert!(r.is_ok());
            } else {
                assert!(r.is_err(), "a truncated/extended envelope opened");
            }
        }
    }
});
