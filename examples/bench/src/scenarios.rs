//! The scenarios of the benchmark issue, each with its baseline measured in the same run,
//! interleaved round by round (round 0 is a discarded warm-up).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use qpq_core::{Client, ClientConfig, Event, StoreKey, Trust};
use qpq_proto::{method, v1};
use qpq_server::testkit::{app_message, client_config, Conn};
use rand::rngs::OsRng;
use rand::RngCore;

use crate::bare::{
    self, ChildServer, BARE_DURABLE, BARE_ECHO, BARE_HOLD, BARE_PUSH, BARE_SUBSCRIBE,
};
use crate::report::{Results, Row, Samples};

/// How much to measure.
pub struct Plan {
    /// A few iterations only (the harness test).
    pub smoke: bool,
    /// Rounds; round 0 is a discarded warm-up.
    pub rounds: usize,
    /// Samples per round.
    pub per_round: usize,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Runs every scenario the landed code supports; with `only`, just the listed groups
/// (`S1` (with S2, S5, S6, S12), `S3`, `S11`, `S10`, `C3`, `C1`, `C2`, `DB`, `M1`, `L3`,
/// `P` (P1, P2, P3 on PostgreSQL), `ISO`), for measuring one change without the whole run.
pub fn run_all(smoke: bool, only: Option<Vec<String>>) -> Result<Results, String> {
    bare::pin_to_cpu(0);
    let plan = Plan {
        smoke,
        rounds: if smoke { 2 } else { 11 },
        per_round: if smoke { 5 } else { 200 },
    };
    let mut r = Results {
        rows: Vec::new(),
        extra: Vec::new(),
        skipped: Vec::new(),
    };
    let on = |id: &str| {
        only.as_ref()
            .is_none_or(|o| o.iter().any(|x| x.eq_ignore_ascii_case(id)))
    };
    if on("S1") {
        println!("server scenarios (S1, S2, S5, S6, S12)…");
        server_latency(&plan, &mut r)?;
    }
    if on("S3") {
        println!("throughput (S3)…");
        throughput(&plan, &mut r)?;
    }
    if on("S11") {
        println!("OPAQUE login CPU (S11)…");
        opaque_cpu(&plan, &mut r)?;
    }
    if on("S10") {
        println!("bytes stored for a large invite (S10)…");
        invite_storage(&plan, &mut r)?;
    }
    if on("C3") {
        println!("hybrid envelope (C3)…");
        envelope(&plan, &mut r)?;
    }
    if on("C1") || on("C2") || on("DB") {
        println!("client engine (C1, C2, database size)…");
        client_engine(&plan, &mut r, on("C1"), on("C2"), on("DB"))?;
    }
    if on("M1") {
        println!("idle connections (M1)…");
        idle_connections(&plan, &mut r)?;
    }
    if on("L3") {
        println!("store unlock (L-3)…");
        store_unlock(&plan, &mut r)?;
    }
    if on("P") || on("P1") || on("P2") || on("P3") {
        println!("PostgreSQL scale-out (P1, P2, P3)…");
        crate::scaleout::run(&plan, &mut r)?;
    }
    if on("ISO") {
        println!("isolation under attack and the LoginStart timing channel (D-8, R-3, A-6)…");
        crate::isolation::run(&plan, &mut r)?;
    }
    r.skipped.push((
        "B1".into(),
        "measured by each SDK's own benchmark, in the SDK section below".into(),
    ));
    Ok(r)
}

fn server_latency(p: &Plan, r: &mut Results) -> Result<(), String> {
    let qpq = ChildServer::start("serve-qpq")?;
    let bare = ChildServer::start("serve-bare")?;
    let rt = runtime()?;
    let payload = vec![0x5au8; 1024];
    let (mut s1, mut b1, mut b2, mut s6, mut b6, mut s5, mut b5, mut s12, mut b12) =
        Default::default();
    rt.block_on(async {
        let mut a = Conn::connect(qpq.addr, &qpq.cert).await?;
        a.register("alice", "alice bench password")
            .await
            .map_err(|e| e.message)?;
        a.login("alice", "alice bench password")
            .await
            .map_err(|e| e.message)?;
        let mut b = Conn::connect(qpq.addr, &qpq.cert).await?;
        b.register("bob", "bob bench password")
            .await
            .map_err(|e| e.message)?;
        b.login("bob", "bob bench password")
            .await
            .map_err(|e| e.message)?;
        let ch = a.group(&[&b]).await;
        let ba = Conn::connect(bare.addr, &bare.cert).await?;
        let bb = Conn::connect(bare.addr, &bare.cert).await?;
        bb.raw(BARE_SUBSCRIBE, vec![]).await;
        for round in 0..p.rounds {
            let keep = round > 0;
            let take = |v: &mut Samples, d: Duration| {
                if keep {
                    v.0.push(us(d));
                }
            };
            for _ in 0..p.per_round {
                let t = Instant::now();
                a.send(&ch, 1, &payload).await.map_err(|e| e.message)?;
                take(&mut s1, t.elapsed());
                let t = Instant::now();
                ba.raw(BARE_ECHO, payload.clone()).await;
                take(&mut b1, t.elapsed());
                let t = Instant::now();
                ba.raw(BARE_DURABLE, payload.clone()).await;
                take(&mut b2, t.elapsed());
            }
            let _: v1::AckResponse = b
                .call(
                    method::ACK,
                    &v1::AckRequest {
                        up_to_seq: u64::MAX >> 2,
                        seqs: vec![],
                    },
                )
                .await
                .map_err(|e| e.message)?;
            while b.next_push(Duration::from_millis(50)).await.is_some() {}
            for _ in 0..p.per_round {
                let t = Instant::now();
                a.send(&ch, 6, &payload).await.map_err(|e| e.message)?;
                let got = b.fetch().await;
                take(&mut s6, t.elapsed());
                let last = got.last().map_or(0, |m| m.seq);
                let _: v1::AckResponse = b
                    .call(
                        method::ACK,
                        &v1::AckRequest {
                            up_to_seq: last,
                            seqs: vec![],
                        },
                    )
                    .await
                    .map_err(|e| e.message)?;
                let t = Instant::now();
                ba.raw(BARE_ECHO, payload.clone()).await;
                take(&mut b6, t.elapsed());
            }
            while b.next_push(Duration::from_millis(50)).await.is_some() {}
            for _ in 0..p.per_round {
                let t = Instant::now();
                a.send(&ch, 5, &payload).await.map_err(|e| e.message)?;
                b.next_push(Duration::from_secs(5)).await.ok_or("no push")?;
                take(&mut s5, t.elapsed());
                let t = Instant::now();
                ba.raw(BARE_PUSH, payload.clone()).await;
                bb.next_push(Duration::from_secs(5))
                    .await
                    .ok_or("no bare push")?;
                take(&mut b5, t.elapsed());
            }
            for _ in 0..p.per_round.min(50) {
                let t = Instant::now();
                let mut c = Conn::connect(qpq.addr, &qpq.cert).await?;
                c.token = a.token.clone();
                let _: v1::ListDevicesResponse = c
                    .call(method::LIST_DEVICES, &v1::ListDevicesRequest {})
                    .await
                    .map_err(|e| e.message)?;
                take(&mut s12, t.elapsed());
                drop(c);
                let t = Instant::now();
                let c = Conn::connect(bare.addr, &bare.cert).await?;
                c.raw(BARE_ECHO, vec![]).await;
                take(&mut b12, t.elapsed());
            }
        }
        Ok::<(), String>(())
    })?;
    r.rows.push(Row::latency(
        "S1",
        "Enqueue → Ok, sequential, 1 KiB",
        &s1,
        &b1,
        1.5,
        "baseline: bare quinn request/response, same framing",
    ));
    r.rows.push(Row::latency(
        "S2",
        "durable Enqueue → Ok (SQLite FULL)",
        &s1,
        &b2,
        // Issue 14's goal for Enqueue→Ok against bare quinn plus one FULL commit.
        1.15,
        "baseline: bare quinn request + one single-row FULL commit",
    ));
    r.rows.push(Row::latency(
        "S5",
        "Enqueue by A → push at B",
        &s5,
        &b5,
        1.3,
        "baseline: bare quinn request + uni-stream push",
    ));
    r.rows.push(Row::latency(
        "S6",
        "Enqueue → Fetch",
        &s6,
        &b6,
        2.2,
        "baseline: one bare quinn request",
    ));
    r.rows.push(Row::latency(
        "S12",
        "connect + first authenticated request",
        &s12,
        &b12,
        1.2,
        "baseline: bare quinn connect + request",
    ));
    Ok(())
}

async fn rate(
    conn: Arc<Conn>,
    concurrency: usize,
    total: usize,
    op: fn(Arc<Conn>, usize) -> tokio::task::JoinHandle<()>,
) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (conn, next) = (conn.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let _ = op(conn.clone(), i).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / t.elapsed().as_secs_f64()
}

fn qpq_enqueue(c: Arc<Conn>, _i: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(chan) = CHANNEL.get() {
            let req = app_message(chan, 3, &[0x33; 1024]);
            let _ = c.raw(method::ENQUEUE, c.encode(&req)).await;
        }
    })
}

