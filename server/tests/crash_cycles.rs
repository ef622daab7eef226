//! D-1: the real `qpq-server` binary is SIGKILLed at random moments under about 200 msg/s of
//! enqueues, then restarted on the same data dir, cycle after cycle. Pass: 0 acknowledged
//! messages lost; every acked message fetched exactly once; `PRAGMA integrity_check` = ok after
//! every kill; sequence numbers strictly increasing across restarts. 100 cycles in the suite,
//! 1,000 with `QPQ_LONG=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use qpq_proto::{method, v1, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_sigkill_under_load_loses_no_acknowledged_message() {
    let cycles = if std::env::var_os("QPQ_LONG").is_some() {
        1000
    } else {
        100
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("qpq.db");
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let mut a = server.connect().await;
    a.register("alice", "alice pw").await.unwrap();
    a.login("alice", "alice pw").await.unwrap();
    let mut b = server.connect().await;
    b.register("bob", "bob pw").await.unwrap();
    b.login("bob", "bob pw").await.unwrap();
    let ch = a.group(&[&b]).await;
    let (a_token, b_token) = (a.token.clone(), b.token.clone());
    drop((a, b));

    let acked: Arc<Mutex<Vec<Bytes>>> = Arc::new(Mutex::new(Vec::new()));
    let mut seen: HashSet<Bytes> = HashSet::new();
    let mut last_seq = 0u64;
    for cycle in 0..cycles as u32 {
        let mut sender = server.connect().await;
        sender.token = a_token.clone();
        let sender = Arc::new(sender);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..4u32 {
            let (sender, stop, acked, ch) =
                (sender.clone(), stop.clone(), acked.clone(), ch.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let mut id = [0u8; 16];
                    id[..4].copy_from_slice(&cycle.to_be_bytes());
                    id[4..8].copy_from_slice(&t.to_be_bytes());
                    id[8..12].copy_from_slice(&i.to_be_bytes());
                    let mut req = app_message(&ch, 0, &[0x42; 256]);
                    req.message_id = Bytes::copy_from_slice(&id);
                    let r = sender.raw(method::ENQUEUE, sender.encode(&req)).await;
                    if r.status == Status::Ok {
                        acked.lock().unwrap().push(req.message_id.clone());
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        // Kill at a random moment, while enqueues are in flight.
        tokio::time::sleep(Duration::from_millis(u64::from(
            rand::random::<u16>() % 300,
        )))
        .await;
        server.sigkill();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            // Calls cut by the kill never return an ack; they are not waited for.
            t.abort();
            let _ = t.await;
        }
        sender.conn.close(0u32.into(), b"server killed");
        assert_eq!(
            integrity_check(&db),
            "ok",
            "cycle {cycle}: integrity_check after the kill"
        );

        server = ChildServer::spawn(dir.path(), &[]);
        let mut reader = server.connect().await;
        reader.token = b_token.clone();
        for m in fetch_all_after(&reader, last_seq).await {
            last_seq = m.seq;
            assert!(
                seen.insert(m.message_id.clone()),
                "cycle {cycle}: a message was stored twice"
            );
        }
        let _: v1::AckResponse = reader
            .call(
                method::ACK,
                &v1::AckRequest {
                    up_to_seq: last_seq,
                    seqs: vec![],
                },
            )
            .await
            .unwrap();
        let lost = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|id| !seen.contains(*id))
            .count();
        assert_eq!(lost, 0, "cycle {cycle}: acknowledged messages lost");
    }
    let total = acked.lock().unwrap().len();
    assert!(
        total > cycles * 5,
        "the load produced acks before the kills ({total})"
    );
    eprintln!("D-1: {cycles} kill cycles, {total} acknowledged messages, 0 lost, 0 duplicated");
}
