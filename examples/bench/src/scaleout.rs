//! P1–P3 (issue 15): qpq-server nodes on one PostgreSQL database, each figure next to its
//! baseline from the same run.
//!
//! - **P1**: cross-node delivery (Enqueue through node A, answered to a FetchWait parked on
//!   node B) against same-node delivery (a FetchWait parked on A), for the same messages.
//! - **P2**: durable Enqueue throughput on PostgreSQL with cross-node wake-ups on against off,
//!   and against a bare `INSERT … RETURNING` loop on the same cluster.
//! - **P3**: two nodes against one on the same database: Fetch throughput, and the database
//!   connections and server memory the nodes hold.
//!
//! PostgreSQL is a throwaway cluster on a Unix socket, started by the same harness as the
//! server's multi-node tests. Without PostgreSQL binaries the rows are skipped, with the
//! reason. The nodes are child processes (`serve-qpq-pg`), not pinned: with two nodes they
//! share the machine's CPUs with PostgreSQL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qpq_proto::{method, v1};
use qpq_server::testkit::{app_message, Conn};

use crate::bare::ChildServer;
use crate::report::{Results, Row, Samples};
use crate::scenarios::Plan;

// The multi-node tests' PostgreSQL harness, shared rather than written twice.
#[path = "../../../server/tests/common/pg.rs"]
mod cluster;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A node of the database `url`, with cross-node wake-ups on or off.
fn node(url: &str, name: &str, wake: bool) -> Result<ChildServer, String> {
    ChildServer::start_args(
        "serve-qpq-pg",
        &[url, name, if wake { "on" } else { "off" }],
    )
}

/// A registered, logged-in protocol client of `node`.
async fn user(node: &ChildServer, name: &str) -> Result<Conn, String> {
    let mut c = Conn::connect(node.addr, &node.cert).await?;
    let pw = format!("{name} bench password");
    c.register(name, &pw).await.map_err(|e| e.message)?;
    c.login(name, &pw).await.map_err(|e| e.message)?;
    Ok(c)
}

/// A fresh database of this run's cluster, or why there is none.
fn database() -> Result<String, String> {
    std::panic::catch_unwind(cluster::database).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "PostgreSQL did not start".into())
    })
}

/// Runs P1, P2 and P3; without PostgreSQL, records them as skipped.
pub fn run(p: &Plan, r: &mut Results) -> Result<(), String> {
    let url = match database() {
        Ok(u) => u,
        Err(why) => {
            r.skipped.push((
                "P1–P3".into(),
                format!("no PostgreSQL on this machine: {why}"),
            ));
            return Ok(());
        }
    };
    p1(p, r, &url)?;
    p2(p, r)?;
    p3(p, r)?;
    Ok(())
}

/// Waits (FetchWait) for the first message after `after`; returns when it came and the
/// last sequence number seen.
async fn wait_one(c: Arc<Conn>, after: u64) -> Result<(Instant, u64), String> {
    loop {
        let resp: v1::FetchResponse = c
            .call(
                method::FETCH_WAIT,
                &v1::FetchWaitRequest {
                    after_seq: after,
                    limit: 100,
                    channel_id: Bytes::new(),
                    timeout_ms: 10_000,
                },
            )
            .await
            .map_err(|e| e.message)?;
        if let Some(last) = resp.messages.iter().map(|m| m.seq).max() {
            return Ok((Instant::now(), last));
        }
    }
}

