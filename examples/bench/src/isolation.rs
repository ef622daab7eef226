//! Isolation under attack, and the LoginStart timing channel: the latency figures the
//! reliability suite used to assert (D-8, R-3, A-6) and now only measures here. A test asserts
//! what holds on a loaded machine (every honest call served within its deadline, equal
//! response sizes, equal failures); the ratios and the distribution test belong in a report
//! that says which machine and load produced them.
//!
//! The server is the real one in a child process (`serve-qpq-limits`: the production limits
//! the scenarios exercise, a queue cap of 1,000 and a 1.5 s read deadline, as in the tests).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use qpq_crypto::opaque::client::Login;
use qpq_proto::{method, v1, Status};
use qpq_server::testkit::Conn;
use rand::rngs::OsRng;
use rand::seq::SliceRandom;

use crate::bare::ChildServer;
use crate::report::{Results, Row, Samples};
use crate::scenarios::Plan;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Two-sample Kolmogorov–Smirnov: the statistic D and its asymptotic p-value.
pub fn ks_test(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return (0.0, 1.0);
    }
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let ne = (n * m) as f64 / (n + m) as f64;
    let lambda = (ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d;
    let mut p = 0.0;
    for k in 1..=200 {
        let k = f64::from(k);
        let sign = if k as u32 % 2 == 1 { 1.0 } else { -1.0 };
        p += 2.0 * sign * (-2.0 * k * k * lambda * lambda).exp();
    }
    (d, if lambda < 0.2 { 1.0 } else { p.clamp(0.0, 1.0) })
}

async fn user(s: &ChildServer, name: &str) -> Result<Conn, String> {
    let mut c = Conn::connect(s.addr, &s.cert).await?;
    let pw = format!("{name} bench password");
    c.register(name, &pw).await.map_err(|e| e.message)?;
    c.login(name, &pw).await.map_err(|e| e.message)?;
    Ok(c)
}

async fn fetches(c: &Conn, n: usize, into: &mut Samples, keep: bool) {
    for _ in 0..n {
        let t = Instant::now();
        let _ = c.fetch().await;
        if keep {
            into.0.push(us(t.elapsed()));
        }
    }
}

/// Runs D-8, R-3 and A-6.
pub fn run(p: &Plan, r: &mut Results) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        flood(p, r).await?;
        slowloris(p, r).await?;
        login_start(p, r).await
    })
}

/// D-8: the victim's Fetch p99 (full 100-message pages) before and during a queue flood by 8
/// paced senders whose every enqueue is refused (the queue is at its cap).
async fn flood(p: &Plan, r: &mut Results) -> Result<(), String> {
    let s = ChildServer::start_limits()?;
    let victim = user(&s, "victim").await?;
    let a0 = user(&s, "attacker0").await?;
    let a1 = user(&s, "attacker1").await?;
    let ch = a0.group(&[&victim, &a1]).await;
    let mut i = 0u32;
    loop {
        match a0.send(&ch, (i % 256) as u8, &[0x55; 200]).await {
            Ok(_) => i += 1,
            Err(e) if e.status == Status::RateLimited && i >= 1000 => break,
            Err(e) if e.status == Status::RateLimited => {
                tokio::time::sleep(Duration::from_millis(e.retry_after_ms)).await;
            }
            Err(e) => return Err(e.message),
        }
    }
    let attackers = [Arc::new(a0), Arc::new(a1)];
    let per_round = if p.smoke { 20 } else { 300 };
    let (mut base, mut flooded) = (Samples::default(), Samples::default());
    let mut refused = 0u64;
    for round in 0..p.rounds {
        let keep = round > 0;
        fetches(&victim, per_round, &mut base, keep).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for k in 0..8 {
            let (a, ch, stop) = (attackers[k % 2].clone(), ch.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut limited = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = a.send(&ch, 7, &[0xAA; 200]).await {
                        if e.status == Status::RateLimited {
                            limited += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                limited
            }));
        }
        fetches(&victim, per_round, &mut flooded, keep).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            refused += t.await.map_err(|e| e.to_string())?;
        }
    }
    r.rows.push(Row::tail(
        "D-8",
        "victim Fetch (100 messages) under a queue flood",
        &flooded,
        &base,
        2.0,
        &format!("baseline: the same fetches just before the flood, each round; 8 paced attackers, {refused} enqueues refused"),
    ));
    Ok(())
}

