//! D-11: the receiving client is SIGKILLed at random moments while messages stream in, and
//! restarted: 0 messages lost (all in its history, once each, in order), 0 shown twice (no
//! text printed twice across runs), 0 "cannot decrypt" (every text arrives). 20 kill cycles
//! in the suite; `QPQ_LONG=1` runs 1,000.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qpq_core::{Client, ClientConfig, StoreKey, Trust};

const QPQ: &str = env!("CARGO_BIN_EXE_qpq");

fn qpq(s: &common::Server, data: &std::path::Path) -> Command {
    let mut c = Command::new(QPQ);
    c.env("QPQ_SERVER", &s.addr)
        .env("QPQ_CA_CERT", &s.cert)
        .env("QPQ_USERNAME", "bob")
        .env("QPQ_PASSWORD", "bob-password")
        .env("QPQ_CLIENT_DATA_DIR", data);
    c
}

#[test]
fn d11_receiver_killed_during_receive_loses_and_repeats_nothing() {
    // A killed client leaves its QUIC connection open on the server until the idle timeout
    // (no CONNECTION_CLOSE is sent), so 20 fast crash cycles from one address need a per-IP
    // cap above the default 20.
    let s = common::server_with(|c| c.max_connections_per_ip = 1000);
    let bob_dir = s.dir.path().join("bob");
    assert!(qpq(&s, &bob_dir)
        .args(["register", "--json"])
        .status()
        .unwrap()
        .success());

    let mut config = ClientConfig::new(
        s.dir.path().join("alice"),
        StoreKey::Raw([7; 32]),
        s.addr.clone(),
        Trust::PinnedCertDer(s.cert_der.clone()),
    );
    config.insecure_fast_kdf = true;
    let alice = Client::open(config).unwrap();
    alice.register("alice", "alice-password").unwrap();
    let dm = alice.create_dm("bob").unwrap();

    let cycles = if std::env::var_os("QPQ_LONG").is_some() {
        1000
    } else {
        20
    };
    let total = cycles * 15;
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            // About 200 messages per second, while the receiver is killed and restarted.
            for i in 0..total {
                alice.send_text(&dm, &format!("stream {i:05}")).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            done.store(true, Ordering::SeqCst);
            // `send` only queues: make sure the outbox went out before shutting down.
            alice.sync().unwrap();
            alice.shutdown();
        })
    };

    let mut printed: HashMap<String, usize> = HashMap::new();
    let collect = |printed: &mut HashMap<String, usize>, out: &str| {
        for line in out.lines() {
            // A kill can cut the last line short: only whole lines count as shown.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(t) = v["text"].as_str() {
                *printed.entry(t.to_string()).or_default() += 1;
            }
        }
    };
    for cycle in 0..cycles {
        let mut child = qpq(&s, &bob_dir)
            .args(["recv", "--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it run a random while (store unlock + catching up + receiving), then SIGKILL.
        std::thread::sleep(Duration::from_millis(300 + (cycle as u64 * 7919) % 700));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        collect(&mut printed, &out);
    }
    sender.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    // A last, clean receive takes whatever is still queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = qpq(&s, &bob_dir).args(["recv", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "final recv failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        collect(&mut printed, &String::from_utf8_lossy(&out.stdout));
        if printed.contains_key(&format!("stream {:05}", total - 1)) || Instant::now() > deadline {
            break;
        }
    }

    let twice: Vec<_> = printed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown twice: {twice:?}");

    // The store has every message once, in order.
    let mut config = ClientConfig::new(
        &bob_dir,
        StoreKey::Passphrase("bob-password".into()),
        "127.0.0.1:9",
        Trust::PinnedCertDer(s.cert_der.clone()),
    );
    config.request_timeout = Duration::from_millis(200);
    let bob = Client::open(config).unwrap();
    let history: Vec<String> = bob
        .messages(&dm, total + 10, None)
        .unwrap()
        .into_iter()
        .map(|m| m.text().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = (0..total).map(|i| format!("stream {i:05}")).collect();
    assert_eq!(
        history.len(),
        expected.len(),
        "lost or duplicated messages in the store"
    );
    assert_eq!(history, expected, "order or content differs");
    bob.shutdown();
}