fn bare_echo(c: Arc<Conn>, _i: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        c.raw(BARE_ECHO, vec![0x33; 1024]).await;
    })
}

static CHANNEL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();

fn sqlite_batch_rate(rows: usize, batch: usize) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut db = rusqlite::Connection::open(dir.path().join("b.db")).map_err(|e| e.to_string())?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    let data = vec![0x44u8; 1024];
    let t = Instant::now();
    for _ in 0..rows / batch {
        let tx = db.transaction().map_err(|e| e.to_string())?;
        for _ in 0..batch {
            tx.execute("INSERT INTO t(data) VALUES (?1)", [&data])
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok((rows / batch * batch) as f64 / t.elapsed().as_secs_f64())
}

fn throughput(p: &Plan, r: &mut Results) -> Result<(), String> {
    let qpq = ChildServer::start("serve-qpq")?;
    let bare = ChildServer::start("serve-bare")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let total = if p.smoke { 200 } else { 20_000 };
    let mut figures = Vec::new();
    rt.block_on(async {
        let mut a = Conn::connect(qpq.addr, &qpq.cert).await?;
        a.register("alice", "pw-alice")
            .await
            .map_err(|e| e.message)?;
        a.login("alice", "pw-alice").await.map_err(|e| e.message)?;
        let mut b = Conn::connect(qpq.addr, &qpq.cert).await?;
        b.register("bob", "pw-bob").await.map_err(|e| e.message)?;
        b.login("bob", "pw-bob").await.map_err(|e| e.message)?;
        let _ = CHANNEL.set(a.group(&[&b]).await);
        let a = Arc::new(a);
        let ba = Arc::new(Conn::connect(bare.addr, &bare.cert).await?);
        for conc in [1usize, 8, 64] {
            let n = if conc == 1 { total / 10 } else { total };
            let (mut q, mut bq, mut qc, mut bc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..if p.smoke { 1 } else { 3 } {
                let c0 = qpq.cpu_seconds();
                q.push(rate(a.clone(), conc, n, qpq_enqueue).await);
                qc.push((qpq.cpu_seconds() - c0) * 1e6 / n as f64);
                let c0 = bare.cpu_seconds();
                bq.push(rate(ba.clone(), conc, n, bare_echo).await);
                bc.push((bare.cpu_seconds() - c0) * 1e6 / n as f64);
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|x, y| x.total_cmp(y));
                v[v.len() / 2]
            };
            figures.push((
                conc,
                median(&mut q),
                median(&mut bq),
                median(&mut qc),
                median(&mut bc),
            ));
        }
        Ok::<(), String>(())
    })?;
    let sqlite64 = {
        let mut v: Vec<f64> = (0..3)
            .filter_map(|_| sqlite_batch_rate(if p.smoke { 640 } else { 64_000 }, 64).ok())
            .collect();
        v.sort_by(|x, y| x.total_cmp(y));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let sqlite1 = sqlite_batch_rate(if p.smoke { 50 } else { 2000 }, 1)?;
    for (conc, q, b, qc, bc) in &figures {
        r.extra.push((
            format!("S3 growth: qpq durable enqueue rate, {conc} concurrent streams"),
            *q,
            "msg/s".into(),
        ));
        r.extra.push((
            format!("S3 growth: bare quinn request rate, {conc} concurrent streams"),
            *b,
            "req/s".into(),
        ));
        r.extra.push((
            format!("S3 CPU: qpq server CPU per durable enqueue, {conc} concurrent streams"),
            *qc,
            "µs".into(),
        ));
        r.extra.push((
            format!("S3 CPU: bare quinn server CPU per request, {conc} concurrent streams"),
            *bc,
            "µs".into(),
        ));
        if *conc != 64 {
            r.rows.push(Row {
                id: "S3".into(),
                scenario: format!(
                    "durable Enqueue throughput, {conc} concurrent stream{} (vs bare quinn)",
                    if *conc == 1 { "" } else { "s" }
                ),
                unit: "msg/s",
                qpq: *q,
                baseline: *b,
                qpq_p99: None,
                base_p99: None,
                goal: "informative".into(),
                limit: 0.0,
                higher_is_better: true,
                note: "median of 3 runs each; baseline: bare quinn request rate, same concurrency"
                    .into(),
            });
        }
    }
    if let Some((_, _, _, qc, bc)) = figures.iter().find(|f| f.0 == 64) {
        r.rows.push(Row {
            id: "S3c".into(),
            scenario: "server CPU per durable Enqueue, 64 concurrent streams".into(),
            unit: "µs",
            qpq: *qc,
            baseline: *bc,
            qpq_p99: None,
            base_p99: None,
            goal: "≤ 25 µs (≤ 3.8×)".into(),
            limit: 3.8,
            higher_is_better: false,
            note: "server process CPU time (user + system) ÷ messages, median of 3 runs; baseline: the bare quinn server's CPU per request at 64 streams".into(),
        });
    }
    r.extra.push((
        "bare SQLite FULL insert rate, 1 row per commit".into(),
        sqlite1,
        "rows/s".into(),
    ));
    r.extra.push((
        "bare SQLite FULL insert rate, 64-row batches".into(),
        sqlite64,
        "rows/s".into(),
    ));
    if let Some((_, q, b, _, _)) = figures.iter().find(|f| f.0 == 64) {
        r.rows.push(Row {
            id: "S3".into(),
            scenario: "durable Enqueue throughput, 64 concurrent streams (vs bare quinn)".into(),
            unit: "msg/s",
            qpq: *q,
            baseline: *b,
            qpq_p99: None,
            base_p99: None,
            goal: "≥ 0.25×".into(),
            limit: 0.25,
            higher_is_better: true,
            note: "median of 3 runs each; baseline: bare quinn 64-stream request rate".into(),
        });
        r.rows.push(Row {
            id: "S3b".into(),
            scenario: "durable Enqueue throughput, 64 concurrent streams (vs bare SQLite)".into(),
            unit: "msg/s",
            qpq: *q,
            baseline: sqlite64,
            qpq_p99: None,
            base_p99: None,
            goal: "≥ 0.35×".into(),
            limit: 0.35,
            higher_is_better: true,
            note: "baseline: bare SQLite 64-row-batch FULL insert rate, same disk".into(),
        });
    }
    Ok(())
}

fn opaque_cpu(p: &Plan, r: &mut Results) -> Result<(), String> {
    use qpq_crypto::opaque::OpaqueSuite;
    use qpq_crypto::opaque_ke::*;
    let qpq = ChildServer::start("serve-qpq")?;
    let rt = runtime()?;
    let logins = if p.smoke { 3 } else { 200 };
    let mut q = Samples::default();
    let mut base = Samples::default();
    // Bare opaque-ke: the two server steps, timed on this thread's CPU clock.
    let setup = ServerSetup::<OpaqueSuite>::new(&mut OsRng);
    let pw = b"bench password";
    let reg =
        ClientRegistration::<OpaqueSuite>::start(&mut OsRng, pw).map_err(|e| e.to_string())?;
    let resp =
        ServerRegistration::start(&setup, reg.message, b"alice").map_err(|e| e.to_string())?;
    let up = reg
        .state
        .finish(
            &mut OsRng,
            pw,
            resp.message,
            ClientRegistrationFinishParameters::default(),
        )
        .map_err(|e| e.to_string())?;
    let record = ServerRegistration::<OpaqueSuite>::finish(up.message);
    rt.block_on(async {
        let mut a = Conn::connect(qpq.addr, &qpq.cert).await?;
        a.register("alice", "bench password")
            .await
            .map_err(|e| e.message)?;
        for round in 0..p.rounds {
            let cpu0 = qpq.cpu_seconds();
            for _ in 0..logins {
                a.login("alice", "bench password")
                    .await
                    .map_err(|e| e.message)?;
            }
            let per = (qpq.cpu_seconds() - cpu0) / logins as f64;
            let mut spent = Duration::ZERO;
            for _ in 0..logins {
                let c =
                    ClientLogin::<OpaqueSuite>::start(&mut OsRng, pw).map_err(|e| e.to_string())?;
                let t = thread_cpu();
                let s = ServerLogin::start(
                    &mut OsRng,
                    &setup,
                    Some(record.clone()),
                    c.message,
                    b"alice",
                    ServerLoginParameters::default(),
                )
                .map_err(|e| e.to_string())?;
                spent += thread_cpu() - t;
                let f = c
                    .state
                    .finish(
                        &mut OsRng,
                        pw,
                        s.message,
                        ClientLoginFinishParameters::default(),
                    )
                    .map_err(|e| e.to_string())?;
                let t = thread_cpu();
                s.state
                    .finish(f.message, ServerLoginParameters::default())
                    .map_err(|e| e.to_string())?;
                spent += thread_cpu() - t;
            }
            if round > 0 {
                q.0.push(per * 1e6);
                base.0.push(us(spent) / logins as f64);
            }
        }
        Ok::<(), String>(())
    })?;
    let mut row = Row::latency(
        "S11",
        "OPAQUE login, server CPU per login",
        &q,
        &base,
        // Issue 14's goal: the whole login (QUIC, protobuf, session commit) within 2× OPAQUE.
        2.0,
        "qpq: server process CPU time over whole logins (incl. QUIC, protobuf, session write); baseline: ServerLogin::start + finish",
    );
    row.qpq_p99 = None;
    row.base_p99 = None;
    row.note = format!(
        "{logins} logins per round, median of round means; {}",
        row.note
    );
    r.rows.push(row);
    Ok(())
}

fn mls_member(
    cs: Ciphersuite,
    provider: &OpenMlsRustCrypto,
    name: &str,
) -> Result<(SignatureKeyPair, CredentialWithKey), String> {
    let signer = SignatureKeyPair::new(cs.signature_algorithm()).map_err(|e| e.to_string())?;
    signer
        .store(provider.storage())
        .map_err(|e| e.to_string())?;
    let cred = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    Ok((signer, cred))
}

/// Bare openmls: a creator adds `n` members in one commit.
struct BareInvite {
    commit: Vec<u8>,
    welcome: Vec<u8>,
    /// Seconds to add the `n` members (commit + Welcome) and merge.
    add: f64,
    /// Seconds for the first member to join from the Welcome.
    join: f64,
}

fn bare_invite(cs: Ciphersuite, n: usize) -> Result<BareInvite, String> {
    let alice_p = OpenMlsRustCrypto::default();
    let (alice_s, alice_c) = mls_member(cs, &alice_p, "alice")?;
    let member_p = OpenMlsRustCrypto::default();
    let mut kps = Vec::with_capacity(n);
    for i in 0..n {
        let (s, c) = mls_member(cs, &member_p, &format!("m{i}"))?;
        let b = KeyPackage::builder()
            .build(cs, &member_p, &s, c)
            .map_err(|e| e.to_string())?;
        kps.push(b.key_package().clone());
    }
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(cs)
        .use_ratchet_tree_extension(true)
        .build();
    let mut group =
        MlsGroup::new(&alice_p, &alice_s, &config, alice_c).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let (commit, welcome, _) = group
        .add_members(&alice_p, &alice_s, &kps)
        .map_err(|e| e.to_string())?;
    group
        .merge_pending_commit(&alice_p)
        .map_err(|e| e.to_string())?;
    let add = t.elapsed().as_secs_f64();
    let commit = commit.tls_serialize_detached().map_err(|e| e.to_string())?;
    let welcome_bytes = welcome
        .tls_serialize_detached()
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let msg = MlsMessageIn::tls_deserialize_exact(&welcome_bytes[..]).map_err(|e| e.to_string())?;
    let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
        return Err("not a welcome".into());
    };
    let join = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build();
    let staged =
        StagedWelcome::new_from_welcome(&member_p, &join, w, None).map_err(|e| e.to_string())?;
    staged.into_group(&member_p).map_err(|e| e.to_string())?;
    Ok(BareInvite {
        commit,
        welcome: welcome_bytes,
        add,
        join: t.elapsed().as_secs_f64(),
    })
}

use openmls::prelude::tls_codec::Deserialize as _;

fn invite_storage(p: &Plan, r: &mut Results) -> Result<(), String> {
    let n = if p.smoke { 20 } else { 1000 };
    for (cs, pq) in [
        (
            Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
            false,
        ),
        (
            Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519,
            true,
        ),
    ] {
        invite_storage_suite(r, n, cs, pq)?;
    }
    Ok(())
}

/// The Welcome payload qpq-core enqueues for `welcome` (ADR 0111), with a 16-byte group name:
/// classic groups seal the wrapper `[1][dm][name len][name][Welcome]` to every new device's
/// hybrid key; X-Wing groups send `[0xA1][len][Welcome][nonce][AES-GCM(header)]`.
fn qpq_welcome_payload(welcome: &[u8], n: usize, pq: bool) -> Result<Vec<u8>, String> {
    let name = [b'g'; 16];
    let mut header = vec![0u8];
    header.extend_from_slice(&(name.len() as u16).to_be_bytes());
    header.extend_from_slice(&name);
    if pq {
        let mut out = vec![0xA1];
        out.extend_from_slice(&(welcome.len() as u32).to_be_bytes());
        out.extend_from_slice(welcome);
        let mut rest = vec![0u8; 12 + header.len() + 16];
        OsRng.fill_bytes(&mut rest);
        out.extend_from_slice(&rest);
        return Ok(out);
    }
    let mut wrapped = vec![1u8];
    wrapped.extend_from_slice(&header);
    wrapped.extend_from_slice(welcome);
    let keys: Vec<_> = (0..n)
        .map(|_| qpq_crypto::envelope::HybridSecretKey::generate(&mut OsRng).public_key())
        .collect();
    let refs: Vec<_> = keys.iter().collect();
    qpq_crypto::envelope::seal(&mut OsRng, &refs, &[7u8; 16], &wrapped).map_err(|e| e.to_string())
}

fn invite_storage_suite(
    r: &mut Results,
    n: usize,
    cs: Ciphersuite,
    pq: bool,
) -> Result<(), String> {
    use qpq_server::storage::sqlite::SqliteStorage;
    use qpq_server::storage::{ChannelKind, EnqueueOp, Storage};
    let BareInvite {
        commit, welcome, ..
    } = bare_invite(cs, n)?;
    let sealed = qpq_welcome_payload(&welcome, n, pq)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("qpq.db");
    let store = SqliteStorage::open(&path).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    let mut creator = 0;
    for i in 0..=n {
        let mut ik = [0u8; 32];
        let mut dk = [0u8; 32];
        OsRng.fill_bytes(&mut ik);
        OsRng.fill_bytes(&mut dk);
        let id = store
            .create_account(&format!("u{i}"), &ik, &dk, &[0u8; 192], 0)
            .map_err(|e| e.to_string())?;
        if i == 0 {
            creator = id;
        } else {
            ids.push(ik);
        }
    }
    let (channel, _) = store
        .create_channel(ChannelKind::Group, creator, &[], &[], 0)
        .map_err(|e| e.to_string())?;
    let used = |p: &std::path::Path| -> Result<f64, String> {
        let c = rusqlite::Connection::open(p).map_err(|e| e.to_string())?;
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| e.to_string())?;
        let v: i64 = c
            .query_row("SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        let ps: i64 = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        Ok((v * ps) as f64)
    };
    let before = used(&path)?;
    let devices = store.devices(creator).map_err(|e| e.to_string())?;
    let op = EnqueueOp {
        sender_account: creator,
        sender_device: devices[0].id,
        sender_device_key: devices[0].device_key,
        channel_id: channel.id,
        message_id: [7; 16],
        payload: Bytes::from(commit.clone()),
        kind: 1,
        commit_epoch: Some(0),
        add_members: ids,
        remove_members: vec![],
        welcome: Bytes::from(sealed.clone()),
        welcome_devices: vec![],
        promote_members: vec![],
        group_info: None,
        external: false,
        now_ms: 0,
        max_queue_depth: u64::MAX / 2,
        max_queue_bytes: u64::MAX / 2,
        max_share_depth: u64::MAX / 2,
        max_share_bytes: u64::MAX / 2,
    };
    store.enqueue(op).map_err(|e| e.to_string())?;
    let after = used(&path)?;
    store.close();
    let stored = after - before;
    let bare = (commit.len() + welcome.len()) as f64;
    let (suite, goal, limit, how) = if pq {
        (
            "X-Wing suite",
            "≤ 1.1×",
            1.1,
            "MLS-protected Welcome, no outer seal (ADR 0111)",
        )
    } else {
        (
            "classic suite",
            "≤ 1.3×",
            1.3,
            "hybrid-sealed Welcome: 1,176 B per recipient, 1,088 of them the ML-KEM-768 ciphertext",
        )
    };
    r.rows.push(Row {
        id: "S10".into(),
        scenario: format!("invite {n} users in one commit, {suite}: bytes the server stores"),
        unit: "B",
        qpq: stored,
        baseline: bare,
        qpq_p99: None,
        base_p99: None,
        goal: goal.into(),
        limit,
        higher_is_better: false,
        note: format!(
            "ratchet tree in the Welcome; qpq payloads: commit {} B + {how} {} B; baseline: commit {} B + Welcome {} B",
            commit.len(),
            sealed.len(),
            commit.len(),
            welcome.len()
        ),
    });
    r.extra.push((
        format!("S10 ({suite}): server bytes stored ÷ bytes of the payloads it was given ({n} recipients)"),
        stored / (commit.len() + sealed.len()) as f64 * 100.0,
        "%".into(),
    ));
    Ok(())
}

fn envelope(p: &Plan, r: &mut Results) -> Result<(), String> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    use ml_kem::{Decapsulate, KeyExport};
    use qpq_crypto::envelope::{open, seal, HybridSecretKey};
    let sk = HybridSecretKey::generate(&mut OsRng);
    let pk = sk.public_key();
    let msg = vec![0x11u8; 1024];
    let mut seed = [0u8; 64];
    OsRng.fill_bytes(&mut seed);
    let dk = ml_kem::ml_kem_768::DecapsulationKey::from_seed(seed.into());
    let ek = dk.encapsulation_key().clone();
    let ek_bytes = ek.to_bytes();
    let x_peer = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let x_peer_pub = x25519_dalek::PublicKey::from(&x_peer);
    let (mut qs, mut bs, mut qo, mut bo) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let n = if p.smoke { 5 } else { 300 };
    for round in 0..p.rounds {
        for _ in 0..n {
            let t = Instant::now();
            let env = seal(&mut OsRng, &[&pk], b"aad", &msg).map_err(|e| e.to_string())?;
            let sealed_t = t.elapsed();
            let t = Instant::now();
            let _ = open(&sk, b"aad", &env).map_err(|e| e.to_string())?;
            let open_t = t.elapsed();
            // The parts: ML-KEM encapsulation, an ephemeral X25519 key + DH, HKDF, two AEAD seals.
            let t = Instant::now();
            let mut m = [0u8; 32];
            OsRng.fill_bytes(&mut m);
            let (ct, ss_m) = ek.encapsulate_deterministic(&m.into());
            let eph = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let ss_x = eph.diffie_hellman(&x_peer_pub);
            let mut okm = [0u8; 32];
            let mut info = Vec::with_capacity(2400);
            info.extend_from_slice(&ct);
            info.extend_from_slice(&ek_bytes);
            hkdf::Hkdf::<sha2::Sha256>::new(None, &[&ss_m[..], ss_x.as_bytes()].concat())
                .expand(&info, &mut okm)
                .map_err(|e| e.to_string())?;
            let wrap = chacha20poly1305::ChaCha20Poly1305::new(&okm.into());
            let wrapped = wrap
                .encrypt(&[0u8; 12].into(), &okm[..])
                .map_err(|e| e.to_string())?;
            let body = chacha20poly1305::ChaCha20Poly1305::new(&okm.into());
            let ct_body = body
                .encrypt(&[0u8; 12].into(), &msg[..])
                .map_err(|e| e.to_string())?;
            let parts_seal = t.elapsed();
            let t = Instant::now();
            let ss2 = dk.decapsulate(&ct);
            let ss_x2 = x_peer.diffie_hellman(&x25519_dalek::PublicKey::from(&eph));
            hkdf::Hkdf::<sha2::Sha256>::new(None, &[&ss2[..], ss_x2.as_bytes()].concat())
                .expand(&info, &mut okm)
                .map_err(|e| e.to_string())?;
            let _ = wrap.decrypt(&[0u8; 12].into(), &wrapped[..]);
            let _ = body.decrypt(&[0u8; 12].into(), &ct_body[..]);
            let parts_open = t.elapsed();
            if round > 0 {
                qs.0.push(us(sealed_t));
                qo.0.push(us(open_t));
                bs.0.push(us(parts_seal));
                bo.0.push(us(parts_open));
            }
        }
    }
    r.rows.push(Row::latency(
        "C3",
        "hybrid envelope seal, 1 recipient, 1 KiB",
        &qs,
        &bs,
        1.25,
        "baseline: the sum of its parts (ML-KEM-768 encaps, X25519, HKDF, 2× ChaCha20-Poly1305)",
    ));
    r.rows.push(Row::latency(
        "C3",
        "hybrid envelope open, 1 recipient, 1 KiB",
        &qo,
        &bo,
        1.25,
        "baseline: the sum of its parts (ML-KEM-768 decaps, X25519, HKDF, 2× ChaCha20-Poly1305)",
    ));
    Ok(())
}

