//! C1: send → event at a peer, through the engine, at several group sizes, against two
//! baselines measured in the same run:
//! - the durable floor: bare openmls encrypt + decrypt (same group size), plus one FULL
//!   SQLite commit per durable hop (the sender's, the server's with its fan-out rows, the
//!   receiver's), plus a bare quinn request and push;
//! - bare openmls encrypt + decrypt in memory (informative).
//!
//! `qpq-bench c1 [SIZES] [MESSAGES]` runs only these rows and prints them (SIZES like `3,100`).

use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use qpq_core::{Client, Event};
use qpq_server::testkit::Conn;

use crate::bare::{ChildServer, BARE_PUSH, BARE_SUBSCRIBE};
use crate::report::{Results, Row, Samples};

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Two members (sender, one receiver) of a bare openmls group of `n` members.
struct BareGroup {
    a: MlsGroup,
    b: MlsGroup,
    ap: OpenMlsRustCrypto,
    bp: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
}

fn member(
    cs: Ciphersuite,
    p: &OpenMlsRustCrypto,
    name: &str,
) -> Result<(SignatureKeyPair, CredentialWithKey), String> {
    let signer = SignatureKeyPair::new(cs.signature_algorithm()).map_err(|e| e.to_string())?;
    signer.store(p.storage()).map_err(|e| e.to_string())?;
    let cred = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    Ok((signer, cred))
}

fn bare_group(cs: Ciphersuite, n: usize) -> Result<BareGroup, String> {
    let ap = OpenMlsRustCrypto::default();
    let bp = OpenMlsRustCrypto::default();
    let others = OpenMlsRustCrypto::default();
    let (a_s, a_c) = member(cs, &ap, "a")?;
    let mut kps = Vec::new();
    let (b_s, b_c) = member(cs, &bp, "b")?;
    kps.push(
        KeyPackage::builder()
            .build(cs, &bp, &b_s, b_c)
            .map_err(|e| e.to_string())?
            .key_package()
            .clone(),
    );
    for i in 2..n {
        let (s, c) = member(cs, &others, &format!("m{i}"))?;
        kps.push(
            KeyPackage::builder()
                .build(cs, &others, &s, c)
                .map_err(|e| e.to_string())?
                .key_package()
                .clone(),
        );
    }
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(cs)
        .use_ratchet_tree_extension(true)
        .build();
    let mut a = MlsGroup::new(&ap, &a_s, &config, a_c).map_err(|e| e.to_string())?;
    let (_, welcome, _) = a.add_members(&ap, &a_s, &kps).map_err(|e| e.to_string())?;
    a.merge_pending_commit(&ap).map_err(|e| e.to_string())?;
    let bytes = welcome
        .tls_serialize_detached()
        .map_err(|e| e.to_string())?;
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(&bytes[..])
        .map_err(|e| e.to_string())?
        .extract()
    else {
        return Err("not a welcome".into());
    };
    let join = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build();
    let b = StagedWelcome::new_from_welcome(&bp, &join, w, None)
        .map_err(|e| e.to_string())?
        .into_group(&bp)
        .map_err(|e| e.to_string())?;
    Ok(BareGroup {
        a,
        b,
        ap,
        bp,
        signer: a_s,
    })
}

impl BareGroup {
    /// One encrypt + serialise + parse + decrypt.
    fn round(&mut self, text: &[u8]) -> Result<Duration, String> {
        let t = Instant::now();
        let out = self
            .a
            .create_message(&self.ap, &self.signer, text)
            .map_err(|e| e.to_string())?;
        let bytes = out.tls_serialize_detached().map_err(|e| e.to_string())?;
        let inm = MlsMessageIn::tls_deserialize_exact(&bytes[..]).map_err(|e| e.to_string())?;
        let pm = inm.try_into_protocol_message().map_err(|e| e.to_string())?;
        self.b
            .process_message(&self.bp, pm)
            .map_err(|e| e.to_string())?;
        Ok(t.elapsed())
    }
}

/// One FULL SQLite commit of `rows` rows of `size` bytes (WAL, synchronous = FULL), on the
/// disk the stores use.
struct FullCommit {
    db: rusqlite::Connection,
    _dir: tempfile::TempDir,
}

impl FullCommit {
    fn new() -> Result<FullCommit, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db =
            rusqlite::Connection::open(dir.path().join("floor.db")).map_err(|e| e.to_string())?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
        )
        .map_err(|e| e.to_string())?;
        Ok(FullCommit { db, _dir: dir })
    }

    fn commit(&mut self, rows: usize, data: &[u8]) -> Result<Duration, String> {
        let t = Instant::now();
        let tx = self.db.transaction().map_err(|e| e.to_string())?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t(data) VALUES (?1)")
                .map_err(|e| e.to_string())?;
            for _ in 0..rows {
                st.execute([data]).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(t.elapsed())
    }
}

fn wait_text(c: &Client, text: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(Event::Message(m)) = c
            .next_event(Duration::from_millis(200))
            .map_err(|e| e.to_string())?
        {
            if m.text() == Some(text) {
                return Ok(());
            }
        }
    }
    Err(format!("timed out waiting for {text:?}"))
}

/// Drains queued events.
fn drain(c: &Client) {
    while let Ok(Some(_)) = c.next_event(Duration::ZERO) {}
}

