//! SCENARIO.md's B1 through qpq-core directly: the Rust figure the SDK benchmarks compare
//! with, measured against the same server in the same run.
//!
//! `b1 SERVER_ADDR CERT_DER_FILE USERNAME_PREFIX MESSAGES` sets up alice, bob and carol
//! (names prefixed) in a post-quantum group, then sends MESSAGES texts from alice, each
//! after the previous one reached bob, and prints one JSON line:
//! `{"messages":N,"msgs_per_s":F,"p50_us":F}` (send at alice → message event at bob).
#![allow(clippy::print_stdout, clippy::expect_used)]

use std::time::{Duration, Instant};

use qpq_core::{Client, ClientConfig, Event, StoreKey, Trust};

fn client(dir: &std::path::Path, addr: &str, cert: &str, name: &str, n: u8) -> Client {
    let config = ClientConfig::new(dir.join(name), StoreKey::Raw([n; 32]), addr, Trust::PinnedCertFile(cert.into()));
    let c = Client::open(config).expect("open");
    c.register(name, "b1 password").expect("register");
    c
}

fn wait(c: &Client, mut done: impl FnMut(&Event) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(e) = c.next_event(Duration::from_millis(500)).expect("next_event") {
            if done(&e) {
                return;
            }
        }
    }
    panic!("no event within 30 s");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, cert, prefix, n] = &args[..] else {
        eprintln!("usage: b1 SERVER_ADDR CERT_DER_FILE USERNAME_PREFIX MESSAGES");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("MESSAGES is a number");
    let dir = std::env::temp_dir().join(format!("qpq-b1-{}", std::process::id()));
    let (a, b, c) = (format!("{prefix}alice"), format!("{prefix}bob"), format!("{prefix}carol"));
    let alice = client(&dir, addr, cert, &a, 1);
    let bob = client(&dir, addr, cert, &b, 2);
    let carol = client(&dir, addr, cert, &c, 3);
    let group = alice.create_group("b1", true).expect("create_group");
    alice.invite(&group, &[&b, &c]).expect("invite");
    wait(&bob, |e| matches!(e, Event::ConversationJoined(x) if x.id == group));
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let text = format!("b1 {i}");
        let t = Instant::now();
        alice.send_text(&group, &text).expect("send");
        wait(&bob, |e| matches!(e, Event::Message(m) if m.text() == Some(text.as_str())));
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    let p50 = lat.get(n / 2).copied().unwrap_or_default();
    println!(
        "{{\"messages\":{n},\"msgs_per_s\":{:.1},\"p50_us\":{:.0}}}",
        n as f64 / total.as_secs_f64(),
        p50.as_secs_f64() * 1e6
    );
    drop((alice, bob, carol));
    let _ = std::fs::remove_dir_all(&dir);
}