/// L-3: what unlocking an existing store costs with a passphrase (Argon2id t=3, p=4,
/// 64 MiB, the production parameters) and, beside it, with a raw key (no KDF). Offline:
/// nothing listens on port 9 and neither store is logged in.
fn store_unlock(p: &Plan, r: &mut Results) -> Result<(), String> {
    let n = if p.smoke { 1 } else { 7 };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = |name: &str, key: StoreKey| {
        ClientConfig::new(
            dir.path().join(name),
            key,
            "127.0.0.1:9",
            Trust::PinnedCertDer(Vec::new()),
        )
    };
    let passphrase = || StoreKey::Passphrase("correct horse battery staple".into());
    let raw = StoreKey::Raw([7; 32]);
    // Create both stores first, so every timed open reads an existing file.
    drop(Client::open(config("pass", passphrase())).map_err(|e| e.to_string())?);
    drop(Client::open(config("raw", raw.clone())).map_err(|e| e.to_string())?);
    let (mut with_kdf, mut without) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let c = Client::open(config("pass", passphrase())).map_err(|e| e.to_string())?;
        with_kdf.push(t.elapsed().as_secs_f64() * 1e3);
        drop(c);
        let t = Instant::now();
        let c = Client::open(config("raw", raw.clone())).map_err(|e| e.to_string())?;
        without.push(t.elapsed().as_secs_f64() * 1e3);
        drop(c);
    }
    for v in [&mut with_kdf, &mut without] {
        v.sort_by(f64::total_cmp);
    }
    r.extra.push((
        "L-3 store unlock with a passphrase (Argon2id t=3, p=4, 64 MiB), median".into(),
        with_kdf[n / 2],
        "ms".into(),
    ));
    r.extra.push((
        "L-3 store unlock with a raw key (no KDF), median".into(),
        without[n / 2],
        "ms".into(),
    ));
    Ok(())
}

