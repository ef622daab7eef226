//! Issue 17 (security review), the group, KeyPackage and flood items: each test replays the
//! attack the review made against a real server (QUIC on loopback, a real SQLite file) and
//! asserts counts and bytes, never a latency ratio. Figures go to docs/RELIABILITY.md (S-*).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use qpq_proto::frame::Request;
use qpq_proto::{method, v1, Status};

const PW: &str = "correct horse battery staple";

async fn users(s: &TestServer, prefix: &str, n: usize) -> Vec<Conn> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (addr, cert, name) = (s.addr, s.cert_der.clone(), format!("{prefix}{i}"));
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr, &cert).await.unwrap();
            c.register(&name, PW).await.unwrap();
            c.login(&name, PW).await.unwrap();
            c
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn peek(c: &Conn) -> v1::PeekResponse {
    c.call(method::PEEK, &v1::PeekRequest::default())
        .await
        .unwrap()
}

async fn ack_all(c: &Conn) -> u64 {
    let mut removed = 0;
    loop {
        let got = c.fetch().await;
        let Some(m) = got.last() else {
            return removed;
        };
        let r: v1::AckResponse = c
            .call(
                method::ACK,
                &v1::AckRequest {
                    up_to_seq: m.seq,
                    seqs: vec![],
                },
            )
            .await
            .unwrap();
        removed += r.removed;
    }
}

/// Every queued message of `c`, page by page (without acking).
async fn queued(c: &Conn) -> Vec<v1::QueuedMessage> {
    fetch_all_after(c, 0).await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

async fn members(c: &Conn, ch: &Bytes) -> Result<v1::ListGroupMembersResponse, CallError> {
    c.call(
        method::LIST_GROUP_MEMBERS,
        &v1::ListGroupMembersRequest {
            channel_id: ch.clone(),
        },
    )
    .await
}

async fn enqueue(c: &Conn, req: &v1::EnqueueRequest) -> Result<v1::EnqueueResponse, CallError> {
    c.call(method::ENQUEUE, req).await
}

/// Item 19: one BatchEnqueue of 256 messages to a group of 10 counted as one token, so one
/// request made 2,560 queue entries. Now every message is a request against the account's
/// rate, and every queue entry (message x recipient device) is paid from the account's fan-out
/// budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_batch_enqueue_pays_for_messages_times_recipients() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_per_sec = 0.01;
        c.rate_limit_burst = 100.0;
        c.fanout_per_sec = 0.01;
        c.fanout_burst = 200.0;
    })
    .await;
    let attacker = s.user("attacker").await;
    let recipients = users(&s, "r", 10).await;
    let refs: Vec<&Conn> = recipients.iter().collect();
    let ch = attacker.group(&refs).await;
    let batch = v1::BatchEnqueueRequest {
        messages: (0..256)
            .map(|i| app_message(&ch, i as u8, b"flood"))
            .collect(),
    };
    let r: v1::BatchEnqueueResponse = attacker.call(method::BATCH_ENQUEUE, &batch).await.unwrap();
    let accepted = r.results.iter().filter(|x| x.status == 0).count();
    let refused = r
        .results
        .iter()
        .filter(|x| x.status == u32::from(Status::RateLimited.code()))
        .count();
    let mut entries = 0;
    for c in &recipients {
        entries += peek(c).await.count;
    }
    eprintln!("S-19: 1 batch of 256 to 10 devices: {accepted} accepted, {refused} RateLimited, {entries} queue entries (budget 200)");
    assert_eq!(accepted + refused, 256);
    // 200 entries of budget, 10 per message, the last one may overdraw by one message.
    assert!(accepted <= 21, "{accepted} accepted");
    assert!(entries <= 210, "{entries} queue entries");
    assert!(accepted >= 1);
    // And plain Enqueues pay the same way: the account is in debt now.
    let e = attacker.send(&ch, 1, b"more").await.unwrap_err();
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 0);
}

/// Item 20: a victim was silenced by filling its queue through a group it never chose; then
/// every group with the victim was blocked for every sender. Now one sending account holds at
/// most its share of a device's queue, and a message still reaches everyone else, naming the
/// skipped devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_a_flooded_queue_neither_silences_the_victim_nor_blocks_the_group() {
    let s = TestServer::start_with(|c| {
        c.max_queue_depth = 100;
        c.max_queue_share_percent = 25;
    })
    .await;
    let [attacker, victim, bystander, friend]: [Conn; 4] =
        users(&s, "u", 4).await.try_into().ok().unwrap();
    let flood = attacker.group(&[&victim, &bystander]).await;
    let friends = friend.group(&[&victim, &bystander]).await;
    // The attacker floods: the victim's queue takes 25 of its messages, the bystander's too.
    let mut ok = 0;
    for i in 0..60u32 {
        match attacker.send(&flood, i as u8, b"spam").await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.status, Status::RateLimited, "{e:?}");
                break;
            }
        }
    }
    assert_eq!(ok, 25, "one sender's share of a 100-entry queue");
    assert_eq!(peek(&victim).await.count, 25);
    // The bystander reads its queue; the attacker's next message reaches it and reports the
    // victim as skipped.
    ack_all(&bystander).await;
    // (Past the 1 s the server refuses a refused sender in memory.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = attacker.send(&flood, 99, b"spam").await.unwrap();
    assert_eq!(r.undelivered, vec![victim.device_key()]);
    assert_eq!(peek(&victim).await.count, 25);
    // Everyone else still reaches the victim, in the flooded group and elsewhere.
    let r = bystander
        .send(&flood, 1, b"hello from a member")
        .await
        .unwrap();
    assert!(r.undelivered.is_empty());
    let r = friend
        .send(&friends, 1, b"hello from a friend")
        .await
        .unwrap();
    assert!(r.undelivered.is_empty());
    for i in 0..20u8 {
        friend.send(&friends, i, b"more").await.unwrap();
    }
    let got = queued(&victim).await;
    let from_others = got
        .iter()
        .filter(|m| m.sender_device != attacker.device_key())
        .count();
    eprintln!(
        "S-20: victim queue {} (attacker {}), from others {from_others} of 22",
        got.len(),
        got.len() - from_others
    );
    assert_eq!(from_others, 22);
    assert_eq!(got.len() - from_others, 25);
}

