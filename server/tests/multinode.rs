//! Two server nodes on one PostgreSQL database (issue 15): cross-node delivery, the doorbell
//! waking a FetchWait on the other node without the sweep, a commit race across nodes, the
//! wake listener killed under load, and 64 concurrent writers through two nodes to one device.
//! The nodes are real servers (QUIC, the real service) started in-process on one database of
//! this binary's PostgreSQL cluster; the sweep is set to a minute where a test must prove the
//! doorbell did the work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use qpq_proto::{method, v1, Status};

/// A node on `url`; `sweep_ms` is its sweep interval.
async fn node(url: &str, sweep_ms: u64) -> TestServer {
    let url = url.to_string();
    TestServer::start_with(move |c| {
        c.database_url = url.into();
        c.wake_sweep_ms = sweep_ms;
        c.metrics_listen = "127.0.0.1:0".into();
        // Every test client connects from 127.0.0.1.
        c.max_connections_per_ip = 1000;
    })
    .await
}

async fn database() -> String {
    tokio::task::spawn_blocking(pg::database).await.unwrap()
}

/// FetchWait after `after` with a 20 s timeout.
async fn fetch_wait(c: &Conn, after: u64) -> v1::FetchResponse {
    c.call(
        method::FETCH_WAIT,
        &v1::FetchWaitRequest {
            after_seq: after,
            limit: 1000,
            channel_id: Bytes::new(),
            timeout_ms: 20_000,
        },
    )
    .await
    .unwrap()
}

const NO_SWEEP: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_cross_nodes_both_ways_exactly_once_in_order() {
    let url = database().await;
    let (a, b) = (node(&url, NO_SWEEP).await, node(&url, NO_SWEEP).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let ch = alice.group(&[&bob]).await;
    for i in 0..20u8 {
        alice.send(&ch, i, &[b'a', i]).await.unwrap();
        bob.send(&ch, i, &[b'b', i]).await.unwrap();
    }
    for (who, c, from) in [("bob", &bob, b'a'), ("alice", &alice, b'b')] {
        let got = fetch_all_after(c, 0).await;
        let bodies: Vec<Vec<u8>> = got.iter().map(|m| m.payload.to_vec()).collect();
        let want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![from, i]).collect();
        assert_eq!(bodies, want, "{who}: exactly once, in order");
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{who}");
    }
    a.stop().await;
    b.stop().await;
}

/// A FetchWait parked on node B returns with a message enqueued on node A, long before its
/// timeout and with the sweep a minute away: the doorbell woke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wait_on_b_is_woken_by_enqueue_on_a() {
    let url = database().await;
    let (a, b) = (node(&url, NO_SWEEP).await, node(&url, NO_SWEEP).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let ch = alice.group(&[&bob]).await;
    for round in 0..3u8 {
        let waiter = async {
            let t = Instant::now();
            let r = fetch_wait(&bob, u64::from(round)).await;
            (r, t.elapsed())
        };
        let sender = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            alice.send(&ch, round, b"wake").await.unwrap();
        };
        let ((r, took), ()) = tokio::join!(waiter, sender);
        assert_eq!(r.messages.len(), 1, "round {round}");
        assert!(
            took < Duration::from_secs(10),
            "round {round}: the FetchWait waited {took:?} (its timeout is 20 s, the sweep 60 s)"
        );
    }
    let st = b.service.wake().unwrap().stats();
    assert!(st.received.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert!(
        a.service
            .wake()
            .unwrap()
            .stats()
            .sent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    a.stop().await;
    b.stop().await;
}

/// Two members commit from the same epoch at once through two nodes: one wins, the other
/// gets Conflict, and the channel moved by exactly one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_race_across_nodes_has_one_winner() {
    let url = database().await;
    let (a, b) = (node(&url, NO_SWEEP).await, node(&url, NO_SWEEP).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let ch = alice.group(&[&bob]).await;
    for epoch in 0..5u64 {
        let (ca, cb) = (
            commit_message(&ch, 1, epoch, b"a"),
            commit_message(&ch, 2, epoch, b"b"),
        );
        let (ra, rb) = tokio::join!(
            alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &ca),
            bob.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &cb),
        );
        let wins = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "epoch {epoch}: {ra:?} / {rb:?}");
        let lost = if ra.is_ok() { rb } else { ra };
        assert_eq!(status_of(lost), Status::Conflict, "epoch {epoch}");
    }
    let next: v1::EnqueueResponse = alice
        .call(method::ENQUEUE, &commit_message(&ch, 3, 5, b"c"))
        .await
        .unwrap();
    assert_eq!(next.epoch, 6, "exactly one commit per epoch was accepted");
    a.stop().await;
    b.stop().await;
}