pub(crate) fn open_client(
    dir: &std::path::Path,
    name: &str,
    server: &ChildServer,
) -> Result<Client, String> {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut config = ClientConfig::new(
        dir.join(name),
        StoreKey::Raw(key),
        server.addr.to_string(),
        Trust::PinnedCertDer(server.cert.clone()),
    );
    config.insecure_fast_kdf = true;
    Client::open(config).map_err(|e| e.to_string())
}

fn wait(c: &Client, mut pred: impl FnMut(&Event) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(e) = c
            .next_event(Duration::from_millis(200))
            .map_err(|e| e.to_string())?
        {
            if pred(&e) {
                return Ok(());
            }
        }
    }
    Err("timed out waiting for an event".into())
}

/// Registers `n` raw accounts `r{i}` through the protocol (no engine): each uploads `kps`
/// classic and X-Wing KeyPackages and a hybrid key, as qpq-core does at registration, so an
/// engine can invite them. For C2 at 1,000 members, where 1,000 engine clients (a runtime,
/// a connection and an encrypted store each) would measure the harness, not the inviter.
fn raw_invitees(server: &ChildServer, n: usize, kps: usize) -> Result<Vec<String>, String> {
    use qpq_server::testkit::{CLASSIC, PQ};
    let rt = runtime()?;
    rt.block_on(async {
        let mut names = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let batch: Vec<usize> = (i..(i + 8).min(n)).collect();
            let mut tasks = Vec::new();
            for j in batch {
                let (addr, cert) = (server.addr, server.cert.clone());
                tasks.push(tokio::spawn(async move {
                    let name = format!("r{j}");
                    let mut c = Conn::connect(addr, &cert).await?;
                    c.register(&name, "bench password")
                        .await
                        .map_err(|e| e.message)?;
                    c.login(&name, "bench password")
                        .await
                        .map_err(|e| e.message)?;
                    for suite in [CLASSIC, PQ] {
                        c.upload_key_packages(suite, kps)
                            .await
                            .map_err(|e| e.message)?;
                    }
                    let hk = qpq_crypto::envelope::HybridSecretKey::generate(&mut OsRng)
                        .public_key()
                        .to_bytes();
                    c.call::<_, v1::UploadHybridKeyResponse>(
                        method::UPLOAD_HYBRID_KEY,
                        &v1::UploadHybridKeyRequest {
                            hybrid_public_key: Bytes::from(hk),
                        },
                    )
                    .await
                    .map_err(|e| e.message)?;
                    Ok::<String, String>(name)
                }));
            }
            for t in tasks {
                names.push(t.await.map_err(|e| e.to_string())??);
            }
            i += 8;
        }
        Ok(names)
    })
}