/// Item 21: 180 MiB were queued for one device in 1.1 s and 5 accounts wrote 5.5 GB in 30 s.
/// Now a device's queue holds at most `max_queue_bytes`, an account writes at most its byte
/// budget, and past a store-size watermark writes are refused cleanly (Unavailable) while
/// reads and acks go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_bytes_are_capped_per_device_per_account_and_globally() {
    const MIB: usize = 1024 * 1024;
    // (a) Per-device bytes.
    let s = TestServer::start_with(|c| {
        c.max_queue_bytes = 4 * MIB as u64;
        c.max_queue_share_percent = 100;
    })
    .await;
    let [a, b]: [Conn; 2] = users(&s, "a", 2).await.try_into().ok().unwrap();
    let ch = a.group(&[&b]).await;
    let big = vec![0x42u8; MIB - 1024];
    let mut accepted = 0;
    for i in 0..20u8 {
        match a.send(&ch, i, &big).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.status, Status::RateLimited);
                break;
            }
        }
    }
    let bytes: usize = queued(&b).await.iter().map(|m| m.payload.len()).sum();
    eprintln!("S-21a: {accepted} messages of 1 MiB queued for one device, {bytes} B (cap 4 MiB)");
    assert_eq!(accepted, 4);
    assert!(bytes <= 4 * MIB);
    ack_all(&b).await;
    a.send(&ch, 50, &big).await.unwrap();
    s.stop().await;

    // (b) Per-account write budget.
    let s = TestServer::start_with(|c| {
        c.write_bytes_per_sec = 1.0;
        c.write_bytes_burst = 8.0 * MIB as f64;
    })
    .await;
    let [a, b]: [Conn; 2] = users(&s, "b", 2).await.try_into().ok().unwrap();
    let ch = a.group(&[&b]).await;
    let mut written = 0;
    for i in 0..30u8 {
        match a.send(&ch, i, &big).await {
            Ok(_) => written += big.len(),
            Err(e) => {
                assert_eq!(e.status, Status::RateLimited);
                assert!(e.message.contains("bytes"), "{}", e.message);
                break;
            }
        }
    }
    eprintln!("S-21b: one account wrote {written} B against a budget of 8 MiB");
    assert!((7 * MIB..=8 * MIB).contains(&written));
    // Another account is not affected.
    b.send(&ch, 1, &big).await.unwrap();
    s.stop().await;

    // (c) Store watermark: writes refused cleanly, reads and acks go on.
    let dir = tempfile::tempdir().unwrap();
    let probe = TestServer::start_with(|c| c.data_dir = dir.path().to_path_buf()).await;
    let base = std::fs::metadata(dir.path().join("qpq.db")).unwrap().len()
        + std::fs::metadata(dir.path().join("qpq.db-wal")).map_or(0, |m| m.len());
    probe.stop().await;
    let s = TestServer::start_with(|c| {
        c.data_dir = dir.path().to_path_buf();
        c.max_store_bytes = base + 6 * MIB as u64;
    })
    .await;
    let [a, b]: [Conn; 2] = users(&s, "c", 2).await.try_into().ok().unwrap();
    let ch = a.group(&[&b]).await;
    let chunk = vec![7u8; 256 * 1024];
    let mut refused = None;
    let mut stored = 0;
    for i in 0..200u32 {
        match a.send(&ch, i as u8, &chunk).await {
            Ok(_) => stored += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = refused.expect("the watermark refused a write");
    assert_eq!(e.status, Status::Unavailable, "{e:?}");
    assert!(e.retry_after_ms > 0);
    eprintln!(
        "S-21c: {stored} messages of 256 KiB stored, then Unavailable: {}",
        e.message
    );
    let h: v1::HealthResponse = b.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(h.status, "ok");
    assert_eq!(queued(&b).await.len(), stored);
    assert_eq!(ack_all(&b).await, stored as u64);
    let db = s.db_path();
    s.stop().await;
    assert_eq!(integrity_check(&db), "ok");
}

/// A client configuration with tiny receive windows (it reads nothing, so the server's
/// responses stay with the server) and, optionally, no push streams granted.
fn stingy_client(cert: &[u8], uni: u32) -> quinn::ClientConfig {
    let mut cc = client_config(cert);
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(uni.into());
    t.stream_receive_window(8_192u32.into());
    t.receive_window(16_384u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    cc.transport_config(Arc::new(t));
    cc
}

async fn stingy_user(s: &TestServer, name: &str, uni: u32) -> Conn {
    let mut c = Conn::connect_with(
        "127.0.0.1:0".parse().unwrap(),
        s.addr,
        stingy_client(&s.cert_der, uni),
    )
    .await
    .unwrap();
    c.register(name, PW).await.unwrap();
    c.login(name, PW).await.unwrap();
    c
}

/// Item 24: 18 connections that never read their responses pinned +1,959 MiB for ≥ 115 s. Now
/// a connection's responses hold at most 1 MiB of buffer at once, and a response the client
/// does not take within the write deadline is dropped (stream reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_unread_responses_buffer_at_most_1_mib_and_expire_at_the_write_deadline() {
    const MIB: usize = 1024 * 1024;
    let s = TestServer::start_with(|c| c.write_deadline_ms = 2_000).await;
    let sender = s.user("sender").await;
    let reader = stingy_user(&s, "reader", 16).await;
    let ch = sender.group(&[&reader]).await;
    for i in 0..12u8 {
        sender.send(&ch, i, &vec![i; 900 * 1024]).await.unwrap();
    }
    // 3 connections of the reader's token, 16 Fetches each, none read.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::connect_with(
            "127.0.0.1:0".parse().unwrap(),
            s.addr,
            stingy_client(&s.cert_der, 16),
        )
        .await
        .unwrap();
        c.token = reader.token.clone();
        conns.push(c);
    }
    let mut streams = Vec::new();
    for c in &conns {
        for _ in 0..16 {
            let (mut send, recv) = c.conn.open_bi().await.unwrap();
            let f = Request {
                method: method::FETCH,
                request_id: 1,
                payload: Bytes::from(c.encode(&v1::FetchRequest::default())),
            };
            send.write_all(&f.encode().unwrap()).await.unwrap();
            send.finish().unwrap();
            streams.push((send, recv));
        }
    }
    let svc = s.service.clone();
    let mut peak = 0;
    let honest = s.user("honest").await;
    let t0 = Instant::now();
    let mut honest_ok = 0;
    while t0.elapsed() < Duration::from_millis(1_500) {
        peak = peak.max(svc.response_bytes_buffered.load(Ordering::Relaxed));
        let t = Instant::now();
        let h: Result<v1::HealthResponse, _> =
            honest.call(method::HEALTH, &v1::HealthRequest {}).await;
        if h.is_ok() && t.elapsed() < Duration::from_secs(1) {
            honest_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the write deadline every held response is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.response_bytes_buffered.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "responses still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped = svc.metrics.write_deadline_total.load(Ordering::Relaxed);
    eprintln!("S-24: 48 unread Fetches of ~900 KiB on 3 connections: peak buffered {peak} B (cap 3 x 1 MiB, plus the honest client's), {dropped} dropped at the 2 s write deadline; honest health calls served within 1 s: {honest_ok}");
    // The gauge is server-wide: the honest client's small responses count in it too.
    assert!(peak <= 3 * MIB + 16 * 1024, "peak {peak}");
    assert!(peak > 0);
    assert!(dropped >= 3, "{dropped}");
    assert!(honest_ok > 0);
    drop(streams);
}

/// Item 24 (pages): a Fetch page was up to 3.5 MiB, computed and held past the 1 MiB a
/// connection may buffer (R-2). Now every page fits 1 MiB encoded and says whether more is
/// queued; following `more` drains a 2.9 MiB queue exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_fetch_pages_fit_1_mib_and_say_when_more_is_queued() {
    const MIB: usize = 1024 * 1024;
    let s = TestServer::start().await;
    let sender = s.user("sender").await;
    let reader = s.user("reader").await;
    let ch = sender.group(&[&reader]).await;
    // 40 messages of 60..99 KiB: about 3.1 MiB queued for the reader.
    let sizes: Vec<usize> = (0..40).map(|i| (60 + i) * 1024).collect();
    for (i, n) in sizes.iter().enumerate() {
        sender.send(&ch, i as u8, &vec![i as u8; *n]).await.unwrap();
    }
    let mut after = 0;
    let mut got = Vec::new();
    let mut pages = Vec::new();
    loop {
        let r: v1::FetchResponse = reader
            .call(
                method::FETCH,
                &v1::FetchRequest {
                    after_seq: after,
                    limit: 1000,
                    channel_id: Bytes::new(),
                },
            )
            .await
            .unwrap();
        let encoded = qpq_proto::Message::encoded_len(&r) + qpq_proto::frame::RESPONSE_HEADER_LEN;
        assert!(encoded <= MIB, "page of {encoded} B");
        pages.push((r.messages.len(), encoded, r.more));
        let Some(last) = r.messages.last() else {
            assert!(!r.more, "an empty page says nothing is left");
            break;
        };
        after = last.seq;
        got.extend(r.messages);
        if !r.more {
            break;
        }
    }
    eprintln!("S-24 pages: 40 messages, {} B of payload, in pages (messages, encoded bytes, more): {pages:?}", sizes.iter().sum::<usize>());
    assert!(pages.len() >= 3, "{pages:?}");
    assert!(pages[..pages.len() - 1].iter().all(|p| p.2), "{pages:?}");
    assert_eq!(got.len(), sizes.len(), "nothing lost or duplicated");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload.len(), sizes[i]);
        assert_eq!(m.payload[0], i as u8);
    }
    let seqs: std::collections::BTreeSet<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs.len(), got.len());
    // A count limit also reports more.
    let r: v1::FetchResponse = reader
        .call(
            method::FETCH,
            &v1::FetchRequest {
                after_seq: 0,
                limit: 2,
                channel_id: Bytes::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.messages.len(), 2);
    assert!(r.more);
}