fn p1(p: &Plan, r: &mut Results, url: &str) -> Result<(), String> {
    let a = node(url, "A", true)?;
    let b = node(url, "B", true)?;
    let rt = runtime()?;
    let (mut same, mut cross) = (Samples::default(), Samples::default());
    rt.block_on(async {
        let alice = user(&a, "alice").await?;
        let near = Arc::new(user(&a, "near").await?);
        let far = Arc::new(user(&b, "far").await?);
        let ch = alice.group(&[&near, &far]).await;
        let (mut after_near, mut after_far) = (0u64, 0u64);
        for round in 0..p.rounds {
            for _ in 0..p.per_round.min(100) {
                let wn = tokio::spawn(wait_one(near.clone(), after_near));
                let wf = tokio::spawn(wait_one(far.clone(), after_far));
                // Both waits parked before the send.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let t0 = Instant::now();
                alice
                    .send(&ch, 1, &[0x5a; 1024])
                    .await
                    .map_err(|e| e.message)?;
                let (tn, sn) = wn.await.map_err(|e| e.to_string())??;
                let (tf, sf) = wf.await.map_err(|e| e.to_string())??;
                (after_near, after_far) = (sn, sf);
                if round > 0 {
                    same.0.push(us(tn.saturating_duration_since(t0)));
                    cross.0.push(us(tf.saturating_duration_since(t0)));
                }
            }
        }
        Ok::<(), String>(())
    })?;
    let note = "the same messages, 1 KiB, each from the send's start; baseline: a FetchWait parked on the sending node";
    let mut p50 = Row::latency(
        "P1",
        "cross-node delivery: Enqueue on A → FetchWait answered at B",
        &cross,
        &same,
        (same.p50() + 1000.0) / same.p50(),
        note,
    );
    p50.goal = "p50 ≤ same node + 1 ms".into();
    r.rows.push(p50);
    let mut p99 = Row::tail(
        "P1",
        "cross-node delivery, tail",
        &cross,
        &same,
        (same.p99() + 5000.0) / same.p99(),
        note,
    );
    p99.goal = "p99 ≤ same node + 5 ms".into();
    r.rows.push(p99);
    r.extra.push((
        "P1: cross-node minus same-node delivery, p50".into(),
        cross.p50() - same.p50(),
        "µs".into(),
    ));
    Ok(())
}

/// Durable Enqueue rate through `conn` into `ch`: `total` calls, `conc` in flight.
async fn enqueue_rate(conn: Arc<Conn>, ch: Bytes, conc: usize, total: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (c, ch, next) = (conn.clone(), ch.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let req = app_message(&ch, 2, &[0x33; 1024]);
                let _ = c.raw(method::ENQUEUE, c.encode(&req)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// Bare PostgreSQL: `total` single-row `INSERT … RETURNING` commits of 1 KiB from `conc`
/// connections (autocommit, `synchronous_commit=on`), per second.
fn bare_insert_rate(url: &str, conc: usize, total: usize) -> Result<f64, String> {
    let mut admin =
        ::postgres::Client::connect(url, ::postgres::NoTls).map_err(|e| e.to_string())?;
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bare_queue (id BIGSERIAL PRIMARY KEY, device BIGINT NOT NULL, payload BYTEA NOT NULL)",
        )
        .map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..conc)
        .map(|_| {
            let (url, next) = (url.to_string(), next.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls)
                    .map_err(|e| e.to_string())?;
                let st = c
                    .prepare(
                        "INSERT INTO bare_queue (device, payload) VALUES ($1, $2) RETURNING id",
                    )
                    .map_err(|e| e.to_string())?;
                let payload = vec![0x33u8; 1024];
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    c.query_one(&st, &[&1i64, &payload])
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "insert thread panicked")??;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|x, y| x.total_cmp(y));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn p2(p: &Plan, r: &mut Results) -> Result<(), String> {
    let (url_on, url_off, url_bare) = (database()?, database()?, database()?);
    let on = node(&url_on, "on", true)?;
    let off = node(&url_off, "off", false)?;
    let rt = runtime()?;
    let conc = 16;
    let total = if p.smoke { 100 } else { 3000 };
    let runs = if p.smoke { 1 } else { 3 };
    let (mut r_on, mut r_off, mut r_bare) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        let mut setups = Vec::new();
        for n in [&on, &off] {
            let alice = user(n, "alice").await?;
            let bob = user(n, "bob").await?;
            let ch = alice.group(&[&bob]).await;
            setups.push((Arc::new(alice), ch, bob));
        }
        // Rounds alternate, so both see the same machine.
        for _ in 0..runs {
            r_on.push(enqueue_rate(setups[0].0.clone(), setups[0].1.clone(), conc, total).await);
            r_off.push(enqueue_rate(setups[1].0.clone(), setups[1].1.clone(), conc, total).await);
            let u = url_bare.clone();
            r_bare.push(
                tokio::task::spawn_blocking(move || bare_insert_rate(&u, conc, total))
                    .await
                    .map_err(|e| e.to_string())??,
            );
        }
        Ok::<(), String>(())
    })?;
    let (m_on, m_off, m_bare) = (median(&mut r_on), median(&mut r_off), median(&mut r_bare));
    let note =
        format!("{conc} concurrent streams, 1 KiB to one recipient device, median of {runs} runs");
    r.rows.push(Row {
        id: "P2".into(),
        scenario: "durable Enqueue on PostgreSQL, cross-node wake-ups on vs off".into(),
        unit: "msg/s",
        qpq: m_on,
        baseline: m_off,
        qpq_p99: None,
        base_p99: None,
        goal: "≥ 0.9×".into(),
        limit: 0.9,
        higher_is_better: true,
        note: format!("{note}; baseline: the same node with cross_node_wake off"),
    });
    r.rows.push(Row {
        id: "P2".into(),
        scenario: "durable Enqueue on PostgreSQL (wake-ups on) vs bare INSERT … RETURNING".into(),
        unit: "msg/s",
        qpq: m_on,
        baseline: m_bare,
        qpq_p99: None,
        base_p99: None,
        goal: "informative".into(),
        limit: 0.0,
        higher_is_better: true,
        note: format!(
            "{note}; baseline: {conc} connections each committing one 1 KiB INSERT … RETURNING at a time on the same cluster"
        ),
    });
    Ok(())
}