fn client_engine(p: &Plan, r: &mut Results, c1: bool, c2: bool, db: bool) -> Result<(), String> {
    let server = ChildServer::start("serve-qpq")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // `QPQ_BENCH_C2_SIZES=100` (comma-separated) runs C2 at those group sizes only, to
    // profile one size; the report then has only those rows.
    let sizes: Vec<usize> = match std::env::var("QPQ_BENCH_C2_SIZES") {
        Ok(v) if !p.smoke => v
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("QPQ_BENCH_C2_SIZES: {e}"))
            })
            .collect::<Result<_, _>>()?,
        _ if p.smoke => vec![3],
        _ => vec![10, 100, 1000],
    };
    let sizes = &sizes[..];
    // C1 at 100 members and C2 up to 100 use engine clients.
    let users = if p.smoke {
        3
    } else if c1 || c2 {
        100
    } else {
        3
    };
    let mut clients = Vec::new();
    for i in 0..users {
        let c = open_client(dir.path(), &format!("u{i}"), &server)?;
        c.register(&format!("u{i}"), "bench password")
            .map_err(|e| format!("register u{i}: {e}"))?;
        clients.push(c);
    }
    let cs = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    // C1: send → event at a peer, against the durable floor (crate::c1).
    if c1 {
        let bare = ChildServer::start("serve-bare")?;
        let c1_sizes: &[usize] = if p.smoke { &[3] } else { &[3, 100] };
        let figs = crate::c1::measure(
            &clients,
            &server,
            &bare,
            c1_sizes,
            if p.smoke { 2 } else { 20 },
            if p.smoke { 5 } else { 200 },
        )?;
        crate::c1::rows(&figs, r);
        r.skipped.push((
            "C1 at 1000".into(),
            "needs 1,000 engine clients (store, connection, receive task each) in one process; the harness runs up to 100".into(),
        ));
    }

    // C2: the inviter's `invite` of N−1 members (create excluded), and apart from it the
    // time until the first member joined from the Welcome (from `invite`'s start).
    // Up to 100 members are engine clients; beyond, raw accounts registered through the
    // protocol (KeyPackages and hybrid keys uploaded) fill the group: the inviter's work is
    // the same, and the first joiner is an engine client either way.
    if c2 {
        let raw = if sizes.iter().any(|&n| n > users) {
            let want = sizes.iter().copied().max().unwrap_or(0) - users;
            raw_invitees(&server, want, 4)?
        } else {
            Vec::new()
        };
        for &n in sizes {
            let (mut qi, mut bi, mut qj, mut bj) = (
                Samples::default(),
                Samples::default(),
                Samples::default(),
                Samples::default(),
            );
            let mut names: Vec<String> = (1..n.min(users)).map(|i| format!("u{i}")).collect();
            names.extend(raw.iter().take(n.saturating_sub(users)).cloned());
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let rounds = if p.smoke {
                2
            } else if n >= 1000 {
                3
            } else {
                5
            };
            for round in 0..rounds {
                let conv = clients[0]
                    .create_group(&format!("c2-{n}-{round}"), false)
                    .map_err(|e| e.to_string())?;
                let t = Instant::now();
                clients[0].invite(&conv, &refs).map_err(|e| e.to_string())?;
                let invite = t.elapsed();
                wait(
                    &clients[1],
                    |e| matches!(e, Event::ConversationJoined(x) if x.id == conv),
                )?;
                let joined = t.elapsed();
                let b = bare_invite(cs, n - 1)?;
                if round > 0 {
                    qi.0.push(us(invite));
                    bi.0.push(b.add * 1e6);
                    qj.0.push(us(joined));
                    bj.0.push((b.add + b.join) * 1e6);
                }
            }
            r.rows.push(Row::latency(
                "C2",
                &format!("inviter's invite of {} (classic)", n - 1),
                &qi,
                &bi,
                1.2,
                "qpq: resolve + KeyPackages + commit + sealed Welcome + Enqueue against the server; baseline: bare openmls add_members + merge, same N, in-memory",
            ));
            r.rows.push(Row::latency(
                "C2",
                &format!("invite of {} → first member joined (classic)", n - 1),
                &qj,
                &bj,
                1.2,
                "qpq: from invite's start to ConversationJoined at the first joiner (the invite, then push, fetch, directory, envelope open, MLS join, store; the joiner starts while the inviter merges); baseline: bare openmls add_members + merge + join, same N",
            ));
        }
    }

    // The client database after N messages.
    if db {
        let n = if p.smoke { 50 } else { 10_000 };
        let dm = clients[0].create_dm("u1").map_err(|e| e.to_string())?;
        wait(
            &clients[1],
            |e| matches!(e, Event::ConversationJoined(x) if x.id == dm),
        )?;
        for i in 0..n {
            clients[0]
                .send_text(&dm, &format!("message {i:05} with some ordinary chat text"))
                .map_err(|e| e.to_string())?;
        }
        let last = format!("message {:05} with some ordinary chat text", n - 1);
        wait(
            &clients[1],
            |e| matches!(e, Event::Message(m) if m.text() == Some(last.as_str())),
        )?;
        let size: u64 = std::fs::read_dir(dir.path().join("u1"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().and_then(|e| e.metadata().ok()).map(|m| m.len()))
            .sum();
        r.extra.push((
            format!("client database (store dir) size after receiving {n} messages"),
            size as f64,
            "B".into(),
        ));
    }
    for c in &clients {
        c.shutdown();
    }
    Ok(())
}