/// The listener connection is terminated (`pg_terminate_backend`): the node reconnects,
/// re-checks its waiters, and the doorbell wakes FetchWaits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_listener_reconnects_and_delivery_continues() {
    let url = database().await;
    let (a, b) = (node(&url, NO_SWEEP).await, node(&url, NO_SWEEP).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let ch = alice.group(&[&bob]).await;
    let stats = b.service.wake().unwrap().stats();
    let killed = terminate(&url, qpq_server::wake::LISTENER_APP).await;
    assert_eq!(killed, 2, "both nodes' listeners");
    // A FetchWait parked across the outage is answered by the resync at the latest.
    let waiter = async { fetch_wait(&bob, 0).await };
    let sender = async { alice.send(&ch, 1, b"during").await.unwrap() };
    let (r, _) = tokio::join!(waiter, sender);
    assert_eq!(r.messages.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.resyncs.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the listener did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the doorbell works again.
    let waiter = async {
        let t = Instant::now();
        (fetch_wait(&bob, 1).await, t.elapsed())
    };
    let sender = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice.send(&ch, 2, b"after").await.unwrap();
    };
    let ((r, took), ()) = tokio::join!(waiter, sender);
    assert_eq!(r.messages.len(), 1);
    assert!(took < Duration::from_secs(10), "{took:?}");
    a.stop().await;
    b.stop().await;
}

/// Terminates the database connections named `app` (all nodes'); returns how many.
async fn terminate(url: &str, app: &'static str) -> i64 {
    let u = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = ::postgres::Client::connect(&u, ::postgres::NoTls).unwrap();
        let mut n = 0;
        for r in c
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1 AND datname = current_database()",
                &[&app],
            )
            .unwrap()
        {
            n += i64::from(r.get::<_, bool>(0));
        }
        n
    })
    .await
    .unwrap()
}

/// A doorbell lost (A's doorbell connection killed, so its NOTIFY fails and is dropped): B's
/// parked FetchWait gets the message from the sweep, and B counts one sweep catch; a message
/// the doorbell delivers counts none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_doorbell_is_caught_by_the_sweep_and_counted() {
    use std::sync::atomic::Ordering::Relaxed;
    let url = database().await;
    let (a, b) = (node(&url, NO_SWEEP).await, node(&url, 400).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let ch = alice.group(&[&bob]).await;
    let catches = || b.service.metrics.wake_sweep_catches_total.load(Relaxed);
    // Delivered by the doorbell: no catch.
    let waiter = async { fetch_wait(&bob, 0).await };
    let sender = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice.send(&ch, 1, b"rung").await.unwrap();
    };
    let (r, ()) = tokio::join!(waiter, sender);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(catches(), 0, "the doorbell delivered it");
    let killed = terminate(&url, qpq_server::wake::DOORBELL_APP).await;
    assert!(killed >= 1, "A's doorbell had a connection");
    let waiter = async {
        let t = Instant::now();
        (fetch_wait(&bob, 1).await, t.elapsed())
    };
    let sender = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice.send(&ch, 2, b"lost bell").await.unwrap();
    };
    let ((r, took), ()) = tokio::join!(waiter, sender);
    assert_eq!(r.messages.len(), 1);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(catches(), 1, "the sweep caught the lost wake-up");
    let (code, metrics) = get(&b, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("qpq_wake_sweep_catches_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("qpq_node_info{{node_id=\"{}\"}} 1", b.node_id)),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

/// PostgreSQL restarts (immediate shutdown, crash recovery) under two running nodes: they
/// recover on their own. A send retried with the same message id is accepted once, the
/// listeners reconnect and re-check their waiters, and /health says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_from_a_postgres_restart() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(pg::Cluster::start)
            .await
            .unwrap(),
    );
    let c2 = cluster.clone();
    let url = tokio::task::spawn_blocking(move || pg::database_on(&c2))
        .await
        .unwrap();
    let a = node(&url, NO_SWEEP).await;
    let u = url.clone();
    let b = TestServer::start_with(move |c| {
        c.database_url = u.into();
        c.wake_sweep_ms = NO_SWEEP;
        c.metrics_listen = "127.0.0.1:0".into();
    })
    .await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let ch = alice.group(&[&bob]).await;
    alice.send(&ch, 1, b"before").await.unwrap();
    assert_eq!(health(&b).await.0, 200);

    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c2.kill();
        c2.launch();
    })
    .await
    .unwrap();

    let req = app_message(&ch, 2, b"after");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match alice
            .call::<_, v1::EnqueueResponse>(method::ENQUEUE, &req)
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let stats = b.service.wake().unwrap().stats();
    while stats.resyncs.load(std::sync::atomic::Ordering::Relaxed) == 0
        || !stats.listener_up.load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = fetch_all_after(&bob, 0).await;
    let bodies: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(bodies, vec![&b"before"[..], &b"after"[..]], "exactly once");
    let (code, body) = health(&b).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"database\":\"up\"") && body.contains("\"wake_listener\":\"up\""),
        "{body}"
    );
    // And the doorbell works again.
    let waiter = async {
        let t = Instant::now();
        (fetch_wait(&bob, got.last().unwrap().seq).await, t.elapsed())
    };
    let sender = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice.send(&ch, 3, b"later").await.unwrap();
    };
    let ((r, took), ()) = tokio::join!(waiter, sender);
    assert_eq!(r.messages.len(), 1);
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The wake-up counts are Prometheus counters, and B counted the resync and the wake-ups.
    let (code, metrics) = get(&b, "/metrics").await;
    assert_eq!(code, 200, "{metrics}");
    for name in ["wake_received_total", "wake_listener_resyncs_total"] {
        assert!(
            metrics.contains(&format!("# TYPE qpq_{name} counter")),
            "{name}: {metrics}"
        );
    }
    assert!(
        metrics.contains("# TYPE qpq_wake_listener_up gauge"),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
    tokio::task::spawn_blocking(move || cluster.kill())
        .await
        .unwrap();
}

