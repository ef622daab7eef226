//! Issue 17, the client halves: Fetch pages follow the server's `more` flag (item 24),
//! broken groups are reported and rejoined by external commit (item 17), consent and block
//! (item 18). Each runs against a real server over QUIC.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use common::*;
use qpq_core::{Body, Client};

/// Item 24: the server caps a Fetch page at 1 MiB and says when more is queued; the
/// client used to take a page under 1 MiB as the end of the queue. 30 messages of about
/// 100 KiB (3 MiB, at least 3 pages) queued while bob was away are all in his history after
/// one sync, each exactly once and in order.
#[test]
fn i24_a_queue_over_1_mib_drains_in_pages_within_one_sync() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let User { client: bob, dir } = s.user("bob");
    let conv = alice.create_group("pages", false).unwrap();
    alice.invite(&conv, &["bob"]).unwrap();
    wait_joined(&bob, &conv);
    bob.shutdown();
    drop(bob);
    let texts_sent: Vec<String> = (0..30)
        .map(|i| format!("{i:02} {}", "x".repeat(100 * 1024)))
        .collect();
    for t in &texts_sent {
        alice.send(&conv, Body::Text(t.clone())).unwrap();
    }
    // send only queues: wait until alice's outbox reached the server.
    alice.sync().unwrap();
    let bob = Client::open(s.config(dir.path())).unwrap();
    bob.sync().unwrap();
    let got = texts(&bob, &conv);
    assert_eq!(
        got.len(),
        texts_sent.len(),
        "every message once after one sync"
    );
    assert_eq!(got, texts_sent);
}
