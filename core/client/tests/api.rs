//! The embedding contract of `Client` (issue 16): reads that never wait on the network, the
//! send contract and its events, message bodies, subscriptions, interrupt and cursors.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use qpq_core::{Body, Delivery, ErrorCode, Event, EventListener, MessageId, MAX_BODY_BYTES};

/// Reads answer while another thread's invite is stuck on a server that does not answer:
/// the engine lock is never held across a network round trip.
#[test]
fn reads_do_not_wait_for_a_stuck_invite() {
    let s = TestServer::start();
    let (a, relay) = s.user_via_relay("alice", Duration::from_secs(10));
    let _b = s.user("bob");
    let _c = s.user("carol");
    let g = a.create_group("busy", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    for i in 0..20 {
        a.send_text(&g, &format!("m{i}")).unwrap();
    }
    relay.pause();
    let a = Arc::new(a);
    let inviter = {
        let a = a.clone();
        std::thread::spawn(move || a.invite(&g, &["carol"]))
    };
    // Let the invite reach its first (unanswered) round trip.
    std::thread::sleep(Duration::from_millis(300));
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        let convs = a.conversations().unwrap();
        let msgs = a.messages(&g, 50, None).unwrap();
        samples.push(t.elapsed());
        assert_eq!(convs.len(), 1);
        assert_eq!(msgs.len(), 20);
        assert!(a.account().is_some());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !inviter.is_finished(),
        "the invite should still be waiting on the blackholed server"
    );
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let max = *samples.last().unwrap();
    println!(
        "conversations()+messages() while an invite is stuck: n={} p50={p50:?} max={max:?}",
        samples.len()
    );
    assert!(
        max < Duration::from_secs(2),
        "a read waited {max:?} behind the stuck invite"
    );
    relay.resume();
    let _ = inviter.join().unwrap();
}

/// `send` returns once stored and queued, even with the server unreachable; the message is
/// `Queued`, then goes out on reconnect with `MessageSent`, exactly once.
#[test]
fn send_is_queued_offline_and_reported_sent_later() {
    let s = TestServer::start();
    let (a, relay) = s.user_via_relay("alice", Duration::from_secs(2));
    let b = s.user("bob");
    let g = a.create_group("later", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    relay.pause();
    let t = Instant::now();
    let id = a.send_text(&g, "while offline").unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "send waited for the network"
    );
    let m = a.messages(&g, 10, None).unwrap();
    assert_eq!(m.last().unwrap().delivery, Delivery::Queued);
    relay.resume();
    wait_until(
        &a,
        "MessageSent",
        |e| matches!(e, Event::MessageSent { id: x, .. } if *x == id),
    );
    assert_eq!(
        a.messages(&g, 10, None).unwrap().last().unwrap().delivery,
        Delivery::Sent
    );
    let got = wait_text(&b, "while offline");
    assert_eq!(got.id, id);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(texts(&b, &g), vec!["while offline"], "delivered once");
}

/// A queued message that can never go out (the sender was removed meanwhile) ends as
/// `MessageFailed` and `Failed` in history, not as an error of a later send.
#[test]
fn message_failed_when_removed_before_it_went_out() {
    let s = TestServer::start();
    let a = s.user("alice");
    let (b, relay) = s.user_via_relay("bob", Duration::from_secs(2));
    let g = a.create_group("gone", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    relay.pause();
    let id = b.send_text(&g, "too late").unwrap();
    a.remove(&g, "bob").unwrap();
    relay.resume();
    let seen = wait_until(
        &b,
        "MessageFailed",
        |e| matches!(e, Event::MessageFailed { id: x, .. } if *x == id),
    );
    let Some(Event::MessageFailed { code, .. }) = seen.last() else {
        unreachable!()
    };
    // The server refuses a non-member (Forbidden), or the removal was processed first.
    assert!(
        matches!(code, ErrorCode::Forbidden | ErrorCode::NotFound),
        "{code:?}"
    );
    let m = b.messages(&g, 10, None).unwrap();
    assert_eq!(m.last().unwrap().delivery, Delivery::Failed);
}

/// Application payloads are binary-safe (all 256 byte values), typed, and arrive as sent;
/// an empty body is refused for every kind; too large is `InvalidInput`; nothing is stored
/// by a refused send, and a retry with the same id never duplicates.
#[test]
fn bodies_binary_empty_too_large_and_idempotent() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("bytes", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let all: Vec<u8> = (0..=255u8).collect();
    let body = Body::App {
        content_type: "application/x-test".into(),
        bytes: all.clone(),
    };
    let id = a.send(&g, body.clone()).unwrap();
    let got = wait_until(
        &b,
        "app body",
        |e| matches!(e, Event::Message(m) if m.id == id),
    );
    let Some(Event::Message(m)) = got.last() else {
        unreachable!()
    };
    assert_eq!(m.body, body);
    assert_eq!(b.messages(&g, 10, None).unwrap()[0].body, body);

    for bad in [
        Body::Text(String::new()),
        Body::App {
            content_type: "x/y".into(),
            bytes: vec![],
        },
        Body::App {
            content_type: "x/y".into(),
            bytes: vec![0; MAX_BODY_BYTES + 1],
        },
        Body::Text("x".repeat(MAX_BODY_BYTES + 1)),
        Body::Delete { of: id },
    ] {
        let e = a.send(&g, bad).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput, "{e}");
    }
    assert_eq!(
        a.messages(&g, 10, None).unwrap().len(),
        1,
        "refused sends store nothing"
    );

    let mine = MessageId::from_bytes(rand::random());
    let first = a.send_with_id(&g, mine, Body::Text("once".into())).unwrap();
    let again = a.send_with_id(&g, mine, Body::Text("once".into())).unwrap();
    assert_eq!((first, again), (mine, mine));
    wait_text(&b, "once");
    std::thread::sleep(Duration::from_millis(300));
    b.sync().unwrap();
    assert_eq!(texts(&b, &g).iter().filter(|t| *t == "once").count(), 1);
}

