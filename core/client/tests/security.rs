//! Issue 17, the client halves: Fetch pages follow the server's `more` flag (item 24),
//! broken groups are reported and rejoined by external commit (item 17), consent and block
//! (item 18). Each runs against a real server over QUIC.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use common::*;
use qpq_core::{Body, Client, ConversationId, Event};

/// Item 24: the server caps a Fetch page at 1 MiB and says when more is queued; the
/// client used to take a page under 1 MiB as the end of the queue. 30 messages of about
/// 100 KiB (3 MiB, at least 3 pages) queued while bob was away are all in his history after
/// one sync, each exactly once and in order.
#[test]
fn i24_a_queue_over_1_mib_drains_in_pages_within_one_sync() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let User { client: bob, dir } = s.user("bob");
    let conv = alice.create_group("pages", false).unwrap();
    alice.invite(&conv, &["bob"]).unwrap();
    wait_joined(&bob, &conv);
    bob.shutdown();
    drop(bob);
    let texts_sent: Vec<String> = (0..30)
        .map(|i| format!("{i:02} {}", "x".repeat(100 * 1024)))
        .collect();
    for t in &texts_sent {
        alice.send(&conv, Body::Text(t.clone())).unwrap();
    }
    // send only queues: wait until alice's outbox reached the server.
    alice.sync().unwrap();
    let bob = Client::open(s.config(dir.path())).unwrap();
    bob.sync().unwrap();
    let got = texts(&bob, &conv);
    assert_eq!(
        got.len(),
        texts_sent.len(),
        "every message once after one sync"
    );
    assert_eq!(got, texts_sent);
}

/// Waits for `conv`'s broken and then its recovered event on `c`.
fn wait_broken_then_recovered(c: &Client, conv: &ConversationId, who: &str) -> String {
    let mut reason = String::new();
    wait_until(c, &format!("{who}: ConversationBroken"), |e| match e {
        Event::ConversationBroken {
            conversation,
            reason: r,
        } if conversation == conv => {
            reason = r.clone();
            true
        }
        _ => false,
    });
    wait_until(
        c,
        &format!("{who}: ConversationRecovered"),
        |e| matches!(e, Event::ConversationRecovered { conversation } if conversation == conv),
    );
    reason
}

/// Item 17: an insider (a second device of alice, speaking the raw protocol) sends a commit
/// that is well framed (a PrivateMessage of this group, for the current epoch, content type
/// commit) but cannot be decrypted by anyone. The server accepts it as the epoch's commit, so
/// before ADR 0054's client half every member was stuck for good: no commit of theirs named
/// the server's epoch any more. Now both members report the conversation broken, rejoin it
/// by external commit from the last GroupInfo, and messages flow both ways again, and so
/// do commits.
#[test]
fn i17_an_unprocessable_commit_breaks_the_group_and_members_rejoin_by_external_commit() {
    use qpq_proto::{method, v1};
    let s = TestServer::start();
    let alice = s.user("alice");
    let bob = s.user("bob");
    let conv = alice.create_group("wedged", false).unwrap();
    alice.invite(&conv, &["bob"]).unwrap();
    wait_joined(&bob, &conv);
    alice.send_text(&conv, "before").unwrap();
    wait_text(&bob, "before");
    let epoch = alice.conversation(&conv).unwrap().epoch;
    // An application message of this epoch, relabelled as a commit: the framing is right,
    // the content type is authenticated, so nobody can decrypt it.
    let mut bad = alice.debug_encrypt(&conv, "not a commit").unwrap();
    const CONTENT_TYPE_AT: usize = 4 + 1 + 16 + 8; // version, wire format, group id, epoch
    assert_eq!(bad[CONTENT_TYPE_AT], 1, "an application message");
    bad[CONTENT_TYPE_AT] = 3;
    s.block_on(async {
        let mut insider = qpq_server::testkit::Conn::connect(s.addr, &s.cert_der)
            .await
            .unwrap();
        insider.login("alice", PW).await.unwrap();
        let r: v1::EnqueueResponse = insider
            .call(
                method::ENQUEUE,
                &v1::EnqueueRequest {
                    channel_id: bytes::Bytes::copy_from_slice(&conv[..]),
                    message_id: bytes::Bytes::copy_from_slice(&[0xee; 16]),
                    payload: bytes::Bytes::from(bad),
                    kind: v1::MessageKind::Commit as i32,
                    commit_epoch: Some(epoch),
                    ..Default::default()
                },
            )
            .await
            .expect("the server accepts a well-framed commit");
        assert_eq!(r.epoch, epoch + 1);
    });
    let why = wait_broken_then_recovered(&bob, &conv, "bob");
    println!("bob's broken reason: {why}");
    wait_broken_then_recovered(&alice, &conv, "alice");
    alice.send_text(&conv, "after, from alice").unwrap();
    wait_text(&bob, "after, from alice");
    bob.send_text(&conv, "after, from bob").unwrap();
    wait_text(&alice, "after, from bob");
    // Commits work again too: bob rotates his keys, alice follows.
    bob.rotate_keys(&conv).unwrap();
    let e = bob.conversation(&conv).unwrap().epoch;
    wait_epoch(&alice, &conv, e);
    alice.send_text(&conv, "after the rotation").unwrap();
    wait_text(&bob, "after the rotation");
    assert_eq!(
        alice.members(&conv).unwrap().len(),
        2,
        "nobody gained or lost a seat"
    );
    // The GroupInfo is served to members only, and is the latest epoch's.
    s.block_on(async {
        let mut member = qpq_server::testkit::Conn::connect(s.addr, &s.cert_der)
            .await
            .unwrap();
        member.login("bob", PW).await.unwrap();
        let req = v1::FetchGroupInfoRequest {
            channel_id: bytes::Bytes::copy_from_slice(&conv[..]),
        };
        let gi: v1::FetchGroupInfoResponse =
            member.call(method::FETCH_GROUP_INFO, &req).await.unwrap();
        assert_eq!(gi.epoch, e);
        let mut stranger = qpq_server::testkit::Conn::connect(s.addr, &s.cert_der)
            .await
            .unwrap();
        stranger.register("carol", PW).await.unwrap();
        stranger.login("carol", PW).await.unwrap();
        let r: Result<v1::FetchGroupInfoResponse, _> =
            stranger.call(method::FETCH_GROUP_INFO, &req).await;
        assert_eq!(r.unwrap_err().status, qpq_proto::Status::Forbidden);
    });
}