/// Item 25: pushes to connections that grant no push streams piled up, copied per
/// connection (+296 MiB from one device). Now they are shared, capped per connection and
/// dropped when the connection takes no push stream; the queue keeps every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_undeliverable_pushes_are_bounded_shared_and_dropped() {
    let s = TestServer::start_with(|c| c.write_deadline_ms = 1_000).await;
    let sender = s.user("sender").await;
    let victim = stingy_user(&s, "victim", 0).await;
    let mut extra = Vec::new();
    for _ in 0..4 {
        let mut c = Conn::connect_with(
            "127.0.0.1:0".parse().unwrap(),
            s.addr,
            stingy_client(&s.cert_der, 0),
        )
        .await
        .unwrap();
        c.token = victim.token.clone();
        let _ = peek(&c).await; // registers the connection for pushes
        extra.push(c);
    }
    let _ = peek(&victim).await;
    let ch = sender.group(&[&victim]).await;
    let svc = s.service.clone();
    let mut peak = 0;
    for i in 0..200u32 {
        sender
            .send(&ch, i as u8, &vec![1u8; 60 * 1024])
            .await
            .unwrap();
        peak = peak.max(svc.push_bytes_queued.load(Ordering::Relaxed));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.push_bytes_queued.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "pushes still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped = svc.metrics.push_dropped_total.load(Ordering::Relaxed);
    eprintln!("S-25: 200 pushes of 60 KiB to 5 connections granting no push stream: peak queued {peak} B (cap 5 x 256 KiB), {dropped} dropped");
    assert!(peak <= 5 * 256 * 1024, "peak {peak}");
    assert!(dropped > 900, "{dropped}");
    assert_eq!(queued(&victim).await.len(), 200, "the queue is the truth");
}

