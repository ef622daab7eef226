//! P-4: `HybridPublicKey::from_bytes`. Even first byte: the rest is parsed as is. Odd first
//! byte: the rest is XORed over a valid key (from seed 0x10 × 64) starting at the offset given
//! by the next two bytes, so mutations of well-formed keys (modulus, low-order X25519 points)
//! are reached. A key that parses must re-encode to the same bytes and have a stable
//! fingerprint.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qpq_crypto::envelope::{HybridPublicKey, HybridSecretKey};

fn valid() -> &'static [u8] {
    static K: OnceLock<Vec<u8>> = OnceLock::new();
    K.get_or_init(|| {
        HybridSecretKey::from_seed(&[0x10; 64])
            .public_key()
            .to_bytes()
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 || rest.len() < 2 {
        rest.to_vec()
    } else {
        let mut k = valid().to_vec();
        let at = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % k.len();
        for (i, b) in rest[2..].iter().enumerate() {
            let p = (at + i) % k.len();
            k[p] ^= b;
        }
        k
    };
    if let Ok(pk) = HybridPublicKey::from_bytes(&bytes) {
        assert_eq!(pk.to_bytes(), bytes);
        let again = HybridPublicKey::from_bytes(&pk.to_bytes()).expect("re-parse");
        assert_eq!(again.fingerprint(), pk.fingerprint());
    }
});