/// Item 18 (ADR 0060): an invitation from a stranger arrives as a request, its messages
/// stored and flagged by the conversation's state; accepting makes the inviter a contact
/// (their next invitation is allowed at once); declining with block leaves, marks the
/// conversation denied and blocks the inviter on the server, who then can neither add this
/// account to a group nor reach it in a shared one; unblocking undoes that.
#[test]
fn i18_strangers_invitations_are_requests_and_a_decline_can_block() {
    use qpq_core::{Consent, ErrorCode};
    let s = TestServer::start();
    let alice = s.user("alice");
    let bob = s.user("bob");
    let carol = s.user("carol");

    let g1 = alice.create_group("from a stranger", false).unwrap();
    assert_eq!(alice.conversation(&g1).unwrap().consent, Consent::Allowed);
    alice.invite(&g1, &["bob"]).unwrap();
    alice.send_text(&g1, "hello bob").unwrap();
    wait_text(&bob, "hello bob");
    let c = bob.conversation(&g1).unwrap();
    assert_eq!(c.consent, Consent::Requested);
    assert_eq!(c.invited_by.as_deref(), Some("alice"));
    assert_eq!(texts(&bob, &g1), ["hello bob"], "stored while requested");
    bob.accept(&g1).unwrap();
    assert_eq!(bob.conversation(&g1).unwrap().consent, Consent::Allowed);
    // alice is a contact now: her next group is allowed at once.
    let g2 = alice.create_group("from a contact", false).unwrap();
    alice.invite(&g2, &["bob"]).unwrap();
    wait_joined(&bob, &g2);
    assert_eq!(bob.conversation(&g2).unwrap().consent, Consent::Allowed);

    // carol is a stranger; bob declines and blocks her.
    let g3 = carol.create_group("spam", false).unwrap();
    carol.invite(&g3, &["bob", "alice"]).unwrap();
    wait_joined(&bob, &g3);
    assert_eq!(bob.conversation(&g3).unwrap().consent, Consent::Requested);
    bob.decline(&g3, true).unwrap();
    let c = bob.conversation(&g3).unwrap();
    assert_eq!(c.consent, Consent::Denied);
    assert!(!c.active, "declining leaves");
    assert_eq!(bob.blocked().unwrap(), ["carol"]);
    // carol can no longer add bob anywhere.
    let g4 = carol.create_group("again", false).unwrap();
    let e = carol.invite(&g4, &["bob"]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    // In a group both are in (alice's, carol added by alice), carol's messages skip bob.
    alice.invite(&g1, &["carol"]).unwrap();
    wait_joined(&carol, &g1);
    carol.send_text(&g1, "from carol").unwrap();
    wait_text(&alice, "from carol");
    alice.send_text(&g1, "from alice after carol").unwrap();
    wait_text(&bob, "from alice after carol");
    assert!(
        !texts(&bob, &g1).iter().any(|t| t == "from carol"),
        "a blocked account's message skips the blocker"
    );
    bob.unblock("carol").unwrap();
    assert!(bob.blocked().unwrap().is_empty());
    carol.send_text(&g1, "unblocked").unwrap();
    wait_text(&bob, "unblocked");
}
