//! Durability: the real `qpq-server` binary as a child process, killed with SIGKILL right
//! after acknowledging enqueues, restarted on the same data dir: every acked message is there
//! exactly once. Also: SIGTERM drains and exits 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use qpq_proto::{method, v1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_enqueues_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let mut a = server.connect().await;
    a.register("alice", "pw-alice").await.unwrap();
    a.login("alice", "pw-alice").await.unwrap();
    let mut b = server.connect().await;
    b.register("bob", "pw-bob").await.unwrap();
    b.login("bob", "pw-bob").await.unwrap();
    let ch = a.group(&[&b]).await;
    let (a_token, b_token) = (a.token.clone(), b.token.clone());

    let mut acked: HashSet<Bytes> = HashSet::new();
    let mut a = Arc::new(a);
    for cycle in 0..3 {
        // 8 concurrent senders; the kill lands while later enqueues are still in flight.
        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let a = a.clone();
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in 0..40u8 {
                    let mut req = app_message(&ch, t, &[cycle, t, i, 0xAA]);
                    req.payload = Bytes::from(
                        vec![cycle, t, i]
                            .into_iter()
                            .chain([0u8; 1021])
                            .collect::<Vec<_>>(),
                    );
                    let resp = tokio::time::timeout(
                        Duration::from_secs(5),
                        a.raw(method::ENQUEUE, a.encode(&req)),
                    )
                    .await;
                    match resp {
                        Ok(r) if r.status == qpq_proto::Status::Ok => {
                            ok.push(req.message_id.clone())
                        }
                        _ => break,
                    }
                }
                ok
            }));
        }
        // Kill while the senders are busy.
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.sigkill();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        server = ChildServer::spawn(dir.path(), &[]);
        let mut fresh = server.connect().await;
        fresh.token = a_token.clone();
        a = Arc::new(fresh);
        // The database is intact after every kill.
        let db = rusqlite::Connection::open(dir.path().join("qpq.db")).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    assert!(
        acked.len() >= 100,
        "the load produced acks before the kills ({})",
        acked.len()
    );

    b = server.connect().await;
    b.token = b_token;
    let seen: Vec<Bytes> = fetch_all_after(&b, 0)
        .await
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let unique: HashSet<Bytes> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no message is stored twice");
    let lost: Vec<_> = acked.difference(&unique).collect();
    assert!(lost.is_empty(), "{} acked messages lost", lost.len());
    server.sigkill();
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = server.connect().await;
        let h: v1::HealthResponse = c.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
        assert_eq!(h.status, "ok");
    });
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn starts_with_no_arguments_on_port_5001() {
    // Only meaningful when 5001 is free; a busy port is reported, not failed.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qpq-server"))
        .current_dir(dir.path())
        .env_remove("QPQ_LISTEN")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut outcome = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("listening") || line.contains("cannot start") {
            outcome = line;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if outcome.contains("cannot start") {
        eprintln!("port 5001 busy on this machine; skipped: {outcome}");
        return;
    }
    assert!(outcome.contains("0.0.0.0:5001"), "{outcome}");
    assert!(dir.path().join("data/qpq.db").exists());
    assert!(dir.path().join("data/server-cert.der").exists());
}