/// Item 26: 8 connections × 16 streams each sending most of a 4 MiB frame pinned +509 MiB
/// until the read deadline. Now the payload bytes being received per connection are capped
/// (4 MiB + 64 KiB): the other streams wait, and are cut at the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s26_incomplete_frames_pin_at_most_the_connection_request_budget() {
    let s = TestServer::start_with(|c| c.read_deadline_ms = 2_000).await;
    let svc = s.service.clone();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(s.connect().await);
    }
    let mut tasks = Vec::new();
    for c in &conns {
        for _ in 0..16 {
            let conn = c.conn.clone();
            tasks.push(tokio::spawn(async move {
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    return;
                };
                let mut header = Vec::new();
                header.extend_from_slice(&method::ENQUEUE.to_be_bytes());
                header.extend_from_slice(&1u32.to_be_bytes());
                header.extend_from_slice(&(4u32 * 1024 * 1024).to_be_bytes());
                if send.write_all(&header).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 64 * 1024];
                for _ in 0..63 {
                    let w = tokio::time::timeout(Duration::from_secs(3), send.write_all(&chunk));
                    if !matches!(w.await, Ok(Ok(()))) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
                drop(recv);
            }));
        }
    }
    let honest = s.user("honest").await;
    let mut peak = 0;
    let mut honest_ok = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1_800) {
        peak = peak.max(svc.request_bytes_in_flight.load(Ordering::Relaxed));
        let t = Instant::now();
        if honest
            .call::<_, v1::HealthResponse>(method::HEALTH, &v1::HealthRequest {})
            .await
            .is_ok()
            && t.elapsed() < Duration::from_secs(1)
        {
            honest_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let budget = 4 * 1024 * 1024 + 64 * 1024;
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.request_bytes_in_flight.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "request bytes still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("S-26: 64 streams on 4 connections each sending 63 of 64 chunks of a 4 MiB frame: peak reserved {peak} B (cap 4 x {budget}); honest health calls within 1 s: {honest_ok}");
    assert!(peak <= 4 * budget, "peak {peak}");
    assert!(peak > 0);
    assert!(honest_ok > 0);
    for t in tasks {
        t.abort();
    }
}

async fn upload_chunk(
    c: &Conn,
    ch: &Bytes,
    sha: [u8; 32],
    total: u64,
    offset: u64,
    data: &[u8],
) -> Result<v1::UploadBlobResponse, CallError> {
    c.call(
        method::UPLOAD_BLOB,
        &v1::UploadBlobRequest {
            channel_id: ch.clone(),
            sha256: Bytes::copy_from_slice(&sha),
            total_size: total,
            offset,
            chunk: Bytes::copy_from_slice(data),
        },
    )
    .await
}

/// Item 27: 40 incomplete blobs (140 MiB) in 1.4 s, no quota and no garbage collection. Now
/// an account's blobs (declared sizes, complete or not) fit its quota, and incomplete uploads
/// expire (the purge job, run here with an injected clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_blob_quota_and_incomplete_uploads_expire() {
    const MIB: u64 = 1024 * 1024;
    let s = TestServer::start_with(|c| c.blob_quota_bytes = 10 * MIB).await;
    let [a, b]: [Conn; 2] = users(&s, "a", 2).await.try_into().ok().unwrap();
    let ch = a.group(&[&b]).await;
    let mut started = 0;
    let mut refusal = None;
    for i in 0..40u8 {
        match upload_chunk(&a, &ch, [i; 32], 3 * MIB + 512 * 1024, 0, &[i; 4096]).await {
            Ok(_) => started += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let e = refusal.expect("the quota refused an upload");
    assert_eq!(e.status, Status::Forbidden);
    assert!(e.message.contains("quota"), "{}", e.message);
    assert_eq!(started, 2, "2 x 3.5 MiB fit 10 MiB, a third does not");
    // Another account is not affected.
    upload_chunk(&b, &ch, [99; 32], MIB, 0, &[1; 1024])
        .await
        .unwrap();
    let db = s.db_path();
    let before_ttl = s
        .service
        .purge_expired_at(now_ms() + 23 * 3600 * 1000)
        .await
        .unwrap();
    assert_eq!(before_ttl.incomplete_blobs, 0);
    let r = s
        .service
        .purge_expired_at(now_ms() + 25 * 3600 * 1000)
        .await
        .unwrap();
    eprintln!("S-27: {started} incomplete uploads then quota refusal; purge at TTL + 1 h deleted {} incomplete blobs", r.incomplete_blobs);
    assert_eq!(r.incomplete_blobs, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM blobs"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM blob_chunks"), 0);
    upload_chunk(&a, &ch, [77; 32], 3 * MIB, 0, &[1; 1024])
        .await
        .unwrap();
}

/// Item 28 (messages and idempotency records; sessions are the other half): nothing expired.
/// Now undelivered messages older than the TTL (30 days) are purged with their idempotency
/// records, tested with an injected clock: 0 purged before the TTL, 100 % at TTL + 1 h.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_undelivered_messages_and_enqueue_ids_expire_at_the_ttl() {
    let s = TestServer::start_with(|c| {
        c.max_queue_depth = 50;
        c.max_queue_share_percent = 100;
    })
    .await;
    let [a, b]: [Conn; 2] = users(&s, "a", 2).await.try_into().ok().unwrap();
    let ch = a.group(&[&b]).await;
    let t0 = now_ms();
    for i in 0..50u8 {
        a.send(&ch, i, b"undelivered").await.unwrap();
    }
    assert_eq!(
        status_of(a.send(&ch, 60, b"full").await),
        Status::RateLimited
    );
    let db = s.db_path();
    let ttl = 30 * 24 * 3600 * 1000u64;
    let early = s
        .service
        .purge_expired_at(t0 + ttl - 3600 * 1000)
        .await
        .unwrap();
    assert_eq!(early.queue_entries, 0);
    assert_eq!(early.enqueue_ids, 0);
    assert_eq!(peek(&b).await.count, 50);
    let r = s
        .service
        .purge_expired_at(t0 + ttl + 3600 * 1000)
        .await
        .unwrap();
    eprintln!("S-28: purge at TTL - 1 h: 0; at TTL + 1 h: {r:?}");
    assert_eq!(r.queue_entries, 50);
    assert_eq!(r.payloads, 50);
    assert!(r.enqueue_ids >= 50);
    assert_eq!(peek(&b).await.count, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM queue"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM payloads"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM enqueue_ids"), 0);
    assert_eq!(
        count(&db, "SELECT sum(queue_len) + sum(queue_bytes) FROM devices"),
        0
    );
    // The counters followed: the queue takes 50 new messages again.
    for i in 0..50u8 {
        a.send(&ch, i, b"fresh").await.unwrap();
    }
}

/// Forwards datagrams from clients to `server` from its own address and drops every answer:
/// what the server sees of Initials with a forged source address (the answers go to an
/// address that never replies).
async fn forging_relay(local: &str, server: SocketAddr) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind(local).await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if from != server {
                let _ = sock.send_to(&buf[..n], server).await;
            }
        }
    });
    addr
}

