//! ResolveUsers (502) and FetchKeyPackages (305), ADR 0110: one round trip for N users or
//! devices, each entry answered as the single call would, every limit charged per entry.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use qpq_proto::{method, v1, Status};

const PW: &str = "correct horse battery staple";

async fn upload_kps(c: &Conn, n: usize) -> u64 {
    c.upload_key_packages(CLASSIC, n).await.unwrap()
}

async fn fetch_kps(
    c: &Conn,
    devices: &[Bytes],
    with_hybrid_keys: bool,
) -> Result<Vec<v1::KeyPackageEntry>, CallError> {
    c.call::<_, v1::FetchKeyPackagesResponse>(
        method::FETCH_KEY_PACKAGES,
        &v1::FetchKeyPackagesRequest {
            device_keys: devices.to_vec(),
            ciphersuite: suite_id(CLASSIC),
            with_hybrid_keys,
        },
    )
    .await
    .map(|r| r.entries)
}

async fn resolve_users(c: &Conn, names: &[&str]) -> Result<Vec<v1::ResolvedUser>, CallError> {
    c.call::<_, v1::ResolveUsersResponse>(
        method::RESOLVE_USERS,
        &v1::ResolveUsersRequest {
            usernames: names.iter().map(|n| n.to_string()).collect(),
        },
    )
    .await
    .map(|r| r.users)
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 4;
const RATE_LIMITED: u32 = 5;

/// Each entry in request order: a popped KeyPackage (single use: the old single call then
/// finds none), NotFound for a device without one or unknown, and a device without a hybrid
/// key refused, not popped, when hybrid keys are asked for. The request's shape is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_key_packages_answers_each_device_in_order() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let c = s.user("carol").await;
    let r = s.user("inviter").await;
    assert_eq!(upload_kps(&a, 1).await, 1);
    assert_eq!(upload_kps(&b, 2).await, 2);
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

    // Hybrid keys asked for: bob has none, so nothing of his is popped.
    let e = fetch_kps(&r, &[a.device_key(), b.device_key()], true)
        .await
        .unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(
        (e[0].device_key.clone(), e[0].status, e[0].last_resort),
        (a.device_key(), OK, false)
    );
    assert!(!e[0].key_package.is_empty());
    assert_eq!(e[0].hybrid_public_key, hk);
    assert_eq!((e[1].status, e[1].key_package.len()), (NOT_FOUND, 0));
    assert_eq!(
        count(&s.db_path(), "SELECT count(*) FROM key_packages"),
        2,
        "bob's two are still there"
    );

    let unknown = Bytes::from(vec![9u8; 32]);
    let e = fetch_kps(
        &r,
        &[
            b.device_key(),
            c.device_key(),
            unknown.clone(),
            a.device_key(),
        ],
        false,
    )
    .await
    .unwrap();
    let got: Vec<(Bytes, u32)> = e.iter().map(|e| (e.device_key.clone(), e.status)).collect();
    assert_eq!(
        got,
        vec![
            (b.device_key(), OK),
            (c.device_key(), NOT_FOUND),
            (unknown, NOT_FOUND),
            (a.device_key(), NOT_FOUND),
        ],
        "alice's only KeyPackage went in the first batch"
    );
    assert!(e[0].hybrid_public_key.is_empty());
    // The old single call still works, and sees what the batch left.
    let one: v1::FetchKeyPackageResponse = r
        .call(
            method::FETCH_KEY_PACKAGE,
            &v1::FetchKeyPackageRequest {
                device_key: b.device_key(),
                ciphersuite: suite_id(CLASSIC),
            },
        )
        .await
        .unwrap();
    assert!(!one.key_package.is_empty() && one.key_package != e[0].key_package);
    assert_eq!(count(&s.db_path(), "SELECT count(*) FROM key_packages"), 0);

    // Shape: empty, a repeated key, a short key, more than BATCH_MAX.
    for (devices, want) in [
        (vec![], Status::BadRequest),
        (vec![a.device_key(), a.device_key()], Status::BadRequest),
        (vec![Bytes::from_static(b"short")], Status::BadRequest),
        (
            (0..=qpq_server::service::BATCH_MAX)
                .map(|i| Bytes::from((i as u32).to_be_bytes().repeat(8)))
                .collect(),
            Status::PayloadTooLarge,
        ),
    ] {
        assert_eq!(status_of(fetch_kps(&r, &devices, false).await), want);
    }
}

