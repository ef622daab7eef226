//! Known-answer tests for the v1 hybrid envelope.
//!
//! `tests/vectors/envelope-v1.json` holds, per case, the recipient seeds (for
//! `HybridSecretKey::from_seed`), the resulting public keys, the 32-byte seed
//! of the `rand_chacha::ChaCha20Rng` passed to `seal`, the aad, the plaintext
//! and the exact envelope bytes, all hex. Regenerate after an intentional
//! format change with
//! `cargo test -p qpq-crypto -- --ignored regenerate_vectors` and review the
//! diff: a changed vector means old envelopes no longer open.
//! `tests/vectors/check_envelope_v1.py` opens every vector with an independent
//! implementation (pyca/cryptography, OpenSSL ML-KEM) from the documented format.

use std::path::PathBuf;

use qpq_crypto::envelope::{
    open, recipient_fingerprints, seal, sealed_len, HybridPublicKey, HybridSecretKey,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/envelope-v1.json")
}

struct Case {
    name: String,
    seeds: Vec<[u8; 64]>,
    rng_seed: [u8; 32],
    aad: Vec<u8>,
    plaintext: Vec<u8>,
}

/// The inputs of every vector, in file order.
fn cases() -> Vec<Case> {
    let kib: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut out = Vec::new();
    let mut index = 0u8;
    for recipients in [1u8, 3] {
        for with_aad in [false, true] {
            for plaintext in [Vec::new(), kib.clone()] {
                index += 1;
                out.push(Case {
                    name: format!(
                        "{recipients} recipient(s), {} aad, {} B plaintext",
                        if with_aad { "with" } else { "no" },
                        plaintext.len()
                    ),
                    seeds: (0..recipients).map(|r| [0x10 + r; 64]).collect(),
                    rng_seed: [index; 32],
                    aad: if with_aad {
                        b"qpq conversation 42".to_vec()
                    } else {
                        Vec::new()
                    },
                    plaintext,
                });
            }
        }
    }
    out
}

fn seal_case(case: &Case) -> (Vec<HybridSecretKey>, Vec<HybridPublicKey>, Vec<u8>) {
    let secrets: Vec<HybridSecretKey> = case.seeds.iter().map(HybridSecretKey::from_seed).collect();
    let publics: Vec<HybridPublicKey> = secrets.iter().map(|s| s.public_key()).collect();
    let refs: Vec<&HybridPublicKey> = publics.iter().collect();
    let mut rng = ChaCha20Rng::from_seed(case.rng_seed);
    let envelope = seal(&mut rng, &refs, &case.aad, &case.plaintext).expect("seal");
    (secrets, publics, envelope)
}

fn str_field<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field} is a string"))
}

fn hex_list(value: &Value, field: &str) -> Vec<String> {
    value[field]
        .as_array()
        .unwrap_or_else(|| panic!("field {field} is an array"))
        .iter()
        .map(|v| v.as_str().expect("hex string").to_owned())
        .collect()
}

#[test]
fn sealing_reproduces_checked_in_vectors() {
    let text = std::fs::read_to_string(vectors_path()).expect("vector file present");
    let file: Value = serde_json::from_str(&text).expect("vector file is JSON");
    let stored = file["cases"].as_array().expect("cases array");
    let cases = cases();
    assert_eq!(stored.len(), cases.len());

    for (case, vector) in cases.iter().zip(stored) {
        assert_eq!(str_field(vector, "name"), case.name);
        let seeds: Vec<String> = case.seeds.iter().map(hex::encode).collect();
        assert_eq!(hex_list(vector, "recipient_seeds"), seeds, "{}", case.name);
        assert_eq!(str_field(vector, "rng_seed"), hex::encode(case.rng_seed));
        assert_eq!(str_field(vector, "aad"), hex::encode(&case.aad));
        assert_eq!(str_field(vector, "plaintext"), hex::encode(&case.plaintext));

        let (secrets, publics, envelope) = seal_case(case);
        let stored_publics = hex_list(vector, "recipient_public_keys");
        for (public, stored) in publics.iter().zip(&stored_publics) {
            assert_eq!(&hex::encode(public.to_bytes()), stored, "{}", case.name);
            let parsed = HybridPublicKey::from_bytes(&hex::decode(stored).expect("hex"))
                .expect("stored public key parses");
            assert_eq!(&parsed, public);
        }
        let fingerprints: Vec<String> = publics
            .iter()
            .map(|p| hex::encode(p.fingerprint()))
            .collect();
        assert_eq!(hex_list(vector, "recipient_fingerprints"), fingerprints);

        let stored_envelope = hex::decode(str_field(vector, "envelope")).expect("hex");
        assert_eq!(
            hex::encode(&envelope),
            str_field(vector, "envelope"),
            "{}: sealing no longer reproduces the vector",
            case.name
        );
        assert_eq!(
            stored_envelope.len(),
            sealed_len(case.seeds.len(), case.plaintext.len())
        );
        assert_eq!(
            recipient_fingerprints(&stored_envelope)
                .expect("parse")
                .iter()
                .map(hex::encode)
                .collect::<Vec<_>>(),
            fingerprints
        );
        for secret in &secrets {
            let opened = open(secret, &case.aad, &stored_envelope).expect("recipient opens");
            assert_eq!(&opened[..], &case.plaintext[..], "{}", case.name);
        }
    }
}

#[test]
#[ignore = "writes tests/vectors/envelope-v1.json; run on purpose after a format change"]
fn regenerate_vectors() {
    let cases: Vec<Value> = cases()
        .iter()
        .map(|case| {
            let (_, publics, envelope) = seal_case(case);
            json!({
                "name": case.name,
                "recipient_seeds": case.seeds.iter().map(hex::encode).collect::<Vec<_>>(),
                "recipient_public_keys": publics.iter().map(|p| hex::encode(p.to_bytes())).collect::<Vec<_>>(),
                "recipient_fingerprints": publics.iter().map(|p| hex::encode(p.fingerprint())).collect::<Vec<_>>(),
                "rng_seed": hex::encode(case.rng_seed),
                "aad": hex::encode(&case.aad),
                "plaintext": hex::encode(&case.plaintext),
                "envelope": hex::encode(&envelope),
            })
        })
        .collect();
    let file = json!({
        "format": "qpq hybrid envelope v1 (version 1, suite 1: X25519 + ML-KEM-768, HKDF-SHA256, ChaCha20-Poly1305)",
        "how": "recipient keys = HybridSecretKey::from_seed(recipient_seeds[i]); envelope = seal(ChaCha20Rng::from_seed(rng_seed), recipient keys in order, aad, plaintext). seal draws from the rng: 32 B content key, then per recipient 32 B X25519 ephemeral secret and 32 B ML-KEM encapsulation randomness m.",
        "generator": "cargo test -p qpq-crypto -- --ignored regenerate_vectors",
        "cases": cases,
    });
    let mut text = serde_json::to_string_pretty(&file).expect("serialize");
    text.push('\n');
    std::fs::write(vectors_path(), text).expect("write vector file");
}
