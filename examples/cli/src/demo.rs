//! `qpq demo`: the project's main job with zero configuration. An embedded qpq-server on a free
//! loopback port with a temporary data dir; alice, bob and carol register; alice creates a
//! post-quantum group and invites the others; they exchange messages; alice removes carol and
//! rotates keys; carol can no longer read. Prints a transcript; exits 0 only if every
//! expectation held.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use qpq_core::{Client, ClientConfig, ConversationId, Event, StoreKey, Trust};
use rand::RngCore;

struct Transcript {
    failures: Vec<String>,
}

impl Transcript {
    fn line(&self, took: Duration, who: &str, what: impl AsRef<str>) {
        outln!(
            "[{:>7.1} ms] {who:<6} {}",
            took.as_secs_f64() * 1000.0,
            what.as_ref()
        );
    }

    fn expect(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            outln!("             ✓ {what}");
        } else {
            outln!("             ✗ {what}");
            self.failures.push(what);
        }
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let r = f();
    (r, t0.elapsed())
}

/// Waits for `pred` to match an event from `sync`/`next_event`, up to 10 s.
fn wait_for(client: &Client, mut pred: impl FnMut(&Event) -> bool) -> Result<Event, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for e in client.sync().map_err(|e| e.to_string())? {
            if pred(&e) {
                return Ok(e);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out after 10 s".into());
        }
        if let Some(e) = client
            .next_event(left.min(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?
        {
            if pred(&e) {
                return Ok(e);
            }
        }
    }
}

fn received(
    conv: ConversationId,
    from: &'static str,
    text: &'static str,
) -> impl FnMut(&Event) -> bool {
    move |e| matches!(e, Event::Message(m) if m.conversation == conv && m.sender == from && m.text() == Some(text))
}

/// Runs the demo.
pub fn run() -> ExitCode {
    match run_inner() {
        Ok(failures) if failures.is_empty() => {
            outln!("\nall expectations held: end-to-end encrypted, post-quantum, removed members locked out.");
            ExitCode::SUCCESS
        }
        Ok(failures) => {
            outln!("\n{} expectation(s) failed:", failures.len());
            for f in failures {
                outln!("  - {f}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner() -> Result<Vec<String>, String> {
    let mut t = Transcript {
        failures: Vec::new(),
    };
    let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    outln!("qpq demo: an embedded qpq-server and three users in a post-quantum MLS group\n");

    // The server, in-process on a free loopback port.
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let (started, took) = timed(|| {
        rt.block_on(async {
            let config = qpq_server::config::Config::ephemeral(&dir.path().join("server"));
            let server = qpq_server::Server::bind(config)
                .await
                .map_err(|e| e.to_string())?;
            let addr = server.local_addr().map_err(|e| e.to_string())?;
            let cert = server.certificate_der().to_vec();
            Ok::<_, String>((server, addr, cert))
        })
    });
    let (server, addr, cert) = started?;
    let fp = server_fingerprint(&server);
    let stop = server.shutdown_handle();
    let server_task = rt.spawn(server.run());
    t.line(
        took,
        "server",
        format!(
            "listening on {addr} (QUIC, TLS 1.3, cert sha256 {}…)",
            &fp[..16]
        ),
    );

    let open = |name: &str| -> Result<Client, String> {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let config = ClientConfig::new(
            dir.path().join(name),
            StoreKey::Raw(key),
            addr.to_string(),
            Trust::PinnedCertDer(cert.clone()),
        );
        Client::open(config).map_err(|e| format!("{name}: {e}"))
    };
    let alice = open("alice")?;
    let bob = open("bob")?;
    let carol = open("carol")?;
    let users = [("alice", &alice), ("bob", &bob), ("carol", &carol)];
    for (name, c) in users {
        let (r, took) = timed(|| c.register(name, &format!("{name}'s long passphrase")));
        let acct = r.map_err(|e| format!("{name} register: {e}"))?;
        t.line(
            took,
            name,
            format!(
                "registered with OPAQUE (device {}…)",
                &hex::encode(acct.device_key)[..12]
            ),
        );
    }

    let (conv, took) = timed(|| alice.create_group("demo", true));
    let conv = conv.map_err(|e| format!("create_group: {e}"))?;
    let info = alice.conversation(&conv).map_err(|e| e.to_string())?;
    t.line(
        took,
        "alice",
        format!(
            "created group \"demo\" · {} · epoch {}",
            info.ciphersuite, info.epoch
        ),
    );
    t.expect(
        info.post_quantum && info.ciphersuite.contains("MLKEM768X25519"),
        "the group uses the X-Wing (ML-KEM-768 + X25519) suite",
    );

    let (r, took) = timed(|| alice.invite(&conv, &["bob", "carol"]));
    r.map_err(|e| format!("invite: {e}"))?;
    let epoch = alice.conversation(&conv).map_err(|e| e.to_string())?.epoch;
    t.line(
        took,
        "alice",
        format!("invited bob and carol in one commit · epoch {epoch}"),
    );
    for (name, c) in [("bob", &bob), ("carol", &carol)] {
        let (r, took) = timed(|| {
            wait_for(
                c,
                |e| matches!(e, Event::ConversationJoined(x) if x.id == conv),
            )
        });
        r.map_err(|e| format!("{name} join: {e}"))?;
        let ci = c.conversation(&conv).map_err(|e| e.to_string())?;
        t.line(
            took,
            name,
            format!(
                "joined \"demo\" from the Welcome · epoch {} · {} members",
                ci.epoch,
                ci.members.len()
            ),
        );
        t.expect(
            ci.epoch == epoch,
            format!("{name} is at the group's epoch {epoch}"),
        );
    }

    let exchange: [(&str, &Client, &'static str, &'static str); 3] = [
        (
            "alice",
            &alice,
            "alice",
            "Hello from alice, over a post-quantum group",
        ),
        ("bob", &bob, "bob", "Hi alice! bob here"),
        ("carol", &carol, "carol", "carol checking in"),
    ];
    for (name, sender, from, text) in exchange {
        let (r, took) = timed(|| sender.send_text(&conv, text));
        r.map_err(|e| format!("{name} send: {e}"))?;
        t.line(took, name, format!("→ \"{text}\""));
        for (rname, rc) in users {
            if rname == name {
                continue;
            }
            let (r, took) = timed(|| wait_for(rc, received(conv, from, text)));
            if r.is_ok() {
                t.line(took, rname, format!("← {from}: \"{text}\""));
            }
            t.expect(
                r.is_ok(),
                format!("{rname} received {from}'s message exactly as sent"),
            );
        }
    }

    let (r, took) = timed(|| alice.remove(&conv, "carol"));
    r.map_err(|e| format!("remove: {e}"))?;
    let epoch = alice.conversation(&conv).map_err(|e| e.to_string())?.epoch;
    t.line(took, "alice", format!("removed carol · epoch {epoch}"));
    let (r, took) = timed(|| {
        wait_for(
            &carol,
            |e| matches!(e, Event::Removed { conversation, .. } if *conversation == conv),
        )
    });
    let by = match &r {
        Ok(Event::Removed { by, .. }) => by.clone(),
        _ => None,
    };
    t.line(
        took,
        "carol",
        format!(
            "was removed from \"demo\" by {}",
            by.as_deref().unwrap_or("?")
        ),
    );
    t.expect(
        by.as_deref() == Some("alice"),
        "carol learns she was removed, and by alice",
    );

    let (r, took) = timed(|| alice.rotate_keys(&conv));
    r.map_err(|e| format!("rotate_keys: {e}"))?;
    let epoch = alice.conversation(&conv).map_err(|e| e.to_string())?.epoch;
    t.line(
        took,
        "alice",
        format!("rotated her keys (self-update commit) · epoch {epoch}"),
    );
    let (r, took) = timed(|| {
        wait_for(
            &bob,
            |e| matches!(e, Event::MembersChanged { conversation, .. } if *conversation == conv),
        )
    });
    let _ = r;
    let bob_epoch = bob.conversation(&conv).map_err(|e| e.to_string())?.epoch;
    t.line(
        took,
        "bob",
        format!("processed the commits · epoch {bob_epoch}"),
    );
    t.expect(bob_epoch == epoch, "alice and bob agree on the epoch");

    let secret = "for alice and bob only";
    let (r, took) = timed(|| alice.send_text(&conv, secret));
    r.map_err(|e| format!("send after removal: {e}"))?;
    t.line(took, "alice", format!("→ \"{secret}\""));
    let (r, took) = timed(|| wait_for(&bob, received(conv, "alice", secret)));
    t.line(took, "bob", format!("← alice: \"{secret}\""));
    t.expect(
        r.is_ok(),
        "bob received the message sent after carol's removal",
    );

    // carol tries to read: the server no longer routes to her, and the ciphertext itself
    // does not decrypt with her (stale) group state.
    let (events, took) = timed(|| carol.sync());
    let got_it = events
        .map_err(|e| e.to_string())?
        .iter()
        .any(|e| matches!(e, Event::Message(m) if m.text() == Some(secret)));
    t.line(took, "carol", "synced: nothing new for her");
    t.expect(!got_it, "carol did not receive the message");
    #[cfg(feature = "test-hooks")]
    decryption_proof(&mut t, &alice, &carol, &conv, secret, epoch)?;
    let carol_history = carol
        .messages(&conv, 100, None)
        .map_err(|e| e.to_string())?;
    t.expect(
        carol_history.iter().all(|m| m.text() != Some(secret)),
        "carol's history has no message from after her removal",
    );
    let (r, _) = timed(|| carol.send_text(&conv, "am I still here?"));
    t.expect(r.is_err(), "carol can no longer send to the group");

    for c in [&alice, &bob, &carol] {
        c.shutdown();
    }
    stop.shutdown();
    let _ = rt.block_on(server_task);
    Ok(t.failures)
}

/// With qpq-core's test hooks (a `--features test-hooks` build, never a release): alice
/// encrypts a message of the current epoch without sending it, and carol's stale group state
/// tries to decrypt it: the cryptographic half of "removed members are locked out" (the
/// routing half, nothing delivered to carol, holds in every build).
#[cfg(feature = "test-hooks")]
fn decryption_proof(
    t: &mut Transcript,
    alice: &Client,
    carol: &Client,
    conv: &ConversationId,
    secret: &str,
    epoch: u64,
) -> Result<(), String> {
    let ciphertext = alice
        .debug_encrypt(conv, secret)
        .map_err(|e| e.to_string())?;
    let (r, took) = timed(|| carol.debug_process(conv, &ciphertext));
    match &r {
        Ok(()) => t.line(
            took,
            "carol",
            "decrypted a ciphertext of the current epoch (this must not happen)",
        ),
        Err(e) => t.line(
            took,
            "carol",
            format!("cannot decrypt a ciphertext of epoch {epoch}: {e}"),
        ),
    }
    t.expect(
        r.is_err(),
        "carol cannot decrypt messages sent after her removal",
    );
    Ok(())
}

fn server_fingerprint(server: &qpq_server::Server) -> String {
    server.fingerprint().to_string()
}