/// A batch cannot bypass issue 17's KeyPackage limits: the (requester account, device) bucket
/// and the device's own stock budget are charged once per device of the batch, the same
/// buckets single calls use. An attacker batching five victims 30 times gets `burst` of each,
/// exactly what 150 single calls would give, and single calls afterwards are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_no_more_key_packages_than_single_calls() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_per_sec = 1e6;
        c.rate_limit_burst = 1e6;
    })
    .await;
    let burst = s.service.config().key_package_fetch_burst as usize;
    assert!(burst > 0 && burst < 30, "the test needs a bucket below 30");
    let mut victims = Vec::new();
    for i in 0..5 {
        let v = s.user(&format!("victim{i}")).await;
        assert_eq!(upload_kps(&v, 30).await, 30);
        victims.push(v);
    }
    let keys: Vec<Bytes> = victims.iter().map(|v| v.device_key()).collect();
    let attacker = s.user("attacker").await;
    let mut got = vec![0usize; keys.len()];
    let mut limited = vec![0usize; keys.len()];
    for _ in 0..30 {
        let e = fetch_kps(&attacker, &keys, false).await.unwrap();
        for (i, e) in e.iter().enumerate() {
            match e.status {
                OK => got[i] += 1,
                RATE_LIMITED => {
                    assert!(e.retry_after_ms > 0, "RateLimited carries retry_after_ms");
                    assert!(e.key_package.is_empty());
                    limited[i] += 1;
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(got, vec![burst; 5], "burst KeyPackages of each victim");
    assert_eq!(limited, vec![30 - burst; 5]);
    assert_eq!(
        count(&s.db_path(), "SELECT count(*) FROM key_packages"),
        (5 * (30 - burst)) as i64
    );
    // The same bucket as the single call: it is spent for both.
    let single = attacker
        .call::<_, v1::FetchKeyPackageResponse>(
            method::FETCH_KEY_PACKAGE,
            &v1::FetchKeyPackageRequest {
                device_key: keys[0].clone(),
                ciphersuite: suite_id(CLASSIC),
            },
        )
        .await;
    assert_eq!(status_of(single), Status::RateLimited);
    // Another device of the attacker's account shares it too (item 13).
    let mut second = s.connect().await;
    second.login("attacker", PW).await.unwrap();
    let e = fetch_kps(&second, &keys, false).await.unwrap();
    assert!(e.iter().all(|e| e.status == RATE_LIMITED));
}

/// ResolveUsers: each username answered as ResolveUser would (normalised, NotFound,
/// BadRequest for an invalid one), in request order; the shape is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_users_answers_each_username_in_order() {
    let s = TestServer::start().await;
    let a = s.user("alice").await;
    let b = s.user("bob").await;
    let r = resolve_users(&b, &["ALICE", "nobody", "not a name!", "bob"])
        .await
        .unwrap();
    let got: Vec<(&str, u32)> = r.iter().map(|u| (u.username.as_str(), u.status)).collect();
    assert_eq!(
        got,
        vec![
            ("alice", OK),
            ("nobody", NOT_FOUND),
            ("not a name!", u32::from(Status::BadRequest.code())),
            ("bob", OK)
        ]
    );
    assert_eq!(r[0].identity_key, a.identity_key());
    assert_eq!(r[0].device_keys, vec![a.device_key()]);
    assert_eq!(r[3].device_keys, vec![b.device_key()]);
    assert!(r[1].identity_key.is_empty() && r[1].device_keys.is_empty());
    assert_eq!(status_of(resolve_users(&b, &[]).await), Status::BadRequest);
    let many: Vec<String> = (0..=qpq_server::service::BATCH_MAX)
        .map(|i| format!("u{i}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        status_of(resolve_users(&b, &refs).await),
        Status::PayloadTooLarge
    );
}

/// A batch of N costs N of the account's request budget (the bound on enumerating usernames):
/// with a budget of 10, two batches of 5 spend it all and the next single call is refused;
/// a batch larger than what is left is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_n_costs_n_of_the_request_budget() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_per_sec = 0.001;
        c.rate_limit_burst = 10.0;
    })
    .await;
    let b = s.user("bob").await;
    let names = ["a1", "a2", "a3", "a4", "a5"];
    assert_eq!(resolve_users(&b, &names).await.unwrap().len(), 5);
    assert_eq!(
        status_of(resolve_users(&b, &["a1", "a2", "a3", "a4", "a5", "a6"]).await),
        Status::RateLimited,
        "6 asked, 4 left after the dispatch's token"
    );
    // The refused batch took the dispatch's token only: 4 left, a batch of 4 passes.
    assert_eq!(resolve_users(&b, &names[..4]).await.unwrap().len(), 4);
    let single = b
        .call::<_, v1::ResolveUserResponse>(
            method::RESOLVE_USER,
            &v1::ResolveUserRequest {
                username: "bob".into(),
            },
        )
        .await;
    assert_eq!(status_of(single), Status::RateLimited);
}

/// A batch larger than the whole burst passes from a full bucket and leaves the budget in
/// debt: the next call is refused, so the sustained rate stays the single calls' one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_above_the_burst_leaves_the_budget_in_debt() {
    let s = TestServer::start_with(|c| {
        c.rate_limit_per_sec = 0.001;
        c.rate_limit_burst = 10.0;
    })
    .await;
    let b = s.user("bob").await;
    let names: Vec<String> = (0..25).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(resolve_users(&b, &refs).await.unwrap().len(), 25);
    assert_eq!(
        status_of(resolve_users(&b, &refs[..1]).await),
        Status::RateLimited
    );
}