/// Item 29: 20 Initial packets "from" an IP took its 20 connection slots for 30 s (the slot
/// was taken before the handshake completed, and there was no QUIC Retry). Now an address
/// that already holds a slot (or any address, under load) must answer a Retry first, so
/// forged Initials take at most one slot and the real owner of the address gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_forged_initials_do_not_lock_an_address_out() {
    let s = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut forged = Vec::new();
    for _ in 0..20 {
        let relay = forging_relay("127.0.0.2:0", s.addr).await;
        let cert = s.cert_der.clone();
        forged.push(tokio::spawn(async move {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(client_config(&cert));
            let _ = tokio::time::timeout(
                Duration::from_secs(20),
                ep.connect(relay, "localhost").unwrap(),
            )
            .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retries = s.service.metrics.quic_retry_total.load(Ordering::Relaxed);
    let mut ok = 0;
    for _ in 0..2 {
        let c = Conn::connect_from("127.0.0.2:0".parse().unwrap(), s.addr, &s.cert_der)
            .await
            .expect("the address's owner connects");
        let h: v1::HealthResponse = c.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
        assert_eq!(h.status, "ok");
        ok += 1;
    }
    eprintln!("S-29: 20 forged Initials from 127.0.0.2 (cap 3): {retries} answered with a Retry; the address's owner connected {ok} of 2 times");
    assert!(retries >= 19, "{retries}");
    for f in forged {
        f.abort();
    }
}

/// Item 16: naming an existing member's device in `welcome_devices` sent it a junk Welcome
/// instead of the commit, forking it for good. Now a Welcome goes only to devices the commit
/// adds, and every device already in the group gets the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_a_welcome_cannot_replace_the_commit_for_a_member() {
    let s = TestServer::start().await;
    let [a, b, c]: [Conn; 3] = users(&s, "m", 3).await.try_into().ok().unwrap();
    let ch = a.group(&[&b, &c]).await;
    let mut add = commit_message(&ch, 1, 0, b"add b and c");
    add.welcome = Bytes::from_static(b"welcome");
    add.welcome_devices = vec![b.device_key(), c.device_key()];
    enqueue(&a, &add).await.unwrap();
    ack_all(&b).await;
    ack_all(&c).await;
    // The insider c withholds the next commit from b with a junk Welcome.
    let mut withhold = commit_message(&ch, 2, 1, b"update");
    withhold.welcome = Bytes::from_static(b"junk");
    withhold.welcome_devices = vec![b.device_key()];
    let e = enqueue(&c, &withhold).await.unwrap_err();
    assert_eq!(e.status, Status::BadRequest, "{e:?}");
    assert!(e.message.contains("adds"), "{}", e.message);
    assert_eq!(members(&a, &ch).await.unwrap().epoch, 1, "nothing applied");
    assert!(queued(&b).await.is_empty());
    // An honest commit reaches every member.
    enqueue(&c, &commit_message(&ch, 3, 1, b"update"))
        .await
        .unwrap();
    for m in [&a, &b] {
        let got = queued(m).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, v1::MessageKind::Commit as i32);
    }
    // A device that joins later is welcomed, once.
    let mut b2 = s.connect().await;
    b2.login("m1", PW).await.unwrap();
    let mut add2 = commit_message(&ch, 4, 2, b"add b's new device");
    add2.welcome = Bytes::from_static(b"welcome b2");
    add2.welcome_devices = vec![b2.device_key()];
    enqueue(&a, &add2).await.unwrap();
    let got = queued(&b2).await;
    assert_eq!(got.last().unwrap().kind, v1::MessageKind::Welcome as i32);
    let mut again = commit_message(&ch, 5, 3, b"again");
    again.welcome = Bytes::from_static(b"junk");
    again.welcome_devices = vec![b2.device_key()];
    assert_eq!(status_of(enqueue(&a, &again).await), Status::BadRequest);
}

/// Item 17 (server half): an mls-rs client's PublicMessage commit was accepted as the epoch's
/// commit, which every qpq member then dropped, wedging the group. Now the server checks what
/// it can see without keys: a PrivateMessage of this channel's group, from the named epoch,
/// of content type commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_commits_members_cannot_process_are_refused() {
    let s = TestServer::start().await;
    let [a, b]: [Conn; 2] = users(&s, "m", 2).await.try_into().ok().unwrap();
    let ch = a.group(&[&b]).await;
    let other = Bytes::from_static(&[9u8; 16]);
    let mut public = private_message(&ch, 0, 3, b"x").to_vec();
    public[3] = 1; // wire format public_message
    let cases: Vec<(&str, Bytes)> = vec![
        ("PublicMessage", Bytes::from(public)),
        ("another group", private_message(&other, 0, 3, b"x")),
        ("another epoch", private_message(&ch, 5, 3, b"x")),
        ("application content", private_message(&ch, 0, 1, b"x")),
        ("proposal content", private_message(&ch, 0, 2, b"x")),
        ("garbage", Bytes::from_static(b"commit")),
    ];
    for (what, payload) in &cases {
        let mut req = commit_message(&ch, 1, 0, b"");
        req.payload = payload.clone();
        let e = enqueue(&a, &req).await.unwrap_err();
        assert_eq!(e.status, Status::BadRequest, "{what}: {e:?}");
    }
    assert_eq!(
        members(&a, &ch).await.unwrap().epoch,
        0,
        "the group is not wedged"
    );
    assert!(queued(&b).await.is_empty());
    let r = enqueue(&a, &commit_message(&ch, 2, 0, b"ok"))
        .await
        .unwrap();
    assert_eq!(r.epoch, 1);
    eprintln!(
        "S-17: {} malformed commits refused, epoch unchanged",
        cases.len()
    );
}

