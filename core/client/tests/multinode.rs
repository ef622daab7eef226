//! qpq-core clients on two server nodes that share one PostgreSQL database (issue 15): alice
//! is connected to node A, bob and carol to node B. The nodes' sweeps are set to a minute, so
//! every cross-node delivery here is the doorbell's work. The database comes from the same
//! per-binary PostgreSQL cluster as the server's multi-node tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../../server/tests/common/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use common::*;
use qpq_core::Event;

/// A node on `url` with its sweep set to a minute.
fn node(url: &str) -> TestServer {
    let url = url.to_string();
    TestServer::start_with(move |c| {
        c.database_url = url.into();
        c.wake_sweep_ms = 60_000;
        c.max_connections_per_ip = 1000;
    })
}

/// Collects the texts of `n` messages from others, in arrival order.
fn receive(c: &qpq_core::Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    wait_until(c, &format!("{n} messages"), |e| {
        if let Event::Message(m) = e {
            if !m.outgoing {
                got.push(format!("{}: {}", m.sender, m.text().unwrap_or_default()));
            }
        }
        got.len() >= n
    });
    got
}

#[test]
fn clients_on_two_nodes_talk_in_a_pq_group_exactly_once_in_order() {
    let url = pg::database();
    let (a, b) = (node(&url), node(&url));
    let alice = a.user("alice");
    let bob = b.user("bob");
    let carol = b.user("carol");

    // A group created on A, joined through B.
    let conv = alice.create_group("two nodes", true).unwrap();
    alice.invite(&conv, &["bob", "carol"]).unwrap();
    wait_joined(&bob, &conv);
    wait_joined(&carol, &conv);
    let info = bob.conversation(&conv).unwrap();
    assert!(
        info.ciphersuite.contains("MLKEM768"),
        "{}",
        info.ciphersuite
    );

    // Both ways, interleaved: each side gets the other's messages once, in order.
    let started = Instant::now();
    for i in 0..10 {
        alice.send_text(&conv, &format!("a{i}")).unwrap();
        bob.send_text(&conv, &format!("b{i}")).unwrap();
    }
    let at_alice = receive(&alice, 10);
    let at_carol = receive(&carol, 20);
    let took = started.elapsed();
    let from = |who: &str, v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|s| s.starts_with(&format!("{who}: ")))
            .cloned()
            .collect()
    };
    let expect =
        |who: &str, p: &str| -> Vec<String> { (0..10).map(|i| format!("{who}: {p}{i}")).collect() };
    assert_eq!(at_alice, expect("bob", "b"));
    assert_eq!(from("alice", &at_carol), expect("alice", "a"));
    assert_eq!(from("bob", &at_carol), expect("bob", "b"));
    // No sweep ran (a minute): the doorbell delivered across nodes.
    assert!(took < Duration::from_secs(30), "{took:?}");

    // Nothing more arrives: each message came exactly once. The stores agree.
    std::thread::sleep(Duration::from_millis(500));
    while let Some(e) = carol.next_event(Duration::ZERO).unwrap() {
        assert!(!matches!(e, Event::Message(_)), "a duplicate: {e:?}");
    }
    let stored = texts(&carol, &conv);
    for i in 0..10 {
        for t in [format!("a{i}"), format!("b{i}")] {
            assert_eq!(
                stored.iter().filter(|s| **s == t).count(),
                1,
                "{t} in {stored:?}"
            );
        }
    }
    assert_eq!(
        b.service
            .metrics
            .wake_sweeps_total
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_dm_across_nodes_and_a_removal_seen_on_the_other_node() {
    let url = pg::database();
    let (a, b) = (node(&url), node(&url));
    let alice = a.user("alice");
    let bob = b.user("bob");
    let dm = alice.create_dm("bob").unwrap();
    alice.send_text(&dm, "hello across nodes").unwrap();
    let m = wait_text(&bob, "hello across nodes");
    assert_eq!(m.sender, "alice");
    bob.send_text(&dm, "and back").unwrap();
    wait_text(&alice, "and back");

    // A removal committed on B reaches alice on A.
    let carol = b.user("carol");
    let g = carol.create_group("g", false).unwrap();
    carol.invite(&g, &["alice"]).unwrap();
    wait_joined(&alice, &g);
    carol.remove(&g, "alice").unwrap();
    wait_until(
        &alice,
        "Removed",
        |e| matches!(e, Event::Removed { conversation, .. } if *conversation == g),
    );
    assert!(!alice.conversation(&g).unwrap().active);
}