fn idle_connections(p: &Plan, r: &mut Results) -> Result<(), String> {
    let n = if p.smoke { 50 } else { 10_000 };
    let (before, after) = idle_rss(n, true)?;
    let (bare_before, bare_after) = idle_rss(n, false)?;
    let per = |b: u64, a: u64| a.saturating_sub(b) as f64 / n as f64;
    r.extra.push((
        "M1: server RSS before the idle connections".into(),
        before as f64 / 1048576.0,
        "MiB".into(),
    ));
    r.extra.push((
        format!("M1: server RSS with {n} idle logged-in connections in FetchWait (goal < 200 MiB)"),
        after as f64 / 1048576.0,
        "MiB".into(),
    ));
    r.extra.push((
        "M1: server memory per idle connection".into(),
        per(before, after),
        "B".into(),
    ));
    r.extra.push((
        "M1: bare quinn server memory per idle connection (one request held)".into(),
        per(bare_before, bare_after),
        "B".into(),
    ));
    r.rows.push(Row {
        id: "M1".into(),
        scenario: format!("memory per idle connection, {n} connections"),
        unit: "B",
        qpq: per(before, after),
        baseline: per(bare_before, bare_after),
        qpq_p99: None,
        base_p99: None,
        goal: "≤ bare + 1 KB".into(),
        limit: 1.0 + 1024.0 / per(bare_before, bare_after).max(1.0),
        higher_is_better: false,
        note: "server RSS growth ÷ connections; qpq: logged-in clients each with a FetchWait parked; baseline: bare quinn, same transport config, each connection with one request held".into(),
    });
    Ok(())
}

