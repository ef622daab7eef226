//! Measurements (not assertions): `cargo test -p qpq-core --release -- --ignored --nocapture measure`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use qpq_core::Event;

#[test]
#[ignore]
fn measure_send_to_event_and_invite_100() {
    let s = TestServer::start_with(|c| {
        c.max_connections_per_ip = 1000;
        c.auth_rate_per_sec = 10_000.0;
        c.auth_rate_burst = 10_000.0;
    });
    let a = s.user("alice");
    let b = s.user("bob");
    let c = s.user("carol");
    let g = a.create_group("m", false).unwrap();
    a.invite(&g, &["bob", "carol"]).unwrap();
    wait_joined(&b, &g);
    wait_joined(&c, &g);
    let mut samples = Vec::new();
    for i in 0..200 {
        let text = format!("m{i}");
        let t = Instant::now();
        a.send_text(&g, &text).unwrap();
        loop {
            match b.next_event(Duration::from_secs(10)).unwrap() {
                Some(Event::Message(m)) if m.text() == Some(text.as_str()) => break,
                Some(_) => continue,
                None => panic!("no event"),
            }
        }
        samples.push(t.elapsed());
        while c.next_event(Duration::ZERO).unwrap().is_some() {}
    }
    samples.sort();
    println!(
        "send->event (3 members, loopback): p50 {:?} p90 {:?} max {:?}",
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10],
        samples[samples.len() - 1]
    );

    let t = Instant::now();
    let users: Vec<_> = (0..100).map(|i| s.user(&format!("user{i}"))).collect();
    println!("registered 100 users in {:?}", t.elapsed());
    let names: Vec<String> = (0..100).map(|i| format!("user{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    let big = a.create_group("big", false).unwrap();
    a.invite(&big, &refs).unwrap();
    println!(
        "create group + invite 100 users (one commit): {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    for u in &users {
        wait_joined(u, &big);
    }
    println!(
        "all 100 joined (Welcome processed) after a further {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    a.send_text(&big, "hello 100").unwrap();
    for u in &users {
        wait_text(u, "hello 100");
    }
    println!(
        "one message to 101 members, all received: {:?}",
        t.elapsed()
    );
}