/// Per-size figures of one C1 run.
pub struct C1Figures {
    /// Group size.
    pub size: usize,
    /// send → event at one peer, through the engine.
    pub qpq: Samples,
    /// The durable floor, per message.
    pub floor: Samples,
    /// Bare openmls encrypt + decrypt in memory.
    pub mls: Samples,
}

/// Measures C1 at every size in `sizes` with `clients` (registered, `clients.len()` ≥ the
/// largest size), `messages` samples per size after `warmup` unmeasured ones.
pub fn measure(
    clients: &[Client],
    server: &ChildServer,
    bare: &ChildServer,
    sizes: &[usize],
    warmup: usize,
    messages: usize,
) -> Result<Vec<C1Figures>, String> {
    let cs = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (ba, bb) = rt.block_on(async {
        let ba = Conn::connect(bare.addr, &bare.cert).await?;
        let bb = Conn::connect(bare.addr, &bare.cert).await?;
        bb.raw(BARE_SUBSCRIBE, vec![]).await;
        Ok::<_, String>((ba, bb))
    })?;
    let _ = server;
    let mut disk = FullCommit::new()?;
    let payload = vec![0x5au8; 256];
    let mut out = Vec::new();
    for &n in sizes {
        let names: Vec<String> = (1..n).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let conv = clients[0]
            .create_group(&format!("c1-{n}"), false)
            .map_err(|e| e.to_string())?;
        clients[0].invite(&conv, &refs).map_err(|e| e.to_string())?;
        // Every member has joined before measuring (their joins would compete for the CPU).
        for c in &clients[1..n] {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if c.conversation(&conv).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err("a member did not join in time".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for c in &clients[..n] {
            drain(c);
        }
        let mut group = bare_group(cs, n)?;
        let mut f = C1Figures {
            size: n,
            qpq: Samples::default(),
            floor: Samples::default(),
            mls: Samples::default(),
        };
        for i in 0..warmup + messages {
            let text = format!("c1 {n} {i}");
            let t = Instant::now();
            clients[0]
                .send_text(&conv, &text)
                .map_err(|e| e.to_string())?;
            wait_text(&clients[1], &text)?;
            let took = t.elapsed();
            // Let the other receivers finish before the baseline takes the CPU.
            std::thread::sleep(Duration::from_millis(if n > 10 { 50 } else { 2 }));
            let mls = group.round(text.as_bytes())?;
            let sender = disk.commit(1, &payload)?;
            let server_hop = disk.commit(n - 1, &payload)?;
            let receiver = disk.commit(1, &payload)?;
            let net = rt.block_on(async {
                let t = Instant::now();
                ba.raw(BARE_PUSH, payload.clone()).await;
                bb.next_push(Duration::from_secs(5))
                    .await
                    .ok_or("no bare push")?;
                Ok::<_, String>(t.elapsed())
            })?;
            if i >= warmup {
                f.qpq.0.push(us(took));
                f.mls.0.push(us(mls));
                f.floor
                    .0
                    .push(us(mls + sender + server_hop + receiver + net));
            }
        }
        for c in &clients[..n] {
            drain(c);
        }
        out.push(f);
    }
    Ok(out)
}

/// The C1 rows of the report.
pub fn rows(figures: &[C1Figures], r: &mut Results) {
    for f in figures {
        r.rows.push(Row::latency(
            "C1",
            &format!("send → event at a peer, group of {} (vs durable floor)", f.size),
            &f.qpq,
            &f.floor,
            1.5,
            "durable floor: bare openmls encrypt + decrypt (same group size) + 3 FULL SQLite commits (sender 1 row, server 1 row per recipient, receiver 1 row) + bare quinn request and push, each measured after the qpq sample",
        ));
        let mut row = Row::latency(
            "C1m",
            &format!(
                "send → event at a peer, group of {} (vs in-memory openmls)",
                f.size
            ),
            &f.qpq,
            &f.mls,
            f64::INFINITY,
            "informative: bare openmls encrypt + decrypt with in-memory storage",
        );
        row.goal = "informative".into();
        r.rows.push(row);
    }
}

/// `qpq-bench c1 [SIZES] [MESSAGES]`: only the C1 rows, printed.
pub fn cli(sizes: &[usize], messages: usize) -> Result<(), String> {
    crate::bare::pin_to_cpu(0);
    let server = ChildServer::start("serve-qpq")?;
    let bare = ChildServer::start("serve-bare")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let users = sizes.iter().copied().max().unwrap_or(3).max(3);
    let mut clients = Vec::new();
    for i in 0..users {
        let c = crate::scenarios::open_client(dir.path(), &format!("u{i}"), &server)?;
        c.register(&format!("u{i}"), "bench password")
            .map_err(|e| format!("register u{i}: {e}"))?;
        clients.push(c);
    }
    let figs = measure(&clients, &server, &bare, sizes, 20, messages)?;
    for f in &figs {
        println!(
            "C1 n={:>4}: qpq p50 {:>8.0} µs p99 {:>8.0} | floor p50 {:>7.0} µs ({:.2}×) | openmls p50 {:>6.0} µs ({:.1}×) | samples {}",
            f.size,
            f.qpq.p50(),
            f.qpq.p99(),
            f.floor.p50(),
            f.qpq.p50() / f.floor.p50(),
            f.mls.p50(),
            f.qpq.p50() / f.mls.p50(),
            f.qpq.0.len()
        );
    }
    for c in &clients {
        c.shutdown();
    }
    Ok(())
}