/// Item 15: a DM could be widened by a commit, and leaving a DM did not stick. Now a DM never
/// gains a member, and whoever left stays out of it: re-opening the DM gives the pair a new
/// channel (and MLS group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_a_dm_never_gains_members_and_leaving_sticks() {
    let s = TestServer::start().await;
    let [a, b, c]: [Conn; 3] = users(&s, "d", 3).await.try_into().ok().unwrap();
    let dm = |to: &Conn| v1::CreateChannelRequest {
        kind: v1::ChannelKind::Dm as i32,
        members: vec![to.identity_key()],
        metadata: Bytes::new(),
    };
    let r: v1::CreateChannelResponse = a.call(method::CREATE_CHANNEL, &dm(&b)).await.unwrap();
    let ch = r.channel_id;
    let mut first = commit_message(&ch, 1, 0, b"dm");
    first.add_members = vec![b.identity_key()];
    first.welcome = Bytes::from_static(b"welcome");
    first.welcome_devices = vec![b.device_key()];
    enqueue(&a, &first).await.unwrap();
    let mut widen = commit_message(&ch, 2, 1, b"add carol");
    widen.add_members = vec![c.identity_key()];
    widen.welcome = Bytes::from_static(b"welcome");
    assert_eq!(status_of(enqueue(&a, &widen).await), Status::Forbidden);
    assert_eq!(status_of(members(&c, &ch).await), Status::Forbidden);
    // b leaves; a can bring b back neither by a commit nor by "creating" the DM again.
    let _: v1::RemoveMemberResponse = b
        .call(
            method::REMOVE_MEMBER,
            &v1::RemoveMemberRequest {
                channel_id: ch.clone(),
                member: b.identity_key(),
            },
        )
        .await
        .unwrap();
    let mut readd = commit_message(&ch, 3, 1, b"re-add");
    readd.add_members = vec![b.identity_key()];
    readd.welcome = Bytes::from_static(b"welcome");
    assert_eq!(status_of(enqueue(&a, &readd).await), Status::Forbidden);
    // Opening the DM again gives the pair a new channel (issue 10 item 1: b's MLS group is
    // gone); the old one keeps b out.
    let again: v1::CreateChannelResponse = a.call(method::CREATE_CHANNEL, &dm(&b)).await.unwrap();
    assert_ne!(again.channel_id, ch);
    assert_eq!(
        members(&a, &again.channel_id).await.unwrap().members.len(),
        2
    );
    let names: Vec<String> = members(&a, &ch)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.username)
        .collect();
    assert_eq!(names, ["d0"], "b's leaving stuck");
    ack_all(&b).await;
    a.send(&ch, 9, b"still there?").await.unwrap();
    assert!(queued(&b).await.is_empty());
    // b opening the DM finds the pair's new channel, not the old one.
    let back: v1::CreateChannelResponse = b.call(method::CREATE_CHANNEL, &dm(&a)).await.unwrap();
    assert_eq!(back.channel_id, again.channel_id);
    assert_eq!(members(&a, &ch).await.unwrap().members.len(), 1);
}