/// Fetch rate of `conns` together, `per_conn` calls in flight on each.
async fn fetch_rate(conns: &[Arc<Conn>], per_conn: usize, total: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in conns {
        for _ in 0..per_conn {
            let (c, next) = (c.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let _ = c
                        .raw(method::FETCH, c.encode(&v1::FetchRequest::default()))
                        .await;
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// Database connections open on `url`'s database.
fn backends(url: &str) -> Result<i64, String> {
    let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).map_err(|e| e.to_string())?;
    let row = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn p3(p: &Plan, r: &mut Results) -> Result<(), String> {
    let rt = runtime()?;
    let users = 8;
    let total = if p.smoke { 100 } else { 4000 };
    let runs = if p.smoke { 1 } else { 3 };
    let mut figures = Vec::new();
    for nodes in [1usize, 2] {
        let url = database()?;
        let servers: Vec<ChildServer> = (0..nodes)
            .map(|i| node(&url, &format!("n{i}"), true))
            .collect::<Result<_, _>>()?;
        let (rate, held) = rt.block_on(async {
            let mut conns = Vec::new();
            for i in 0..users {
                let n = &servers[i % nodes];
                conns.push(Arc::new(user(n, &format!("u{i}")).await?));
            }
            // Something to fetch: one message in each user's queue.
            let ch = conns[0]
                .group(&conns[1..].iter().map(|c| c.as_ref()).collect::<Vec<_>>())
                .await;
            conns[0]
                .send(&ch, 1, &[0x5a; 1024])
                .await
                .map_err(|e| e.message)?;
            let mut rates = Vec::new();
            for _ in 0..runs {
                rates.push(fetch_rate(&conns, 4, total).await);
            }
            let u = url.clone();
            let held = tokio::task::spawn_blocking(move || backends(&u))
                .await
                .map_err(|e| e.to_string())??;
            Ok::<(f64, i64), String>((median(&mut rates), held))
        })?;
        let rss: u64 = servers.iter().map(ChildServer::rss).sum();
        figures.push((nodes, rate, held, rss));
    }
    let one = figures[0];
    let two = figures[1];
    r.rows.push(Row {
        id: "P3".into(),
        scenario: "Fetch throughput, two nodes vs one on the same database".into(),
        unit: "req/s",
        qpq: two.1,
        baseline: one.1,
        qpq_p99: None,
        base_p99: None,
        goal: "informative".into(),
        limit: 0.0,
        higher_is_better: true,
        note: format!(
            "{users} users × 4 calls in flight, spread over the nodes; median of {runs} runs; on a 2-CPU machine both nodes and PostgreSQL share the CPUs, so no gain is expected here: it shows what a second node costs or saves on one machine"
        ),
    });
    for (nodes, _, held, rss) in [one, two] {
        r.extra.push((
            format!("P3: database connections held by {nodes} node(s) after the Fetch run"),
            held as f64,
            "connections".into(),
        ));
        r.extra.push((
            format!("P3: server memory (RSS, sum over {nodes} node(s)) with {users} clients"),
            rss as f64 / 1_048_576.0,
            "MiB".into(),
        ));
    }
    Ok(())
}