/// Opens `n` connections to a fresh child server, each with one request left waiting (a
/// FetchWait on qpq, a held request on bare quinn); returns the server's RSS before and after.
fn idle_rss(n: usize, qpq: bool) -> Result<(u64, u64), String> {
    let server = ChildServer::start(if qpq { "serve-qpq" } else { "serve-bare" })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let frame = if qpq {
            let mut a = Conn::connect(server.addr, &server.cert).await?;
            a.register("idle", "pw").await.map_err(|e| e.message)?;
            a.login("idle", "pw").await.map_err(|e| e.message)?;
            let token = a.token.clone().unwrap_or_default();
            let body = qpq_proto::encode_with_token(
                &v1::FetchWaitRequest {
                    timeout_ms: 120_000,
                    ..Default::default()
                },
                &token,
            );
            qpq_proto::frame::Request {
                method: method::FETCH_WAIT,
                request_id: 1,
                payload: Bytes::from(body),
            }
        } else {
            let a = Conn::connect(server.addr, &server.cert).await?;
            a.raw(BARE_ECHO, vec![]).await;
            qpq_proto::frame::Request {
                method: BARE_HOLD,
                request_id: 1,
                payload: Bytes::new(),
            }
        }
        .encode()
        .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server.rss();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| "addr")?)
            .map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(client_config(&server.cert));
        let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..32 {
            let (endpoint, frame, held, next, addr) = (
                endpoint.clone(),
                frame.clone(),
                held.clone(),
                next.clone(),
                server.addr,
            );
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let Ok(connecting) = endpoint.connect(addr, "localhost") else {
                        continue;
                    };
                    let Ok(conn) = connecting.await else { continue };
                    let Ok((mut send, recv)) = conn.open_bi().await else {
                        continue;
                    };
                    let _ = send.write_all(&frame).await;
                    let _ = send.finish();
                    held.lock().await.push((conn, send, recv));
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = server.rss();
        let count = held.lock().await.len();
        if count < n * 9 / 10 {
            return Err(format!("only {count} of {n} connections established"));
        }
        Ok::<(u64, u64), String>((before, after))
    })
}