/// Item 14: RemoveMember let any member silently remove any other (no commit, epoch
/// unchanged). Now it removes only the caller, who still gets the commit that removes it;
/// others leave only through commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_remove_member_removes_only_the_caller_who_still_gets_the_commit() {
    let s = TestServer::start().await;
    let [a, b, c]: [Conn; 3] = users(&s, "g", 3).await.try_into().ok().unwrap();
    let ch = a.group(&[&b, &c]).await;
    let remove = |who: &Conn| v1::RemoveMemberRequest {
        channel_id: ch.clone(),
        member: who.identity_key(),
    };
    assert_eq!(
        status_of(
            b.call::<_, v1::RemoveMemberResponse>(method::REMOVE_MEMBER, &remove(&c))
                .await
        ),
        Status::Forbidden
    );
    assert_eq!(members(&a, &ch).await.unwrap().members.len(), 3);
    let _: v1::RemoveMemberResponse = b.call(method::REMOVE_MEMBER, &remove(&b)).await.unwrap();
    assert_eq!(members(&a, &ch).await.unwrap().members.len(), 2);
    assert_eq!(status_of(b.send(&ch, 1, b"x").await), Status::Forbidden);
    a.send(&ch, 2, b"after b left").await.unwrap();
    assert!(queued(&b).await.is_empty(), "no application messages");
    let mut rm = commit_message(&ch, 3, 0, b"remove b");
    rm.remove_members = vec![b.identity_key()];
    enqueue(&a, &rm).await.unwrap();
    let got = queued(&b).await;
    assert_eq!(got.len(), 1, "the leaver gets the commit that removes it");
    assert_eq!(got[0].kind, v1::MessageKind::Commit as i32);
    enqueue(&a, &commit_message(&ch, 4, 1, b"next"))
        .await
        .unwrap();
    assert_eq!(queued(&b).await.len(), 1, "and nothing after it");
}

async fn fetch_kp(c: &Conn, device: &Bytes) -> Result<v1::FetchKeyPackageResponse, CallError> {
    c.call(
        method::FETCH_KEY_PACKAGE,
        &v1::FetchKeyPackageRequest {
            device_key: device.clone(),
            ciphersuite: suite_id(CLASSIC),
        },
    )
    .await
}

