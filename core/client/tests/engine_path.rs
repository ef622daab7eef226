//! The engine's send and receive path (issue 14 part 2): wake-ups, calls, group loads and
//! store commits per message, counted through the test hooks (never timed).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use common::*;
use qpq_core::{Client, ConversationId};
use qpq_proto::method;

fn group_of_three(s: &TestServer) -> (User, User, User, ConversationId) {
    let a = s.user("alice");
    let b = s.user("bob");
    let c = s.user("carol");
    let g = a.create_group("m", false).unwrap();
    a.invite(&g, &["bob", "carol"]).unwrap();
    wait_joined(&b, &g);
    wait_joined(&c, &g);
    (a, b, c, g)
}

fn calls(c: &Client, m: u16) -> u64 {
    c.debug_counters()
        .unwrap()
        .calls
        .get(&m)
        .copied()
        .unwrap_or(0)
}

/// The ~1 s (up to 10 s) stalls of B1: every `send` woke the sender's receive loop, which
/// dropped its FetchWait and issued a new one. The server keeps a dropped FetchWait parked
/// until its timeout, holding one of the connection's 16 streams, so after 16 sends every
/// call waited for a parked FetchWait to time out. Now one FetchWait stays outstanding
/// across sends, and a send only flushes the outbox (no Fetch).
#[test]
fn sends_keep_one_fetch_wait_and_fetch_nothing() {
    let s = TestServer::start();
    let (a, b, _c, g) = group_of_three(&s);
    let n = 40u64;
    let (fw0, f0) = (calls(&a, method::FETCH_WAIT), calls(&a, method::FETCH));
    let (bfetch0, back0) = (calls(&b, method::FETCH), calls(&b, method::ACK));
    for i in 0..n {
        let text = format!("m{i}");
        a.send_text(&g, &text).unwrap();
        wait_text(&b, &text);
    }
    let fetch_waits = calls(&a, method::FETCH_WAIT) - fw0;
    let fetches = calls(&a, method::FETCH) - f0;
    println!("sender over {n} sends: {fetch_waits} FetchWait, {fetches} Fetch");
    // Each FetchWait lasts up to 10 s; the sends take far less than 10 s each.
    assert!(
        fetch_waits <= 4 + n / 10,
        "{fetch_waits} FetchWaits for {n} sends: a send cancels the long poll"
    );
    assert!(fetches <= 2, "{fetches} Fetches for {n} sends");
    // The receiver takes the message from the push (or its FetchWait), not from a Fetch.
    let bob_fetches = calls(&b, method::FETCH) - bfetch0;
    let bob_acks = calls(&b, method::ACK) - back0;
    println!("receiver over {n} messages: {bob_fetches} Fetch, {bob_acks} Ack");
    assert!(
        bob_fetches <= n / 10,
        "{bob_fetches} Fetches for {n} pushed messages"
    );
}

/// Acks are batched: a burst of 100 messages is acked in a few Acks, not 100.
#[test]
fn receiver_acks_a_burst_in_a_few_acks() {
    let s = TestServer::start();
    let (a, b, _c, g) = group_of_three(&s);
    let back0 = calls(&b, method::ACK);
    for i in 0..100 {
        a.send_text(&g, &format!("burst {i}")).unwrap();
    }
    wait_text(&b, "burst 99");
    // The last Ack goes out within the Ack delay (1 s): wait until the count settles.
    let mut last = calls(&b, method::ACK);
    loop {
        std::thread::sleep(Duration::from_millis(2500));
        let now = calls(&b, method::ACK);
        if now == last {
            break;
        }
        last = now;
    }
    let acks = calls(&b, method::ACK) - back0;
    println!("100 messages acked in {acks} Acks");
    assert!(acks <= 20, "{acks} Acks for 100 messages");
    // Nothing is processed twice after the batched Acks.
    assert_eq!(
        texts(&b, &g)
            .iter()
            .filter(|t| t.starts_with("burst"))
            .count(),
        100
    );
}

/// Per message, the sender makes one store commit (the send: message, outbox entry and
/// ciphertext together; the bookkeeping after the server's Ok joins a later transaction),
/// the receiver one (the message with its sequence number), and neither loads the group
/// from the store again: it stays in memory. Before: 3 commits on the sender, 3 group loads
/// on the sender and 1 on each receiver per message.
#[test]
fn one_commit_per_send_and_no_group_load_per_message() {
    let s = TestServer::start();
    let (a, b, _c, g) = group_of_three(&s);
    let n = 40u64;
    // Warm: the first message loads the group once on each side.
    a.send_text(&g, "warm").unwrap();
    wait_text(&b, "warm");
    let (a0, b0) = (a.debug_counters().unwrap(), b.debug_counters().unwrap());
    let mut ids = Vec::new();
    for i in 0..n {
        let text = format!("c{i}");
        ids.push(a.send_text(&g, &text).unwrap());
        wait_text(&b, &text);
    }
    let (a1, b1) = (a.debug_counters().unwrap(), b.debug_counters().unwrap());
    let sender_commits = a1.commits - a0.commits;
    let receiver_commits = b1.commits - b0.commits;
    let sender_loads = a1.group_loads - a0.group_loads;
    let receiver_loads = b1.group_loads - b0.group_loads;
    println!(
        "{n} messages: sender {sender_commits} commits, {sender_loads} group loads; \
         receiver {receiver_commits} commits, {receiver_loads} group loads"
    );
    // One per send, plus at most one bookkeeping commit per second of idling (ACK_DELAY).
    assert!(
        sender_commits <= n + n / 4,
        "{sender_commits} commits for {n} sends"
    );
    assert!(
        receiver_commits <= n + n / 4,
        "{receiver_commits} commits for {n} messages"
    );
    assert!(
        sender_loads <= 2,
        "{sender_loads} group loads for {n} sends"
    );
    assert!(
        receiver_loads <= 2,
        "{receiver_loads} group loads for {n} messages"
    );
    // The send contract holds: every message reported sent once, none left to resend.
    let sent = wait_until(
        &a,
        "MessageSent for the last",
        |e| matches!(e, qpq_core::Event::MessageSent { id, .. } if *id == ids[ids.len() - 1]),
    );
    let _ = sent;
    let m = a.messages(&g, 100, None).unwrap();
    assert!(m
        .iter()
        .filter(|m| m.outgoing)
        .all(|m| m.delivery == qpq_core::Delivery::Sent));
    // After a clean close the bookkeeping is on disk: reopened, nothing is sent again.
    let dir = a.dir.path().to_path_buf();
    let User { client, dir: _keep } = a;
    client.shutdown();
    drop(client);
    let again = s.open(&dir);
    let before = again.debug_counters().unwrap();
    again.sync().unwrap();
    let after = again.debug_counters().unwrap();
    assert_eq!(
        after.calls.get(&qpq_proto::method::ENQUEUE),
        before.calls.get(&qpq_proto::method::ENQUEUE),
        "an accepted message was sent again after a clean close"
    );
    assert!(again
        .messages(&g, 100, None)
        .unwrap()
        .iter()
        .filter(|m| m.outgoing)
        .all(|m| m.delivery == qpq_core::Delivery::Sent));
}
