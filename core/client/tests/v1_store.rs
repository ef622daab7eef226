//! Store schema migration: a store written by the schema-v1 code (text-only messages, no
//! delivery state) is committed under `tests/fixtures/v1-store`; today's code must open it,
//! migrate it and read everything back.
//!
//! `regenerate_v1_store_fixture` (ignored) is how the fixture was made, with the code of the
//! commit that added it (schema v1); it cannot make a v1 store any more once the schema moved
//! on, so it stays only as a record and is never re-run.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use qpq_core::{Body, Client, ClientConfig, Delivery, StoreKey, Trust};

/// The fixture store's raw key.
const KEY: [u8; 32] = [0x42; 32];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-store")
}

fn open_offline(dir: &Path) -> Client {
    let mut c = ClientConfig::new(
        dir,
        StoreKey::Raw(KEY),
        "127.0.0.1:9",
        Trust::PinnedCertDer(Vec::new()),
    );
    c.request_timeout = Duration::from_millis(200);
    Client::open(c).unwrap()
}

#[test]
#[ignore = "made the committed v1 fixture with the schema-v1 code; kept as a record (it runs against today's code, which writes v2)"]
fn regenerate_v1_store_fixture() {
    let s = TestServer::start();
    let a = s.user("alice");
    let bob_dir = tempfile::tempdir().unwrap();
    let mut config = ClientConfig::new(
        bob_dir.path(),
        StoreKey::Raw(KEY),
        s.addr.to_string(),
        Trust::PinnedCertDer(s.cert_der.clone()),
    );
    config.request_timeout = Duration::from_secs(2);
    let bob = Client::open(config).unwrap();
    bob.register("bob", PW).unwrap();
    let g = a.create_group("v1 group", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&bob, &g);
    a.send_text(&g, "hello from alice ✓").unwrap();
    wait_text(&bob, "hello from alice ✓");
    bob.send_text(&g, "hi alice").unwrap();
    let dm = bob.create_dm("alice").unwrap();
    bob.send_text(&dm, "in the dm").unwrap();
    wait_text(&a, "in the dm");
    a.send_text(&dm, "dm reply").unwrap();
    wait_text(&bob, "dm reply");
    // The server goes away: this one stays in bob's outbox.
    drop(a);
    drop(s);
    bob.send_text(&g, "queued while offline").unwrap();
    bob.logout().unwrap();
    let mut expected =
        String::from("# conversation\tsender\toutgoing\tqueued\ttext (as read by the v1 code)\n");
    for c in bob.conversations().unwrap() {
        for m in bob.messages(&c.id, 100, None).unwrap() {
            let text = m.text().unwrap_or_default().to_string();
            let queued = text == "queued while offline";
            expected.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                c.id.to_hex(),
                m.sender,
                m.outgoing,
                queued,
                text
            ));
        }
    }
    bob.shutdown();
    drop(bob);
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(bob_dir.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    std::fs::write(dir.join("expected.tsv"), expected).unwrap();
    std::fs::write(
        dir.join("conversations.txt"),
        format!("# group, dm\n{}\n{}\n", g.to_hex(), dm.to_hex()),
    )
    .unwrap();
    println!("v1 fixture written to {}", dir.display());
}

/// The committed v1 store opens with today's code, is migrated to the current schema (v3), and every
/// conversation and message reads back as the v1 code wrote it: text bodies, senders,
/// directions, and the delivery state (a message still in the outbox is `Queued`).
#[test]
fn v1_store_is_migrated_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture_dir()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let expected = std::fs::read_to_string(fixture_dir().join("expected.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = expected
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 5, "the fixture has five messages");
    for round in 0..2 {
        // Twice: the second open finds the current schema already and must read the same.
        let c = open_offline(dir.path());
        assert_eq!(c.account().unwrap().username, "bob");
        let convs = c.conversations().unwrap();
        assert_eq!(convs.len(), 2, "round {round}");
        let mut got = Vec::new();
        for conv in &convs {
            for m in c.messages(&conv.id, 100, None).unwrap() {
                got.push((conv.id.to_hex(), m));
            }
        }
        assert_eq!(got.len(), rows.len(), "round {round}");
        for ((conv, m), row) in got.iter().zip(&rows) {
            assert_eq!(conv, row[0]);
            assert_eq!(m.sender, row[1]);
            assert_eq!(m.outgoing.to_string(), row[2]);
            assert_eq!(m.body, Body::Text(row[4].to_string()));
            let want = match (m.outgoing, row[3] == "true") {
                (false, _) => Delivery::Received,
                (true, true) => Delivery::Queued,
                (true, false) => Delivery::Sent,
            };
            assert_eq!(m.delivery, want, "{}", row[4]);
        }
        c.shutdown();
    }
}
