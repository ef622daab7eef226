//! B1, Rust's figure for the SDK ratio (SCENARIO.md, after the story): in a post-quantum group
//! of alice, bob and carol, alice sends N texts back to back through `qpq_core::Client`; bob's
//! thread waits for each as an event. Prints one line: `b1 rust msgs_per_sec=.. p50_us=..`
//! (throughput: N over the time from the first send to the last arrival; latency: per message,
//! send call to event at bob). The Kotlin SDK's benchmark runs this binary against the same
//! server, then the same steps through its own layer, and reports the ratio.
//!
//! Usage: `b1 SERVER_ADDR CERT_FILE N`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qpq_core::{Body, Client, ClientConfig, Event, StoreKey, Trust};

fn client(addr: &str, cert: &str, dir: &std::path::Path) -> Client {
    let mut c = ClientConfig::new(
        dir,
        StoreKey::Passphrase("b1".into()),
        addr,
        Trust::PinnedCertFile(cert.into()),
    );
    c.insecure_fast_kdf = true;
    Client::open(c).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, cert, n) = (&args[1], &args[2], args[3].parse::<usize>().unwrap());
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = std::env::temp_dir().join(format!("qpq-b1-rust-{run}"));
    let names = ["alice", "bob", "carol"].map(|n| format!("r{}{n}", std::process::id() % 100_000));
    let clients: Vec<Arc<Client>> = names
        .iter()
        .map(|n| {
            let c = Arc::new(client(addr, cert, &base.join(n)));
            c.register(n, "b1 password of the rust run").unwrap();
            c
        })
        .collect();
    let (alice, bob) = (&clients[0], &clients[1]);
    let group = alice.create_group("b1", true).unwrap();
    alice.invite(&group, &[&names[1], &names[2]]).unwrap();
    // Wait until bob has joined before measuring.
    let mut cursor = 0;
    loop {
        let r = bob
            .wait_event_after(cursor, Duration::from_secs(10))
            .unwrap()
            .expect("bob joins within 10 s");
        cursor = r.cursor;
        if matches!(r.event, Event::ConversationJoined(ref c) if c.id == group) {
            break;
        }
    }
    let receiver = {
        let bob = bob.clone();
        std::thread::spawn(move || {
            let mut got = HashMap::new();
            while got.len() < n {
                let r = bob
                    .wait_event_after(cursor, Duration::from_secs(30))
                    .unwrap()
                    .expect("every message arrives within 30 s");
                cursor = r.cursor;
                if let Event::Message(m) = r.event {
                    if let Body::Text(t) = m.body {
                        got.insert(t, Instant::now());
                    }
                }
            }
            got
        })
    };
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("b1 {i}");
        sent.push((text.clone(), Instant::now()));
        alice.send_text(&group, &text).unwrap();
    }
    let got = receiver.join().unwrap();
    let last = got.values().max().copied().unwrap();
    let mut lat: Vec<u128> = sent
        .iter()
        .map(|(t, at)| got[t].duration_since(*at).as_micros())
        .collect();
    lat.sort_unstable();
    let rate = n as f64 / last.duration_since(start).as_secs_f64();
    println!(
        "b1 rust msgs_per_sec={rate:.0} p50_us={}",
        lat[lat.len() / 2]
    );
    for c in &clients {
        c.shutdown();
    }
    let _ = std::fs::remove_dir_all(&base);
}
