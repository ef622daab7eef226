//! Seed corpora of the qpq-crypto fuzz targets (`core/crypto/fuzz/corpus/<target>/`), written
//! from golden fixtures: the envelopes and public keys of `tests/vectors/envelope-v1.json`
//! and OPAQUE messages of a seeded registration and login. The first byte of every input is
//! the target's mode selector (see each target's doc comment). Regenerate with
//! `cargo test -p qpq-crypto --test fuzz_corpus -- --ignored` and commit the result.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use qpq_crypto::opaque::OpaqueSuite;
use qpq_crypto::opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, ServerLogin, ServerLoginParameters, ServerRegistration,
    ServerSetup,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::Value;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn write_all(target: &str, files: Vec<(String, Vec<u8>)>) {
    let dir = corpus_dir(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn vectors() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/envelope-v1.json");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file["cases"].as_array().unwrap().clone()
}

#[test]
#[ignore = "writes the seed corpora; run by hand after a format change"]
fn write_seed_corpora() {
    let cases = vectors();

    // envelope_open: mode 0 = raw envelope; 1 = (u16 pos, u8 xor) triples; 2 = cut + tail.
    let mut env = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let e = hex::decode(case["envelope"].as_str().unwrap()).unwrap();
        env.push((format!("raw-{i}"), with_mode(0, &e)));
    }
    env.push(("flip-none".into(), vec![1]));
    env.push(("flip-version".into(), vec![1, 0, 0, 0x02]));
    env.push(("flip-eph".into(), vec![1, 0, 20, 0x01]));
    env.push((
        "flip-ct".into(),
        vec![1, 0x01, 0x00, 0x80, 0x04, 0x80, 0x01],
    ));
    env.push(("flip-tag".into(), vec![1, 0x08, 0xab, 0x01]));
    env.push(("cut-header".into(), vec![2, 0x00, 0x04]));
    env.push(("cut-tag".into(), vec![2, 0x08, 0xab]));
    env.push(("cut-extend".into(), vec![2, 0x04, 0x00, 1, 2, 3]));
    write_all("envelope_open", env);

    // hybrid_public_key: mode 0 = raw key; mode 1 = (u16 offset, xor bytes) over a valid key.
    let mut keys = Vec::new();
    for (i, case) in cases.iter().take(5).enumerate() {
        for (j, pk) in case["recipient_public_keys"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            if i == 4 || j == 0 {
                keys.push((
                    format!("key-{i}-{j}"),
                    with_mode(0, &hex::decode(pk.as_str().unwrap()).unwrap()),
                ));
            }
        }
    }
    keys.push(("overlay-x25519-zero".into(), {
        let mut v = vec![1, 0, 0];
        v.extend_from_slice(&[0xff; 4]);
        v
    }));
    keys.push(("overlay-mlkem-coeff".into(), vec![1, 0, 32, 0xff, 0x0f]));
    keys.push(("overlay-rho".into(), vec![1, 0x04, 0xa0, 0x01]));
    write_all("hybrid_public_key", keys);

    // opaque_messages: a seeded registration and login of the qpq suite.
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let password = b"correct horse battery staple";
    let setup = ServerSetup::<OpaqueSuite>::new(&mut rng);
    let c = ClientRegistration::<OpaqueSuite>::start(&mut rng, password).unwrap();
    let req = c.message.serialize().to_vec();
    let s = ServerRegistration::<OpaqueSuite>::start(&setup, c.message, b"alice").unwrap();
    let resp = s.message.serialize().to_vec();
    let fin = c
        .state
        .finish(
            &mut rng,
            password,
            s.message,
            ClientRegistrationFinishParameters::default(),
        )
        .unwrap();
    let upload = fin.message.serialize().to_vec();
    let file = ServerRegistration::<OpaqueSuite>::finish(fin.message);
    let login = ClientLogin::<OpaqueSuite>::start(&mut rng, password).unwrap();
    let ke1 = login.message.serialize().to_vec();
    let server = ServerLogin::start(
        &mut rng,
        &setup,
        Some(file.clone()),
        login.message,
        b"alice",
        ServerLoginParameters::default(),
    )
    .unwrap();
    let ke2 = server.message.serialize().to_vec();
    let done = login
        .state
        .finish(
            &mut rng,
            password,
            server.message,
            ClientLoginFinishParameters::default(),
        )
        .unwrap();
    let ke3 = done.message.serialize().to_vec();
    write_all(
        "opaque_messages",
        vec![
            ("0-registration-request".into(), with_mode(0, &req)),
            ("1-registration-response".into(), with_mode(1, &resp)),
            ("2-registration-upload".into(), with_mode(2, &upload)),
            ("3-ke1".into(), with_mode(3, &ke1)),
            ("4-ke1-unknown-user".into(), with_mode(4, &ke1)),
            ("5-ke2".into(), with_mode(5, &ke2)),
            ("6-ke3".into(), with_mode(6, &ke3)),
            ("7-password-file".into(), with_mode(7, &file.serialize())),
        ],
    );
}

#[test]
fn committed_corpora_are_small() {
    let mut total = 0;
    for target in ["envelope_open", "opaque_messages", "hybrid_public_key"] {
        let Ok(entries) = std::fs::read_dir(corpus_dir(target)) else {
            continue;
        };
        let sizes: Vec<u64> = entries
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect();
        assert!(sizes.len() <= 50, "{target}: {} files", sizes.len());
        total += sizes.iter().sum::<u64>();
    }
    assert!(total <= 200 * 1024, "crypto corpora: {total} bytes");
}
