//! B1, Rust's side: 1,000 messages from alice to bob in a post-quantum group of three
//! (SCENARIO.md step 4), through qpq-core, against a server someone else started. Each SDK's
//! benchmark runs `qpq-bench b1 ADDR CERT_FILE [MESSAGES]` next to its own B1 against the
//! same server, in the same run, and reports the ratio (docs/BENCHMARKS.md, "SDK benchmarks").
//!
//! Two figures, one JSON line on stdout:
//! - `p50_us`: median of send at alice → the message event at bob, one message at a time;
//! - `msgs_per_s`: messages sent back to back, divided by the time until bob has them all.

use std::path::Path;
use std::time::{Duration, Instant};

use qpq_core::{Client, ClientConfig, ConversationId, Event, StoreKey, Trust};
use rand::rngs::OsRng;
use rand::RngCore;

use crate::report::Samples;

fn open(dir: &Path, name: &str, addr: &str, cert: &[u8]) -> Result<Client, String> {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut config = ClientConfig::new(
        dir.join(name),
        StoreKey::Raw(key),
        addr,
        Trust::PinnedCertDer(cert.to_vec()),
    );
    config.insecure_fast_kdf = true;
    let c = Client::open(config).map_err(|e| e.to_string())?;
    c.register(name, "b1 bench password")
        .map_err(|e| format!("register {name}: {e}"))?;
    Ok(c)
}

/// The next message event at `c` (other events are skipped); its text.
fn next_text(c: &Client, deadline: Instant) -> Result<String, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("B1: no message at bob in time".into());
        }
        if let Some(Event::Message(m)) = c.next_event(left).map_err(|e| e.to_string())? {
            return Ok(m.text().unwrap_or_default().to_string());
        }
    }
}

fn group(alice: &Client, others: &[&Client], names: &[&str]) -> Result<ConversationId, String> {
    let conv = alice
        .create_group("scenario", true)
        .map_err(|e| e.to_string())?;
    alice.invite(&conv, names).map_err(|e| e.to_string())?;
    for c in others {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("B1: not joined in time".into());
            }
            if let Some(Event::ConversationJoined(x)) =
                c.next_event(left).map_err(|e| e.to_string())?
            {
                if x.id == conv {
                    break;
                }
            }
        }
    }
    Ok(conv)
}

/// Runs B1 against the server at `addr` (certificate DER in `cert_file`).
pub fn run(addr: &str, cert_file: &Path, messages: usize) -> Result<serde_json::Value, String> {
    crate::bare::pin_to_cpu(0);
    let cert = std::fs::read(cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tag = format!("rs{}x{}", std::process::id(), OsRng.next_u32());
    let names = [format!("{tag}a"), format!("{tag}b"), format!("{tag}c")];
    let alice = open(dir.path(), &names[0], addr, &cert)?;
    let bob = open(dir.path(), &names[1], addr, &cert)?;
    let carol = open(dir.path(), &names[2], addr, &cert)?;
    let conv = group(&alice, &[&bob, &carol], &[&names[1], &names[2]])?;

    let mut latency = Samples::default();
    for i in 0..messages {
        let text = format!("b1 {i}");
        let t = Instant::now();
        alice.send_text(&conv, &text).map_err(|e| e.to_string())?;
        loop {
            if next_text(&bob, t + Duration::from_secs(30))? == text {
                break;
            }
        }
        latency.0.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let t = Instant::now();
    for i in 0..messages {
        alice
            .send_text(&conv, &format!("burst {i}"))
            .map_err(|e| e.to_string())?;
    }
    let last = format!("burst {}", messages.saturating_sub(1));
    let deadline = t + Duration::from_secs(300);
    while next_text(&bob, deadline)? != last {}
    let took = t.elapsed().as_secs_f64();
    for c in [&alice, &bob, &carol] {
        c.shutdown();
    }
    Ok(serde_json::json!({
        "lang": "rust",
        "messages": messages,
        "p50_us": latency.p50(),
        "msgs_per_s": messages as f64 / took,
    }))
}