/// Item 13: an account's 5 devices drained 100 of 100 KeyPackages in 0.4 s, and device churn
/// drained 100 more; the victim then could not be added to any group. Now the fetch budget is
/// per requesting account (churn gains nothing) and per target; past the target's budget, or
/// with the stock empty, the victim's last-resort KeyPackage is served, never deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_key_package_drain_is_bounded_and_the_victim_stays_invitable() {
    let s = TestServer::start().await;
    let victim = s.user("victim").await;
    victim.upload_key_packages(CLASSIC, 100).await.unwrap();
    let mut spec = KeyPackageSpec::new(&victim.device, CLASSIC);
    spec.extensions = vec![openmls::prelude::Extension::LastResort(
        openmls::prelude::LastResortExtension::default(),
    )];
    let last = spec.build();
    let r: v1::UploadKeyPackageResponse = victim
        .call(
            method::UPLOAD_KEY_PACKAGE,
            &v1::UploadKeyPackageRequest {
                key_packages: vec![last.clone()],
                ciphersuite: suite_id(CLASSIC),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.stored, 100,
        "the last-resort KeyPackage is not part of the stock"
    );
    let dk = victim.device_key();
    // One attacker account with 5 devices.
    let mut devices = vec![s.user("attacker").await];
    for _ in 0..4 {
        let mut d = s.connect().await;
        d.login("attacker", PW).await.unwrap();
        devices.push(d);
    }
    let mut drained = 0;
    for d in &devices {
        for _ in 0..30 {
            if let Ok(r) = fetch_kp(d, &dk).await {
                assert!(!r.last_resort);
                drained += 1;
            }
        }
    }
    // Churn: revoke a device, log in a new one: the same account bucket.
    devices[0]
        .revoke_device(&devices[4].device_key(), PW)
        .await
        .unwrap();
    let mut fresh = s.connect().await;
    fresh.login("attacker", PW).await.unwrap();
    for _ in 0..30 {
        if fetch_kp(&fresh, &dk).await.is_ok() {
            drained += 1;
        }
    }
    eprintln!("S-13: one account with 5 devices (+1 after churn) drained {drained} of 100");
    assert_eq!(drained, 20, "one bucket of 20 per requesting account");
    // Many accounts together reach the target's budget of 40; then only the last resort.
    let others = users(&s, "o", 3).await;
    let mut ordinary = 0;
    let mut last_served = 0;
    for o in &others {
        for _ in 0..20 {
            match fetch_kp(o, &dk).await {
                Ok(r) if r.last_resort => last_served += 1,
                Ok(_) => ordinary += 1,
                Err(e) => assert_eq!(e.status, Status::RateLimited),
            }
        }
    }
    eprintln!("S-13: 3 more accounts: {ordinary} ordinary, {last_served} last-resort");
    // 40, plus what refilled meanwhile (1 a minute).
    assert!(
        (40..=41).contains(&(drained + ordinary)),
        "the target's budget"
    );
    assert!(last_served >= 19);
    // The honest contact still gets a KeyPackage (the last resort, again and again).
    let contact = s.user("contact").await;
    let a = fetch_kp(&contact, &dk).await.unwrap();
    let b = fetch_kp(&contact, &dk).await.unwrap();
    assert!(a.last_resort && b.last_resort);
    assert_eq!(a.key_package, last);
    assert_eq!(b.key_package, last);
}

async fn block(c: &Conn, who: &Conn, on: bool) {
    let key = who.identity_key();
    if on {
        let _: v1::BlockUserResponse = c
            .call(
                method::BLOCK_USER,
                &v1::BlockUserRequest { identity_key: key },
            )
            .await
            .unwrap();
    } else {
        let _: v1::UnblockUserResponse = c
            .call(
                method::UNBLOCK_USER,
                &v1::UnblockUserRequest { identity_key: key },
            )
            .await
            .unwrap();
    }
}

/// Item 18, block (ADR 0060): a blocked account's messages skip the blocker's devices and are
/// reported undelivered (the others get them); it cannot make the blocker a member, neither
/// at channel creation nor by a commit; commits still reach the blocker; unblocking restores
/// delivery. The block is stored server-side and listed by ListBlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_a_blocked_account_reaches_neither_the_blockers_queue_nor_its_groups() {
    let s = TestServer::start().await;
    let [a, b, c]: [Conn; 3] = users(&s, "k", 3).await.try_into().ok().unwrap();
    let ch = a.group(&[&b, &c]).await;
    block(&b, &a, true).await;
    let listed: v1::ListBlockedResponse = b
        .call(method::LIST_BLOCKED, &v1::ListBlockedRequest {})
        .await
        .unwrap();
    assert_eq!(listed.users.len(), 1);
    assert_eq!(listed.users[0].username, "k0");
    let r = a.send(&ch, 1, b"spam").await.unwrap();
    assert_eq!(r.undelivered, vec![b.device_key()]);
    assert!(queued(&b).await.is_empty(), "the blocker gets nothing");
    assert_eq!(queued(&c).await.len(), 1, "the others get it");
    // b's own messages still reach a (a block is one-way).
    b.send(&ch, 2, b"hi").await.unwrap();
    assert_eq!(queued(&a).await.len(), 1);
    // Commits are never skipped: the blocker stays in step with the group.
    enqueue(&a, &commit_message(&ch, 3, 0, b"c")).await.unwrap();
    assert_eq!(queued(&b).await.len(), 1);
    // a cannot make b a member: not at creation, not by a commit.
    let r: Result<v1::CreateChannelResponse, _> = a
        .call(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest {
                kind: v1::ChannelKind::Group as i32,
                members: vec![b.identity_key()],
                metadata: Bytes::new(),
            },
        )
        .await;
    assert_eq!(r.unwrap_err().status, Status::Forbidden);
    let other = a.group(&[&c]).await;
    let mut add = commit_message(&other, 4, 0, b"add");
    add.add_members = vec![b.identity_key()];
    assert_eq!(
        enqueue(&a, &add).await.unwrap_err().status,
        Status::Forbidden
    );
    // c may still add b.
    let theirs = c.group(&[&b]).await;
    assert!(!theirs.is_empty());
    block(&b, &a, false).await;
    let r = a.send(&ch, 5, b"sorry").await.unwrap();
    assert!(r.undelivered.is_empty());
    assert_eq!(queued(&b).await.len(), 2);
}