/// `GET /health` of a node's metrics endpoint: (status code, body).
async fn health(n: &TestServer) -> (u16, String) {
    get(n, "/health").await
}

/// `GET path` of a node's metrics endpoint: (status code, body).
async fn get(n: &TestServer, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(n.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

/// 64 writers, half through each node, to one device: its queue has no gap, no duplicate and
/// keeps every writer's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_writers_through_two_nodes_to_one_device() {
    let url = database().await;
    let (a, b) = (node(&url, NO_SWEEP).await, node(&url, NO_SWEEP).await);
    let target = a.user("target").await;
    let mut writers = Vec::new();
    for w in 0..64u8 {
        let n = if w % 2 == 0 { &a } else { &b };
        let c = n.user(&format!("writer{w}")).await;
        let ch = c.group(&[&target]).await;
        writers.push((c, ch));
    }
    let per = 5u8;
    let mut tasks = Vec::new();
    for (w, (c, ch)) in writers.iter().enumerate() {
        tasks.push(async move {
            for i in 0..per {
                c.send(ch, i, &[w as u8, i]).await.unwrap();
            }
        });
    }
    futures_join_all(tasks).await;
    let got = fetch_all_after(&target, 0).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=64 * u64::from(per)).collect::<Vec<_>>());
    for w in 0..64u8 {
        let mine: Vec<u8> = got
            .iter()
            .filter(|m| m.payload[0] == w)
            .map(|m| m.payload[1])
            .collect();
        assert_eq!(mine, (0..per).collect::<Vec<_>>(), "writer {w}");
    }
    a.stop().await;
    b.stop().await;
}

/// Runs futures concurrently on this task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(fs: Vec<F>) {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut left = false;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    left = true;
                }
            }
        }
        if left {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

/// Node A (a real `qpq-server` process) is SIGKILLed while alice's enqueues stream through it:
/// alice moves to node B with the same session, and bob (on B) finds every acknowledged
/// message exactly once, in increasing sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_node_a_clients_move_to_b_nothing_lost() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let url = database().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = [
        "--database-url",
        url.as_str(),
        "--wake-sweep-ms",
        "60000",
        "--max-connections-per-ip",
        "1000",
        "--min-free-disk-bytes",
        "0",
    ];
    let mut node_a = ChildServer::spawn(da.path(), &args);
    let node_b = ChildServer::spawn(db.path(), &args);
    let mut a = node_a.connect().await;
    a.register("alice", "alice pw").await.unwrap();
    a.login("alice", "alice pw").await.unwrap();
    let mut b = node_b.connect().await;
    b.register("bob", "bob pw").await.unwrap();
    b.login("bob", "bob pw").await.unwrap();
    let ch = a.group(&[&b]).await;
    let a_token = a.token.clone();
    let a = Arc::new(a);

    let acked: Arc<Mutex<Vec<Bytes>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let send = |c: Arc<Conn>,
                t: u32,
                stop: Arc<AtomicBool>,
                acked: Arc<Mutex<Vec<Bytes>>>,
                ch: Bytes| async move {
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) && i < 200 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&t.to_be_bytes());
            id[4..8].copy_from_slice(&i.to_be_bytes());
            let mut req = app_message(&ch, 0, &[0x42; 64]);
            req.message_id = Bytes::copy_from_slice(&id);
            let r = c.raw(method::ENQUEUE, c.encode(&req)).await;
            if r.status == Status::Ok {
                acked.lock().unwrap().push(req.message_id.clone());
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        tasks.push(tokio::spawn(send(
            a.clone(),
            t,
            stop.clone(),
            acked.clone(),
            ch.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    node_a.sigkill();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "node A acknowledged messages before the kill");
    // Alice reconnects to node B with her session and goes on.
    let mut moved = node_b.connect().await;
    moved.token = a_token;
    let moved = Arc::new(moved);
    send(
        moved,
        9,
        Arc::new(AtomicBool::new(false)),
        acked.clone(),
        ch.clone(),
    )
    .await;
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), before + 200);
    let got = fetch_all_after(&b, 0).await;
    let mut seen = HashSet::new();
    for m in &got {
        assert!(seen.insert(m.message_id.clone()), "stored twice");
    }
    let lost = acked.iter().filter(|id| !seen.contains(*id)).count();
    assert_eq!(
        lost,
        0,
        "acknowledged messages lost ({} acked)",
        acked.len()
    );
}