struct Counter(AtomicUsize, Mutex<Vec<String>>);

impl EventListener for Counter {
    fn on_event(&self, event: Event) {
        if let Event::Message(m) = event {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1
                .lock()
                .unwrap()
                .push(m.text().unwrap_or("").to_string());
        }
    }
}

fn wait_count(c: &Counter, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.0.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "listener got {:?}",
            c.1.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two subscriptions both get every event; a dropped one gets nothing more.
#[test]
fn subscriptions_coexist_and_stop_on_drop() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("subs", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let one = Arc::new(Counter(AtomicUsize::new(0), Mutex::new(vec![])));
    let two = Arc::new(Counter(AtomicUsize::new(0), Mutex::new(vec![])));
    let s1 = b.subscribe(one.clone()).unwrap();
    let s2 = b.subscribe(two.clone()).unwrap();
    a.send_text(&g, "first").unwrap();
    wait_count(&one, 1);
    wait_count(&two, 1);
    drop(s1);
    a.send_text(&g, "second").unwrap();
    wait_count(&two, 2);
    s2.cancel();
    a.send_text(&g, "third").unwrap();
    // With no subscription left, events go to the queue again.
    wait_text(&b, "third");
    assert_eq!(
        one.0.load(Ordering::SeqCst),
        1,
        "{:?}",
        one.1.lock().unwrap()
    );
    assert_eq!(
        two.0.load(Ordering::SeqCst),
        2,
        "{:?}",
        two.1.lock().unwrap()
    );
}

/// `interrupt()` from another thread ends a blocked `next_event` and `wait_event_after`
/// with `Cancelled`, long before their timeout.
#[test]
fn interrupt_cancels_blocked_waits() {
    let s = TestServer::start();
    // Not logged in: background receive stays idle, so no event ends the waits early.
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(s.open(dir.path()));
    let waiters: Vec<_> = (0..2)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = if i == 0 {
                    a.next_event(Duration::from_secs(60)).map(|_| ())
                } else {
                    let c = a.event_cursor();
                    a.wait_event_after(c + 1_000_000, Duration::from_secs(60))
                        .map(|_| ())
                };
                (r, t.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    a.interrupt();
    for w in waiters {
        let (r, took) = w.join().unwrap();
        assert_eq!(r.unwrap_err().code(), ErrorCode::Cancelled);
        assert!(took < Duration::from_secs(30), "took {took:?}");
    }
    // A later wait is not affected.
    assert!(a.next_event(Duration::from_millis(10)).is_ok());
}

/// Events are numbered; a reader that stops and resumes from its last cursor sees every
/// event once, in order, whoever else consumed them.
#[test]
fn event_cursor_resumes_without_gaps() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("cursor", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let start = b.event_cursor();
    for i in 0..6 {
        a.send_text(&g, &format!("c{i}")).unwrap();
    }
    // The queue consumer takes everything; the cursor reader is independent of it.
    wait_text(&b, "c5");
    let mut cursor = start;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let r = b
            .wait_event_after(cursor, Duration::from_secs(10))
            .unwrap()
            .expect("an event");
        assert_eq!(r.cursor, cursor + 1, "no gap");
        cursor = r.cursor;
        if let Event::Message(m) = r.event {
            seen.push(m.text().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["c0", "c1", "c2", "c3", "c4", "c5"]);
}
