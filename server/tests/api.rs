//! Integration tests: the real server on an ephemeral loopback port, spoken to over QUIC.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use prost::Message;
use qpq_proto::frame::Request;
use qpq_proto::{method, v1, Status};
use sha2::{Digest, Sha256};

const PW: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token_and_unknown_methods_are_named() {
    let s = TestServer::start().await;
    let c = s.connect().await;
    let h: v1::HealthResponse = c.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(h.status, "ok");
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
    for m in [
        999u16,
        0,
        method::REPORT_MESSAGE,
        method::STORE_RECOVERY_BUNDLE,
        method::RELAY_ENQUEUE,
    ] {
        let r = c.raw(m, vec![]).await;
        assert_eq!(r.status, Status::UnknownMethod, "method {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_register_login_logout() {
    let s = TestServer::start().await;
    let mut a = s.connect().await;
    a.register("Alice", PW).await.unwrap();
    // Usernames are case-insensitive: a second registration conflicts.
    let mut dup = s.connect().await;
    assert_eq!(status_of(dup.register("alice", PW).await), Status::Conflict);
    let mut bad = s.connect().await;
    assert_eq!(
        status_of(bad.register("no spaces", PW).await),
        Status::BadRequest
    );

    // Wrong passwords never yield a token.
    for wrong in [
        "correct horse battery stapl",
        "Correct horse battery staple",
        "correct horse battery staple ",
        "",
    ] {
        let mut c = s.connect().await;
        c.device = qpq_crypto::identity::IdentityKey::generate(&mut rand::rngs::OsRng);
        assert_eq!(
            status_of(c.login("alice", wrong).await),
            Status::Unauthorized
        );
        assert!(c.token.is_none());
    }
    // An unknown user gets a well-formed KE2 and fails at the same step.
    let mut ghost = s.connect().await;
    assert_eq!(
        status_of(ghost.login("nobody", PW).await),
        Status::Unauthorized
    );

    a.login("alice", PW).await.unwrap();
    let d: v1::ListDevicesResponse = a
        .call(method::LIST_DEVICES, &v1::ListDevicesRequest {})
        .await
        .unwrap();
    assert_eq!(d.devices.len(), 1);
    assert!(d.devices[0].current);
    let _: v1::LogoutResponse = a.call(method::LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    let r = a
        .call::<_, v1::ListDevicesResponse>(method::LIST_DEVICES, &v1::ListDevicesRequest {})
        .await;
    assert_eq!(status_of(r), Status::Unauthorized, "token dies on logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_method_rejects_missing_and_bad_tokens() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for &m in qpq_server::service::IMPLEMENTED {
        c.token = None;
        assert_eq!(
            c.raw(m, vec![]).await.status,
            Status::Unauthorized,
            "no token, method {m}"
        );
        c.token = Some(vec![7; 32]);
        assert_eq!(
            c.raw(m, c.encode(&v1::Empty {})).await.status,
            Status::Unauthorized,
            "bad token, method {m}"
        );
        c.token = Some(vec![7; 5]);
        assert_eq!(
            c.raw(m, c.encode(&v1::Empty {})).await.status,
            Status::Unauthorized,
            "short token, method {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_fetch_ack_peek_and_idempotency() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let dm: v1::CreateChannelResponse = a
        .call(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest {
                kind: v1::ChannelKind::Dm as i32,
                members: vec![b.identity_key()],
                metadata: Bytes::new(),
            },
        )
        .await
        .unwrap();
    assert!(dm.created);
    // The same DM from the other side is the same channel.
    let again: v1::CreateChannelResponse = b
        .call(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest {
                kind: v1::ChannelKind::Dm as i32,
                members: vec![a.identity_key()],
                metadata: Bytes::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (again.channel_id.clone(), again.created),
        (dm.channel_id.clone(), false)
    );
    let ch = dm.channel_id;

    let req = app_message(&ch, 1, b"ciphertext-1");
    let first: v1::EnqueueResponse = a.call(method::ENQUEUE, &req).await.unwrap();
    assert!(!first.duplicate);
    for _ in 0..10 {
        let retry: v1::EnqueueResponse = a.call(method::ENQUEUE, &req).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            retry.server_id, first.server_id,
            "a retry answers with the same id"
        );
    }
    a.send(&ch, 2, b"ciphertext-2").await.unwrap();
    a.send(&ch, 3, b"ciphertext-3").await.unwrap();

    let msgs = b.fetch().await;
    assert_eq!(
        msgs.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
        [&b"ciphertext-1"[..], b"ciphertext-2", b"ciphertext-3"]
    );
    assert!(msgs.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(msgs[0].sender_device, a.device_key());
    assert!(
        a.fetch().await.is_empty(),
        "the sender's device gets no copy"
    );

    let peek: v1::PeekResponse = b
        .call(method::PEEK, &v1::PeekRequest::default())
        .await
        .unwrap();
    assert_eq!((peek.count, peek.last_seq), (3, msgs[2].seq));
    // Fetch without ack re-delivers.
    assert_eq!(b.fetch().await.len(), 3);
    let after: v1::FetchResponse = b
        .call(
            method::FETCH,
            &v1::FetchRequest {
                after_seq: msgs[0].seq,
                limit: 1,
                channel_id: ch.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(after.messages.len(), 1);
    assert_eq!(after.messages[0].seq, msgs[1].seq);

    let acked: v1::AckResponse = b
        .call(
            method::ACK,
            &v1::AckRequest {
                up_to_seq: msgs[1].seq,
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(acked.removed, 2);
    let left = b.fetch().await;
    assert_eq!(left.len(), 1);
    // Acking someone else's sequence numbers (or unknown ones) removes nothing of theirs.
    let none: v1::AckResponse = a
        .call(
            method::ACK,
            &v1::AckRequest {
                up_to_seq: 1000,
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(none.removed, 0);
    assert_eq!(b.fetch().await.len(), 1);
    let _: v1::AckResponse = b
        .call(
            method::ACK,
            &v1::AckRequest {
                up_to_seq: 0,
                seqs: vec![left[0].seq],
            },
        )
        .await
        .unwrap();
    assert!(b.fetch().await.is_empty());

    // Sequence numbers keep increasing after the queue drained.
    a.send(&ch, 4, b"ciphertext-4").await.unwrap();
    assert!(b.fetch().await[0].seq > left[0].seq);

    // BatchEnqueue: each message on its own.
    let batch: v1::BatchEnqueueResponse = a
        .call(
            method::BATCH_ENQUEUE,
            &v1::BatchEnqueueRequest {
                messages: vec![
                    app_message(&ch, 5, b"five"),
                    app_message(&ch, 6, b""),
                    app_message(&ch, 7, b"seven"),
                ],
            },
        )
        .await
        .unwrap();
    let statuses: Vec<u32> = batch.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [0, u32::from(Status::BadRequest.code()), 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_validation_errors() {
    let s = TestServer::start_with(|c| c.max_message_bytes = 1000).await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let outsider = s.user("eve").await;
    let ch = a.group(&[&b]).await;

    let mut r = app_message(&ch, 1, b"x");
    r.channel_id = Bytes::from_static(&[1; 15]);
    assert_eq!(
        status_of(a.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &r).await),
        Status::BadRequest
    );
    let mut r = app_message(&ch, 1, b"x");
    r.message_id = Bytes::from_static(&[1; 17]);
    assert_eq!(
        status_of(a.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &r).await),
        Status::BadRequest
    );
    assert_eq!(
        status_of(a.send(&ch, 1, b"").await),
        Status::BadRequest,
        "empty payload"
    );
    assert_eq!(
        status_of(a.send(&ch, 1, &[0u8; 1001]).await),
        Status::PayloadTooLarge
    );
    assert_eq!(
        status_of(a.send(&ch, 1, &[0u8; 1000]).await),
        Status::Ok,
        "exactly the cap is accepted"
    );
    assert_eq!(
        status_of(a.send(&Bytes::from_static(&[9; 16]), 1, b"x").await),
        Status::NotFound
    );
    assert_eq!(
        status_of(outsider.send(&ch, 1, b"x").await),
        Status::Forbidden,
        "sender must be a member"
    );
    // Commit rules.
    let mut c = app_message(&ch, 2, b"commit");
    c.kind = v1::MessageKind::Commit as i32;
    assert_eq!(
        status_of(a.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &c).await),
        Status::BadRequest,
        "commit needs epoch"
    );
    let mut w = app_message(&ch, 3, b"app");
    w.add_members = vec![outsider.identity_key()];
    assert_eq!(
        status_of(a.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &w).await),
        Status::BadRequest
    );
    // Garbage protobuf.
    let r = a.raw(method::ENQUEUE, vec![0xff, 0xff, 0xff]).await;
    assert_eq!(r.status, Status::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wait_wakes_on_enqueue_and_push_arrives() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    // An idle FetchWait returns empty at its timeout.
    let t0 = std::time::Instant::now();
    let r: v1::FetchResponse = b
        .call(
            method::FETCH_WAIT,
            &v1::FetchWaitRequest {
                timeout_ms: 300,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.messages.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(290));

    let waiter = tokio::spawn({
        let req = b.encode(&v1::FetchWaitRequest {
            timeout_ms: 20_000,
            ..Default::default()
        });
        let conn = b.conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let f = Request {
                method: method::FETCH_WAIT,
                request_id: 77,
                payload: Bytes::from(req),
            };
            send.write_all(&f.encode().unwrap()).await.unwrap();
            send.finish().unwrap();
            let resp = qpq_proto::frame::read_response(
                &mut recv,
                qpq_proto::MAX_PAYLOAD,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
            (
                decode_response::<v1::FetchResponse>(resp).unwrap(),
                std::time::Instant::now(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_at = std::time::Instant::now();
    a.send(&ch, 1, b"wake up").await.unwrap();
    let (got, at) = waiter.await.unwrap();
    assert_eq!(got.messages.len(), 1);
    assert!(
        at.duration_since(sent_at) < Duration::from_secs(2),
        "woken by the enqueue, not the timeout"
    );

    let push = b
        .next_push(Duration::from_secs(5))
        .await
        .expect("push NewMessage");
    assert_eq!(push.event, qpq_proto::event::NEW_MESSAGE);
    let nm = v1::NewMessage::decode(push.payload).unwrap();
    let m = nm.message.unwrap();
    assert_eq!(&m.payload[..], b"wake up");
    assert!(!nm.payload_omitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_ordered_per_epoch_and_carry_membership_and_welcome() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let c = s.user("carol").await;
    let ch = a.group(&[&b]).await;

    let commit = |id: u8, epoch: u64| commit_message(&ch, id, epoch, b"commit");
    // Add carol with a Welcome to her device.
    let mut add = commit(1, 0);
    add.add_members = vec![c.identity_key()];
    add.welcome = Bytes::from_static(b"welcome-for-carol");
    let r: v1::EnqueueResponse = a.call(method::ENQUEUE, &add).await.unwrap();
    assert_eq!(r.epoch, 1);
    let cm = c.fetch().await;
    assert_eq!(cm.len(), 1, "carol gets only the Welcome");
    assert_eq!(
        (cm[0].kind, &cm[0].payload[..]),
        (v1::MessageKind::Welcome as i32, &b"welcome-for-carol"[..])
    );
    let bm = b.fetch().await;
    assert_eq!((bm.len(), bm[0].kind), (1, v1::MessageKind::Commit as i32));

    // A stale epoch conflicts, and nothing of it is stored.
    let stale = commit(2, 0);
    let e = b
        .call::<_, v1::EnqueueResponse>(method::ENQUEUE, &stale)
        .await
        .unwrap_err();
    assert_eq!(e.status, Status::Conflict);
    assert!(e.message.contains("epoch 1"), "{}", e.message);
    // Two members commit from the same epoch at the same moment: exactly one wins.
    let (cb, cc) = (commit(3, 1), commit(4, 1));
    let (rb, rc) = tokio::join!(
        b.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &cb),
        c.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &cc),
    );
    let oks = [status_of(rb), status_of(rc)];
    assert_eq!(
        oks.iter().filter(|s| **s == Status::Ok).count(),
        1,
        "{oks:?}"
    );
    assert_eq!(
        oks.iter().filter(|s| **s == Status::Conflict).count(),
        1,
        "{oks:?}"
    );

    // Removal travels with a commit; the removed member gets the commit, not what follows.
    let mut rm = commit(5, 2);
    rm.remove_members = vec![c.identity_key()];
    let _: v1::EnqueueResponse = a.call(method::ENQUEUE, &rm).await.unwrap();
    let _: v1::AckResponse = c
        .call(
            method::ACK,
            &v1::AckRequest {
                up_to_seq: u64::MAX >> 1,
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    a.send(&ch, 6, b"after removal").await.unwrap();
    assert!(c
        .fetch()
        .await
        .iter()
        .all(|m| &m.payload[..] != b"after removal"));
    assert_eq!(status_of(c.send(&ch, 7, b"x").await), Status::Forbidden);

    let members: v1::ListGroupMembersResponse = a
        .call(
            method::LIST_GROUP_MEMBERS,
            &v1::ListGroupMembersRequest {
                channel_id: ch.clone(),
            },
        )
        .await
        .unwrap();
    let mut names: Vec<_> = members.members.iter().map(|m| m.username.clone()).collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(members.epoch, 3);
    assert_eq!(
        status_of(
            c.call::<_, v1::ListGroupMembersResponse>(
                method::LIST_GROUP_MEMBERS,
                &v1::ListGroupMembersRequest {
                    channel_id: ch.clone()
                }
            )
            .await
        ),
        Status::Forbidden
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_membership_methods() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    let _: v1::UpdateGroupMetadataResponse = a
        .call(
            method::UPDATE_GROUP_METADATA,
            &v1::UpdateGroupMetadataRequest {
                channel_id: ch.clone(),
                metadata: Bytes::from_static(b"sealed name"),
            },
        )
        .await
        .unwrap();
    let l: v1::ListGroupMembersResponse = b
        .call(
            method::LIST_GROUP_MEMBERS,
            &v1::ListGroupMembersRequest {
                channel_id: ch.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(&l.metadata[..], b"sealed name");
    assert_eq!(l.members.len(), 2);
    assert_eq!(
        status_of(
            a.call::<_, v1::UpdateGroupMetadataResponse>(
                method::UPDATE_GROUP_METADATA,
                &v1::UpdateGroupMetadataRequest {
                    channel_id: ch.clone(),
                    metadata: Bytes::from(vec![0; 65 * 1024])
                }
            )
            .await
        ),
        Status::PayloadTooLarge
    );
    // bob leaves (removes himself).
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
    assert_eq!(
        status_of(
            b.call::<_, v1::RemoveMemberResponse>(
                method::REMOVE_MEMBER,
                &v1::RemoveMemberRequest {
                    channel_id: ch.clone(),
                    member: a.identity_key()
                }
            )
            .await
        ),
        Status::Forbidden
    );
    // RemoveMember removes only the caller (issue 17 item 14); one who left is no member.
    assert_eq!(
        status_of(
            a.call::<_, v1::RemoveMemberResponse>(
                method::REMOVE_MEMBER,
                &v1::RemoveMemberRequest {
                    channel_id: ch.clone(),
                    member: b.identity_key()
                }
            )
            .await
        ),
        Status::Forbidden
    );
    assert_eq!(
        status_of(
            b.call::<_, v1::RemoveMemberResponse>(
                method::REMOVE_MEMBER,
                &v1::RemoveMemberRequest {
                    channel_id: ch.clone(),
                    member: b.identity_key()
                }
            )
            .await
        ),
        Status::Forbidden
    );
    assert_eq!(
        status_of(
            a.call::<_, v1::CreateChannelResponse>(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Dm as i32,
                    members: vec![Bytes::from_static(&[3; 32])],
                    metadata: Bytes::new()
                }
            )
            .await
        ),
        Status::NotFound
    );
    assert_eq!(
        status_of(
            a.call::<_, v1::CreateChannelResponse>(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Dm as i32,
                    members: vec![a.identity_key()],
                    metadata: Bytes::new()
                }
            )
            .await
        ),
        Status::BadRequest
    );
    assert_eq!(
        status_of(
            a.call::<_, v1::CreateChannelResponse>(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: 9,
                    members: vec![],
                    metadata: Bytes::new()
                }
            )
            .await
        ),
        Status::BadRequest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_single_use_and_hybrid_keys_validated() {
    let s = TestServer::start_with(|c| c.max_key_packages = 5).await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let up = |kps: Vec<Bytes>| v1::UploadKeyPackageRequest {
        key_packages: kps,
        ciphersuite: suite_id(CLASSIC),
    };
    // Another suite is counted and handed out separately.
    let pq_kp = a.key_packages(PQ, 1);
    let pq: v1::UploadKeyPackageResponse = a
        .call(
            method::UPLOAD_KEY_PACKAGE,
            &v1::UploadKeyPackageRequest {
                key_packages: pq_kp.clone(),
                ciphersuite: suite_id(PQ),
            },
        )
        .await
        .unwrap();
    assert_eq!(pq.stored, 1);
    let classic = a.key_packages(CLASSIC, 3);
    let r: v1::UploadKeyPackageResponse = a
        .call(method::UPLOAD_KEY_PACKAGE, &up(classic.clone()))
        .await
        .unwrap();
    assert_eq!(r.stored, 3);
    let count: v1::UploadKeyPackageResponse = a
        .call(method::UPLOAD_KEY_PACKAGE, &up(vec![]))
        .await
        .unwrap();
    assert_eq!(count.stored, 3, "an empty upload reports the count");
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadKeyPackageResponse>(
                method::UPLOAD_KEY_PACKAGE,
                &up(vec![Bytes::new()])
            )
            .await
        ),
        Status::BadRequest
    );
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadKeyPackageResponse>(
                method::UPLOAD_KEY_PACKAGE,
                &up(a.key_packages(CLASSIC, 3))
            )
            .await
        ),
        Status::Forbidden,
        "cap"
    );
    let big = v1::UploadKeyPackageRequest {
        key_packages: vec![Bytes::from(vec![1u8; 1024 * 1024 + 1])],
        ciphersuite: 1,
    };
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadKeyPackageResponse>(method::UPLOAD_KEY_PACKAGE, &big)
                .await
        ),
        Status::PayloadTooLarge
    );

    let fetch = v1::FetchKeyPackageRequest {
        device_key: a.device_key(),
        ciphersuite: 1,
    };
    let mut got = Vec::new();
    for _ in 0..3 {
        let r: v1::FetchKeyPackageResponse =
            b.call(method::FETCH_KEY_PACKAGE, &fetch).await.unwrap();
        got.push(r.key_package);
    }
    got.sort();
    let mut want = classic;
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        status_of(
            b.call::<_, v1::FetchKeyPackageResponse>(method::FETCH_KEY_PACKAGE, &fetch)
                .await
        ),
        Status::NotFound
    );
    let pq: v1::FetchKeyPackageResponse = b
        .call(
            method::FETCH_KEY_PACKAGE,
            &v1::FetchKeyPackageRequest {
                device_key: a.device_key(),
                ciphersuite: suite_id(PQ),
            },
        )
        .await
        .unwrap();
    assert_eq!(pq.key_package, pq_kp[0]);
    assert_eq!(
        status_of(
            b.call::<_, v1::FetchKeyPackageResponse>(
                method::FETCH_KEY_PACKAGE,
                &v1::FetchKeyPackageRequest {
                    device_key: Bytes::from_static(&[1; 31]),
                    ciphersuite: 1
                }
            )
            .await
        ),
        Status::BadRequest
    );

    let hk = qpq_crypto::envelope::HybridSecretKey::generate(&mut rand::rngs::OsRng)
        .public_key()
        .to_bytes();
    let _: v1::UploadHybridKeyResponse = a
        .call(
            method::UPLOAD_HYBRID_KEY,
            &v1::UploadHybridKeyRequest {
                hybrid_public_key: Bytes::from(hk.clone()),
            },
        )
        .await
        .unwrap();
    let mut broken = hk.clone();
    broken.truncate(100);
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadHybridKeyResponse>(
                method::UPLOAD_HYBRID_KEY,
                &v1::UploadHybridKeyRequest {
                    hybrid_public_key: Bytes::from(broken)
                }
            )
            .await
        ),
        Status::BadRequest
    );
    let one: v1::FetchHybridKeyResponse = b
        .call(
            method::FETCH_HYBRID_KEY,
            &v1::FetchHybridKeyRequest {
                device_key: a.device_key(),
            },
        )
        .await
        .unwrap();
    assert_eq!(one.hybrid_public_key, hk);
    assert_eq!(
        status_of(
            b.call::<_, v1::FetchHybridKeyResponse>(
                method::FETCH_HYBRID_KEY,
                &v1::FetchHybridKeyRequest {
                    device_key: b.device_key()
                }
            )
            .await
        ),
        Status::NotFound
    );
    let many: v1::FetchHybridKeysResponse = b
        .call(
            method::FETCH_HYBRID_KEYS,
            &v1::FetchHybridKeysRequest {
                device_keys: vec![a.device_key(), b.device_key()],
            },
        )
        .await
        .unwrap();
    assert_eq!(many.keys.len(), 1);
    assert_eq!(many.keys[0].device_key, a.device_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_devices() {
    let s = TestServer::start_with(|c| c.max_devices = 3).await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let r: v1::ResolveUserResponse = b
        .call(
            method::RESOLVE_USER,
            &v1::ResolveUserRequest {
                username: "ALICE".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.identity_key, a.identity_key());
    assert_eq!(r.device_keys, vec![a.device_key()]);
    assert_eq!(
        status_of(
            b.call::<_, v1::ResolveUserResponse>(
                method::RESOLVE_USER,
                &v1::ResolveUserRequest {
                    username: "nobody".into()
                }
            )
            .await
        ),
        Status::NotFound
    );
    let i: v1::ResolveIdentityResponse = b
        .call(
            method::RESOLVE_IDENTITY,
            &v1::ResolveIdentityRequest {
                identity_key: a.identity_key(),
            },
        )
        .await
        .unwrap();
    assert_eq!(i.username, "alice");
    assert_eq!(
        status_of(
            b.call::<_, v1::ResolveIdentityResponse>(
                method::RESOLVE_IDENTITY,
                &v1::ResolveIdentityRequest {
                    identity_key: Bytes::from_static(&[0; 32])
                }
            )
            .await
        ),
        Status::NotFound
    );

    // A second device logs in on its own and gets its own queue.
    let mut a2 = s.connect().await;
    a2.identity = qpq_crypto::identity::IdentityKey::from_bytes(&a.identity.to_bytes());
    a2.login("alice", PW).await.unwrap();
    let ch = b.group(&[&a]).await;
    b.send(&ch, 1, b"to both devices").await.unwrap();
    assert_eq!(a.fetch().await.len(), 1);
    assert_eq!(a2.fetch().await.len(), 1);

    let extra = qpq_crypto::identity::IdentityKey::generate(&mut rand::rngs::OsRng);
    let _: v1::RegisterDeviceResponse = a
        .call(method::REGISTER_DEVICE, &a.register_device_request(&extra))
        .await
        .unwrap();
    let l: v1::ListDevicesResponse = a
        .call(method::LIST_DEVICES, &v1::ListDevicesRequest {})
        .await
        .unwrap();
    assert_eq!(l.devices.len(), 3);
    assert_eq!(
        status_of(
            a.call::<_, v1::RegisterDeviceResponse>(
                method::REGISTER_DEVICE,
                &a.register_device_request(&qpq_crypto::identity::IdentityKey::generate(
                    &mut rand::rngs::OsRng
                ))
            )
            .await
        ),
        Status::Forbidden,
        "device cap"
    );
    assert_eq!(
        status_of(
            a.call::<_, v1::RegisterDeviceResponse>(
                method::REGISTER_DEVICE,
                &a.register_device_request(&b.device)
            )
            .await
        ),
        Status::Conflict
    );
    // Revoking a device kills its session at once.
    a.revoke_device(&a2.device_key(), PW).await.unwrap();
    assert_eq!(
        status_of(
            a2.call::<_, v1::ListDevicesResponse>(method::LIST_DEVICES, &v1::ListDevicesRequest {})
                .await
        ),
        Status::Unauthorized
    );
    assert_eq!(
        status_of(a.revoke_device(&a2.device_key(), PW).await),
        Status::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_chunked_verified_ranged_and_member_only() {
    let s = TestServer::start_with(|c| c.max_blob_bytes = 3 * 1024 * 1024).await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let eve = s.user("eve").await;
    let ch = a.group(&[&b]).await;
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let sha = Bytes::copy_from_slice(&Sha256::digest(&data));
    let mut offset = 0usize;
    let mut last = v1::UploadBlobResponse::default();
    for chunk in data.chunks(1_000_000) {
        last = a
            .call(
                method::UPLOAD_BLOB,
                &v1::UploadBlobRequest {
                    channel_id: ch.clone(),
                    sha256: sha.clone(),
                    total_size: data.len() as u64,
                    offset: offset as u64,
                    chunk: Bytes::copy_from_slice(chunk),
                },
            )
            .await
            .unwrap();
        offset += chunk.len();
    }
    assert!(last.complete);
    assert_eq!(last.received, data.len() as u64);
    let dl = |offset: u64, length: u64| v1::DownloadBlobRequest {
        channel_id: ch.clone(),
        sha256: sha.clone(),
        offset,
        length,
    };
    let r: v1::DownloadBlobResponse = b
        .call(method::DOWNLOAD_BLOB, &dl(999_990, 30))
        .await
        .unwrap();
    assert_eq!(&r.chunk[..], &data[999_990..1_000_020]);
    assert_eq!(r.total_size, data.len() as u64);
    let mut whole = Vec::new();
    while whole.len() < data.len() {
        let r: v1::DownloadBlobResponse = b
            .call(method::DOWNLOAD_BLOB, &dl(whole.len() as u64, 0))
            .await
            .unwrap();
        whole.extend_from_slice(&r.chunk);
    }
    assert_eq!(whole, data);
    assert_eq!(
        status_of(
            eve.call::<_, v1::DownloadBlobResponse>(method::DOWNLOAD_BLOB, &dl(0, 10))
                .await
        ),
        Status::NotFound,
        "non-members see nothing"
    );

    // Wrong hash: discarded.
    let bad = v1::UploadBlobRequest {
        channel_id: ch.clone(),
        sha256: Bytes::from_static(&[1; 32]),
        total_size: 3,
        offset: 0,
        chunk: Bytes::from_static(b"abc"),
    };
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadBlobResponse>(method::UPLOAD_BLOB, &bad)
                .await
        ),
        Status::BadRequest
    );
    let gone = v1::DownloadBlobRequest {
        channel_id: ch.clone(),
        sha256: Bytes::from_static(&[1; 32]),
        offset: 0,
        length: 3,
    };
    assert_eq!(
        status_of(
            a.call::<_, v1::DownloadBlobResponse>(method::DOWNLOAD_BLOB, &gone)
                .await
        ),
        Status::NotFound
    );
    // Over the size limit, wrong offsets, non-members.
    let big = v1::UploadBlobRequest {
        total_size: 4 * 1024 * 1024,
        ..bad.clone()
    };
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadBlobResponse>(method::UPLOAD_BLOB, &big)
                .await
        ),
        Status::PayloadTooLarge
    );
    let skip = v1::UploadBlobRequest {
        sha256: Bytes::from_static(&[2; 32]),
        total_size: 10,
        offset: 5,
        ..bad.clone()
    };
    assert_eq!(
        status_of(
            a.call::<_, v1::UploadBlobResponse>(method::UPLOAD_BLOB, &skip)
                .await
        ),
        Status::BadRequest
    );
    assert_eq!(
        status_of(
            eve.call::<_, v1::UploadBlobResponse>(method::UPLOAD_BLOB, &bad)
                .await
        ),
        Status::Forbidden
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_account_purges_everything_and_kills_tokens() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    a.send(&ch, 1, b"from alice").await.unwrap();
    b.send(&ch, 2, b"from bob").await.unwrap();
    let _: v1::UploadKeyPackageResponse = a
        .call(
            method::UPLOAD_KEY_PACKAGE,
            &v1::UploadKeyPackageRequest {
                key_packages: a.key_packages(CLASSIC, 1),
                ciphersuite: suite_id(CLASSIC),
            },
        )
        .await
        .unwrap();
    a.delete_account(PW).await.unwrap();
    assert_eq!(
        status_of(
            a.call::<_, v1::ListDevicesResponse>(method::LIST_DEVICES, &v1::ListDevicesRequest {})
                .await
        ),
        Status::Unauthorized
    );
    assert_eq!(
        status_of(
            b.call::<_, v1::ResolveUserResponse>(
                method::RESOLVE_USER,
                &v1::ResolveUserRequest {
                    username: "alice".into()
                }
            )
            .await
        ),
        Status::NotFound
    );
    assert_eq!(
        status_of(
            b.call::<_, v1::FetchKeyPackageResponse>(
                method::FETCH_KEY_PACKAGE,
                &v1::FetchKeyPackageRequest {
                    device_key: a.device_key(),
                    ciphersuite: suite_id(CLASSIC)
                }
            )
            .await
        ),
        Status::NotFound
    );
    assert!(
        b.fetch().await.is_empty(),
        "alice's undelivered messages are purged too"
    );
    // No row of alice's is left in any table.
    let db = rusqlite::Connection::open(s.dir.path().join("qpq.db")).unwrap();
    let ik = a.identity_key().to_vec();
    let dk = a.device_key().to_vec();
    let n: i64 = db
        .query_row(
            "SELECT (SELECT count(*) FROM accounts WHERE identity_key = ?1 OR username = 'alice')
                  + (SELECT count(*) FROM devices WHERE device_key = ?2)
                  + (SELECT count(*) FROM payloads WHERE sender_device = ?2)
                  + (SELECT count(*) FROM key_packages k WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = k.device_id))
                  + (SELECT count(*) FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id))",
            rusqlite::params![ik, dk],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
    // The username stays reserved (issue 17 item 9: nobody may pose as the deleted contact).
    let mut again = s.connect().await;
    assert_eq!(
        status_of(again.register("alice", PW).await),
        Status::Conflict
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_burst = 5.0;
        c.rate_limit_per_sec = 1.0;
    })
    .await;
    let a = s.user("alice").await;
    let other = s.user("bob").await;
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = a
            .call::<_, v1::ListDevicesResponse>(method::LIST_DEVICES, &v1::ListDevicesRequest {})
            .await
        {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("rate limited within 10 calls");
    assert_eq!(e.status, Status::RateLimited);
    assert!(
        e.retry_after_ms > 0 && e.retry_after_ms <= 1000,
        "{}",
        e.retry_after_ms
    );
    // Another account is unaffected.
    let _: v1::ListDevicesResponse = other
        .call(method::LIST_DEVICES, &v1::ListDevicesRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_rate_limit_per_ip() {
    let s = TestServer::start_with(|c| {
        c.auth_rate_burst = 3.0;
        c.auth_rate_per_sec = 0.5;
    })
    .await;
    let c = s.connect().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = c
            .raw(
                method::OPAQUE_LOGIN_START,
                v1::OpaqueLoginStartRequest {
                    username: "x".into(),
                    ke1: Bytes::new(),
                }
                .encode_to_vec(),
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses[..3], [Status::BadRequest; 3]);
    assert!(
        statuses[3..].iter().all(|s| *s == Status::RateLimited),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_statuses_and_never_stall_others() {
    let s = TestServer::start_with(|c| c.read_deadline_ms = 300).await;
    let a = s.user("alice").await;
    // Oversized declared length: PayloadTooLarge before any allocation, with the request id.
    let mut frame = vec![0, 200, 0, 0, 0, 42];
    frame.extend_from_slice(&(5u32 * 1024 * 1024).to_be_bytes());
    let r = a.raw_bytes(&frame).await;
    assert_eq!((r.status, r.request_id), (Status::PayloadTooLarge, 42));
    // Truncated frame (stream finished early): BadRequest.
    let r = a.raw_bytes(&[0, 200, 0, 0, 0, 1, 0, 0, 0, 10, 1, 2]).await;
    assert_eq!(r.status, Status::BadRequest);
    // Half a frame and silence: cut off at the read deadline, others keep being served.
    let (mut send, mut recv) = a.conn.open_bi().await.unwrap();
    send.write_all(&[0, 200, 0]).await.unwrap();
    let meanwhile = a.fetch().await;
    assert!(meanwhile.is_empty());
    let r = qpq_proto::frame::read_response(&mut recv, 1024, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, Status::DeadlineExceeded);
    // Garbage payloads on every implemented method answer, never panic.
    for (m, _) in qpq_proto::method::ALL {
        let r = a
            .raw(
                *m,
                a.encode(&v1::Empty {})
                    .into_iter()
                    .chain([0xff, 0x01, 0x02])
                    .collect(),
            )
            .await;
        assert_ne!(r.status, Status::Ok, "method {m}");
        assert_ne!(r.status, Status::Internal, "method {m}");
    }
    let h: v1::HealthResponse = a.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(h.status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_cap() {
    let s = TestServer::start_with(|c| c.max_connections_per_ip = 2).await;
    let c1 = s.connect().await;
    let _c2 = s.connect().await;
    assert!(
        Conn::connect(s.addr, &s.cert_der).await.is_err(),
        "third connection from the same IP is refused"
    );
    drop(c1);
    // Once one closes, a new one is accepted (the close needs a moment to reach the server).
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(c) = Conn::connect(s.addr, &s.cert_der).await {
            let _: v1::HealthResponse =
                c.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_counters() {
    let s = TestServer::start_with(|c| c.metrics_listen = "127.0.0.1:0".into()).await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    a.send(&ch, 1, b"hello").await.unwrap();
    b.fetch().await;
    let mut sock = tokio::net::TcpStream::connect(s.metrics_addr.unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    sock.read_to_string(&mut body).await.unwrap();
    for line in [
        "qpq_enqueue_total 1",
        "qpq_enqueue_bytes_total 5",
        "qpq_fetch_total 1",
        "qpq_auth_login_success_total 2",
        "qpq_delivery_queue_depth 1",
        "qpq_fetch_wait_total 0",
        "qpq_key_package_upload_total 0",
        "qpq_auth_login_failure_total 0",
        "qpq_rate_limit_hit_total 0",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_in_flight_calls() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let fw = {
        let req = a.encode(&v1::FetchWaitRequest {
            timeout_ms: 30_000,
            ..Default::default()
        });
        let conn = a.conn.clone();
        tokio::spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let f = Request {
                method: method::FETCH_WAIT,
                request_id: 5,
                payload: Bytes::from(req),
            };
            send.write_all(&f.encode().unwrap()).await.unwrap();
            send.finish().unwrap();
            qpq_proto::frame::read_response(&mut recv, 1 << 20, Duration::from_secs(10)).await
        })
    };
    // Shut down once the long-poll is parked in the server.
    let t = std::time::Instant::now();
    while s.service.fetch_waits_parked() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the FetchWait never parked"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = std::time::Instant::now();
    s.shutdown.shutdown();
    let r = fw.await.unwrap().unwrap();
    assert_eq!(
        r.status,
        qpq_proto::Status::Ok,
        "the long-poll is answered, not dropped"
    );
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_recipient_queue_answers_rate_limited_and_recovers_after_ack() {
    let s = TestServer::start_with(|c| {
        c.max_queue_depth = 3;
        // One sender may fill the whole queue here (shares: security_flood.rs).
        c.max_queue_share_percent = 100;
    })
    .await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    for i in 0..3 {
        a.send(&ch, i, b"x").await.unwrap();
    }
    let e = a.send(&ch, 9, b"x").await.unwrap_err();
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 0);
    // The victim's fetch is unaffected; once it acks, the sender gets through.
    let got = b.fetch().await;
    assert_eq!(got.len(), 3);
    let _: v1::AckResponse = b
        .call(
            method::ACK,
            &v1::AckRequest {
                up_to_seq: got[2].seq,
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    a.send(&ch, 10, b"x").await.unwrap();
}

/// Issue 10 item 8, the server's half: the creator is the first admin; only an admin's
/// commit may remove another current member or promote; anyone may remove themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_remove_others_or_promote() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let c = s.user("carol").await;
    let d = s.user("dave").await;
    let ch = a.group(&[&b, &c, &d]).await;
    let commit = |id: u8, epoch: u64| commit_message(&ch, id, epoch, b"commit");
    let refused = |r: Result<v1::EnqueueResponse, _>| {
        let e: qpq_server::testkit::CallError = r.unwrap_err();
        assert_eq!(e.status, Status::Forbidden, "{}", e.message);
        e.message
    };
    // bob is no admin: he removes neither carol nor the creator, and promotes nobody.
    let mut rm = commit(1, 0);
    rm.remove_members = vec![c.identity_key()];
    let m = refused(b.call(method::ENQUEUE, &rm).await);
    assert!(m.contains("admin"), "{m}");
    let mut rm = commit(2, 0);
    rm.remove_members = vec![a.identity_key()];
    refused(b.call(method::ENQUEUE, &rm).await);
    let mut promote = commit(3, 0);
    promote.promote_members = vec![b.identity_key()];
    refused(b.call(method::ENQUEUE, &promote).await);
    // Nothing of the refused commits happened: the epoch is still 0.
    // Anyone may remove themselves.
    let mut leave = commit(4, 0);
    leave.remove_members = vec![d.identity_key()];
    let r: v1::EnqueueResponse = d.call(method::ENQUEUE, &leave).await.unwrap();
    assert_eq!(r.epoch, 1);
    // The admin promotes bob, who may then remove carol.
    let mut promote = commit(5, 1);
    promote.promote_members = vec![b.identity_key()];
    let r: v1::EnqueueResponse = a.call(method::ENQUEUE, &promote).await.unwrap();
    assert_eq!(r.epoch, 2);
    let mut rm = commit(6, 2);
    rm.remove_members = vec![c.identity_key()];
    let r: v1::EnqueueResponse = b.call(method::ENQUEUE, &rm).await.unwrap();
    assert_eq!(r.epoch, 3);
    assert_eq!(status_of(c.send(&ch, 7, b"x").await), Status::Forbidden);
}

/// M1 (issue 14): a logged-in connection that never gets a push has no push queue (nor push
/// task); the first push makes one, and it goes when the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queues_are_made_on_the_first_push_only() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let ch = a.group(&[&b]).await;
    let mut idle = Vec::new();
    for i in 0..5 {
        idle.push(s.user(&format!("idle{i}")).await);
    }
    // A connection gets pushes once it made an authenticated call.
    for c in idle.iter().chain([&b]) {
        let _: v1::FetchResponse = c
            .call(method::FETCH, &v1::FetchRequest::default())
            .await
            .unwrap();
    }
    let svc = s.service.clone();
    let open = || {
        svc.push_queues_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        open(),
        0,
        "six connections ready for pushes, none pushed to yet"
    );
    a.send(&ch, 1, b"hello").await.unwrap();
    let push = b.next_push(Duration::from_secs(5)).await;
    assert!(push.is_some(), "bob gets the push");
    assert_eq!(open(), 1, "only bob's connection has a push queue");
    drop(b);
    let t0 = std::time::Instant::now();
    while open() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "push queue outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// M1 (issue 14): a connection starts with 16 concurrent streams and gets the configured
/// maximum (here 40) once it is busy (12 calls in flight: a finished call's stream may hold a
/// QUIC slot until its response is read, which left the limit unraised at 15 calls before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_gets_its_full_stream_limit() {
    let s = TestServer::start_with(|c| {
        c.max_concurrent_streams = 40;
        c.rate_limit_burst = 1e9;
    })
    .await;
    let b = std::sync::Arc::new(s.user("bob").await);
    let mut calls = Vec::new();
    for _ in 0..60 {
        let b = b.clone();
        calls.push(tokio::spawn(async move {
            let req = v1::FetchWaitRequest {
                timeout_ms: 3_000,
                ..Default::default()
            };
            b.raw(method::FETCH_WAIT, b.encode(&req)).await
        }));
    }
    let svc = s.service.clone();
    let t0 = std::time::Instant::now();
    while svc.fetch_waits_parked() < 40 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "only {} FetchWaits parked",
            svc.fetch_waits_parked()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        svc.fetch_waits_parked(),
        40,
        "never more than the configured 40"
    );
    for c in calls {
        assert_eq!(c.await.unwrap().status, Status::Ok);
    }
}

/// Issue 14: every change to membership, blocks or accounts shows in the very next message,
/// also right after a message read the channel (the guard for the SQLite writer's membership
/// cache, ADR 0101). Each step sends a message first, then changes something and sends
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_membership_follows_blocks_leaves_and_deletions() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let c = s.user("carol").await;
    let d = s.user("dave").await;
    let ch = a.group(&[&b, &c, &d]).await;
    a.send(&ch, 1, b"warm").await.unwrap();
    assert_eq!(
        (
            b.fetch().await.len(),
            c.fetch().await.len(),
            d.fetch().await.len()
        ),
        (1, 1, 1)
    );
    // A block shows at once...
    let _: v1::BlockUserResponse = b
        .call(
            method::BLOCK_USER,
            &v1::BlockUserRequest {
                identity_key: a.identity_key(),
            },
        )
        .await
        .unwrap();
    let r = a.send(&ch, 2, b"blocked").await.unwrap();
    assert_eq!(r.undelivered, vec![b.device_key()]);
    assert_eq!(b.fetch().await.len(), 1, "the blocker got nothing new");
    // ...and so does its end.
    let _: v1::UnblockUserResponse = b
        .call(
            method::UNBLOCK_USER,
            &v1::UnblockUserRequest {
                identity_key: a.identity_key(),
            },
        )
        .await
        .unwrap();
    a.send(&ch, 3, b"unblocked").await.unwrap();
    assert_eq!(b.fetch().await.len(), 2);
    // A member that leaves gets no more application messages.
    let _: v1::RemoveMemberResponse = c
        .call(
            method::REMOVE_MEMBER,
            &v1::RemoveMemberRequest {
                channel_id: ch.clone(),
                member: c.identity_key(),
            },
        )
        .await
        .unwrap();
    let before = c.fetch().await.len();
    a.send(&ch, 4, b"after leaving").await.unwrap();
    assert_eq!(
        c.fetch().await.len(),
        before,
        "a leaving member gets nothing new"
    );
    // ...and may no longer send.
    assert_eq!(
        c.send(&ch, 5, b"me too").await.unwrap_err().status,
        Status::Forbidden
    );
    // A deleted account's devices are gone from the recipients.
    d.delete_account(PW).await.unwrap();
    let r = a.send(&ch, 6, b"after deletion").await.unwrap();
    assert!(r.undelivered.is_empty());
    assert_eq!(b.fetch().await.len(), 4);
}
