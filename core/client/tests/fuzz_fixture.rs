//! The fixture of the `mls_process` fuzz target (RELIABILITY P-3, `core/client/fuzz`): a
//! member's encrypted store with two real groups (classic and post-quantum) and seed inputs
//! that are valid MLS messages for exactly that state.
//!
//! MLS state is random, so the fixture cannot be rebuilt byte-identically on every run: it
//! is committed, `regenerate_mls_fuzz_fixture` (ignored) rewrites it, and
//! `mls_fuzz_fixture_is_current` fails when it no longer opens or its seeds no longer
//! process (a store schema or openmls storage change), saying to regenerate it.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use qpq_core::{Client, ClientConfig, ConversationId, StoreKey, Trust};

/// The fixture store's raw key (a raw key: no salt file, no Argon2id in the fuzz loop).
const KEY: [u8; 32] = [0x51; 32];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Opens a store offline (nothing listens on port 9) with the fixture key.
fn open_offline(dir: &Path) -> Client {
    Client::open(ClientConfig::new(
        dir,
        StoreKey::Raw(KEY),
        "127.0.0.1:9",
        Trust::PinnedCertDer(Vec::new()),
    ))
    .unwrap()
}

/// The two conversation ids, in the order the fuzz input's first byte selects them.
fn conversations() -> [ConversationId; 2] {
    let text = std::fs::read_to_string(fuzz_dir().join("fixture/conversations.txt")).unwrap();
    let ids: Vec<ConversationId> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().parse().unwrap())
        .collect();
    ids.try_into().unwrap()
}

#[test]
#[ignore = "rewrites the committed fuzz fixture; run by hand after a store format change"]
fn regenerate_mls_fuzz_fixture() {
    let s = TestServer::start();
    let a = s.user("alice");
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = Client::open(ClientConfig::new(
        bob_dir.path(),
        StoreKey::Raw(KEY),
        s.addr.to_string(),
        Trust::PinnedCertDer(s.cert_der.clone()),
    ))
    .unwrap();
    bob.register("bob", PW).unwrap();
    let carol = s.user("carol");
    let classic = a.create_group("fuzz classic", false).unwrap();
    let pq = a.create_group("fuzz pq", true).unwrap();
    for g in [&classic, &pq] {
        a.invite(g, &["bob", "carol"]).unwrap();
        wait_joined(&bob, g);
        wait_joined(&carol, g);
        a.send_text(g, "one real message first").unwrap();
        wait_text(&bob, "one real message first");
    }
    // Logged out, so the fuzz target's copy never tries to sync.
    bob.logout().unwrap();
    bob.shutdown();
    drop(bob);

    let fixture = fuzz_dir().join("fixture");
    let corpus = fuzz_dir().join("corpus/mls_process");
    for d in [&fixture, &corpus] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    for f in std::fs::read_dir(bob_dir.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), fixture.join(f.file_name())).unwrap();
    }
    std::fs::write(
        fixture.join("conversations.txt"),
        format!(
            "# conversation ids of the fixture store: classic, post-quantum\n{}\n{}\n",
            classic.to_hex(),
            pq.to_hex()
        ),
    )
    .unwrap();
    // Seeds: byte 0 picks the conversation, the rest is an MLS message valid for the
    // fixture's state (none of these was ever delivered to bob).
    for (sel, g, name) in [(0u8, &classic, "classic"), (1u8, &pq, "pq")] {
        let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, text) in ["hi", "a longer message, with ünïcode", ""]
            .iter()
            .enumerate()
        {
            seeds.push((format!("{name}-app-{i}"), a.debug_encrypt(g, text).unwrap()));
        }
        seeds.push((
            format!("{name}-app-carol"),
            carol.debug_encrypt(g, "from carol").unwrap(),
        ));
        seeds.push((
            format!("{name}-commit-alice"),
            a.debug_self_update(g).unwrap(),
        ));
        seeds.push((
            format!("{name}-commit-carol"),
            carol.debug_self_update(g).unwrap(),
        ));
        for (file, bytes) in seeds {
            let mut input = vec![sel];
            input.extend_from_slice(&bytes);
            std::fs::write(corpus.join(file), input).unwrap();
        }
    }
    println!("fixture written to {}", fixture.display());
}

/// The committed fixture still opens and every seed is still accepted by the receive path
/// (probe only: nothing is kept, and the stored state hash is unchanged after each).
#[test]
fn mls_fuzz_fixture_is_current() {
    let stale = "the MLS fuzz fixture is stale: run `cargo test -p qpq-core --test fuzz_fixture \
                 -- --ignored regenerate_mls_fuzz_fixture` and commit core/client/fuzz";
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fuzz_dir().join("fixture")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let client = open_offline(dir.path());
    let convs = conversations();
    let before = client.debug_state_hash().unwrap();
    let mut seeds: Vec<_> = std::fs::read_dir(fuzz_dir().join("corpus/mls_process"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    seeds.sort();
    assert_eq!(seeds.len(), 12, "{stale}");
    for seed in seeds {
        let input = std::fs::read(&seed).unwrap();
        let conv = convs[usize::from(input[0] & 1)];
        let r = client.debug_process(&conv, &input[1..]);
        assert!(r.is_ok(), "{}: {r:?}; {stale}", seed.display());
        assert_eq!(client.debug_state_hash().unwrap(), before);
    }
}