/// an honest client's Fetch p99 before and during a slowloris attack (100 connections ×
/// 16 streams trickling one byte per second, cut at the 1.5 s read deadline).
async fn slowloris(p: &Plan, r: &mut Results) -> Result<(), String> {
    let s = ChildServer::start_limits()?;
    let honest = user(&s, "honest").await?;
    let per_round = if p.smoke { 20 } else { 300 };
    let (conns, streams) = if p.smoke { (10, 4) } else { (100, 16) };
    let (mut base, mut attacked) = (Samples::default(), Samples::default());
    let rounds = p.rounds.min(4);
    for round in 0..rounds {
        let keep = round > 0;
        fetches(&honest, per_round, &mut base, keep).await;
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let mut attackers = Vec::new();
        for _ in 0..conns {
            attackers.push(Arc::new(Conn::connect(s.addr, &s.cert).await?));
        }
        let mut tasks = Vec::new();
        for c in &attackers {
            for _ in 0..streams {
                let (c, stop, opened) = (c.clone(), stop.clone(), opened.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((mut send, mut recv)) = c.conn.open_bi().await else {
                            break;
                        };
                        opened.fetch_add(1, Ordering::Relaxed);
                        let trickle = tokio::spawn(async move {
                            for byte in [0u8, 200, 0, 0, 0, 1, 0, 0, 0, 64] {
                                if send.write_all(&[byte]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        });
                        let _ = qpq_proto::frame::read_response(
                            &mut recv,
                            1024,
                            Duration::from_secs(10),
                        )
                        .await;
                        trickle.abort();
                    }
                }));
            }
        }
        let t0 = Instant::now();
        while opened.load(Ordering::Relaxed) < conns * streams {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("slowloris streams did not open".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fetches(&honest, per_round, &mut attacked, keep).await;
        stop.store(true, Ordering::Relaxed);
        for c in &attackers {
            c.conn.close(0u32.into(), b"done");
        }
        for t in tasks {
            let _ = t.await;
        }
    }
    r.rows.push(Row::tail(
        "R-3",
        "honest Fetch (empty queue) under slowloris",
        &attacked,
        &base,
        2.0,
        &format!(
            "baseline: the same fetches just before the attack, each round; {conns} connections × {streams} trickling streams; {rounds} rounds, the first discarded"
        ),
    ));
    Ok(())
}

/// LoginStart latency for a registered and an unregistered username, interleaved in random
/// order on one connection: the median difference and a two-sample KS test.
async fn login_start(p: &Plan, r: &mut Results) -> Result<(), String> {
    let s = ChildServer::start_limits()?;
    let _alice = user(&s, "alice").await?;
    let c = Conn::connect(s.addr, &s.cert).await?;
    let n = if p.smoke { 50 } else { 1000 };
    let mut order: Vec<bool> = (0..2 * n).map(|i| i % 2 == 0).collect();
    order.shuffle(&mut OsRng);
    let mut reqs = Vec::new();
    for &registered in &order {
        let (_, ke1) = Login::start(&mut OsRng, b"some password").map_err(|e| e.to_string())?;
        reqs.push(
            v1::OpaqueLoginStartRequest {
                username: if registered { "alice" } else { "mallory" }.into(),
                ke1: Bytes::from(ke1),
            }
            .encode_to_vec(),
        );
    }
    // Warm-up.
    for req in reqs.iter().take(100) {
        c.raw(method::OPAQUE_LOGIN_START, req.clone()).await;
    }
    let (mut reg, mut unreg) = (Samples::default(), Samples::default());
    for (req, registered) in reqs.into_iter().zip(order) {
        let t = Instant::now();
        let resp = c.raw(method::OPAQUE_LOGIN_START, req).await;
        let dt = us(t.elapsed());
        if resp.status != Status::Ok {
            return Err(format!("LoginStart answered {:?}", resp.status));
        }
        if registered { &mut reg } else { &mut unreg }.0.push(dt);
    }
    let (_, ks_p) = ks_test(&reg.0, &unreg.0);
    r.extra.push((
        format!("A-6: LoginStart median, registered − unregistered username ({n} each, interleaved; goal |diff| < 1,000 µs)"),
        reg.p50() - unreg.p50(),
        "µs".into(),
    ));
    r.extra.push((
        "A-6: two-sample Kolmogorov–Smirnov p of the same latencies (goal > 0.01: not told apart)"
            .into(),
        ks_p,
        "p".into(),
    ));
    Ok(())
}
