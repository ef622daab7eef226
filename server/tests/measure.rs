//! A quick loopback measurement (not a benchmark and not a test: ignored, prints figures).
//! `cargo test -p qpq-server --release --test measure -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use qpq_proto::{method, v1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run on purpose"]
async fn measure_enqueue_throughput_and_fetch_latency() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_per_sec = 1e9;
        c.rate_limit_burst = 1e9;
        c.max_queue_depth = 1_000_000;
    })
    .await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    let payload = vec![0x5a; 1024];

    // p50 Enqueue -> Fetch: one enqueue, then the recipient's fetch, then ack; sequential.
    let mut lat = Vec::new();
    for i in 0..500u32 {
        let t0 = Instant::now();
        a.send(&ch, (i % 250) as u8, &payload).await.unwrap();
        let got = b.fetch().await;
        lat.push(t0.elapsed());
        let last = got.last().unwrap().seq;
        let _: v1::AckResponse = b
            .call(
                method::ACK,
                &v1::AckRequest {
                    up_to_seq: last,
                    seqs: vec![],
                },
            )
            .await
            .unwrap();
    }
    lat.sort();
    println!(
        "enqueue->fetch p50 {:?} p99 {:?} (n=500, 1 KiB)",
        lat[250], lat[495]
    );

    // Throughput: 4 connections x 16 concurrent streams, durable enqueues.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = s.connect().await;
        c.token = a.token.clone();
        conns.push(Arc::new(c));
    }
    let total = 20_000usize;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (k, c) in conns.iter().enumerate() {
        for j in 0..16usize {
            let (c, ch, payload) = (c.clone(), ch.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..total / 64 {
                    let id = ((k * 16 + j) * 1000 + i) as u32;
                    let mut req = app_message(&ch, 0, &payload);
                    let mut mid = [0u8; 16];
                    mid[..4].copy_from_slice(&id.to_be_bytes());
                    mid[4] = 0xee;
                    req.message_id = bytes::Bytes::copy_from_slice(&mid);
                    let _: v1::EnqueueResponse = c.call(method::ENQUEUE, &req).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = t0.elapsed();
    println!(
        "durable enqueue throughput: {:.0} msg/s ({} msgs, 64 concurrent streams, {:?})",
        total as f64 / el.as_secs_f64(),
        total,
        el
    );
    let _ = Duration::ZERO;
}
