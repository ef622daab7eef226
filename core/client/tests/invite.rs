//! Invites in few round trips (issue 14 part 3, ADR 0110): the inviter resolves every
//! invitee with one ResolveUsers and takes their KeyPackages and hybrid keys with one
//! FetchKeyPackages, against a real server whose per-method counters are read.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use qpq_proto::method;

/// Requests of every method but FetchWait (the background long poll, not a round trip of
/// the operation) the server handled so far.
fn round_trips(s: &TestServer) -> u64 {
    qpq_proto::method::ALL
        .iter()
        .filter(|(m, _)| *m != method::FETCH_WAIT)
        .map(|(m, _)| s.service.metrics.method_count(*m))
        .sum()
}

/// Registers `n` accounts `raw{i}` through the protocol, each with classic KeyPackages and a
/// hybrid key (what qpq-core uploads at registration), so an engine can invite them; they
/// never talk while the invite runs.
fn raw_accounts(s: &TestServer, n: usize) -> Vec<String> {
    use bytes::Bytes;
    use qpq_proto::v1;
    use qpq_server::testkit::{Conn, CLASSIC};
    s.block_on(async {
        let mut names = Vec::new();
        // A few at a time: registration is Argon2 work on a busy machine.
        for start in (0..n).step_by(6) {
            let mut tasks = Vec::new();
            for i in start..(start + 6).min(n) {
                let (addr, cert) = (s.addr, s.cert_der.clone());
                tasks.push(tokio::spawn(async move {
                    let name = format!("raw{i}");
                    let mut c = Conn::connect(addr, &cert).await.unwrap();
                    c.register(&name, PW).await.unwrap();
                    c.login(&name, PW).await.unwrap();
                    c.upload_key_packages(CLASSIC, 2).await.unwrap();
                    let hk =
                        qpq_crypto::envelope::HybridSecretKey::generate(&mut rand::rngs::OsRng)
                            .public_key()
                            .to_bytes();
                    let _: v1::UploadHybridKeyResponse = c
                        .call(
                            method::UPLOAD_HYBRID_KEY,
                            &v1::UploadHybridKeyRequest {
                                hybrid_public_key: Bytes::from(hk),
                            },
                        )
                        .await
                        .unwrap();
                    name
                }));
            }
            for t in tasks {
                names.push(t.await.unwrap());
            }
        }
        names
    })
}

/// C2's inviter: adding 99 accounts (one engine client, offline meanwhile, and 98 accounts
/// registered through the protocol, so every request counted is the inviter's) costs at
/// most 4 round trips: ResolveUsers, FetchKeyPackages (with the hybrid keys), the Fetch that
/// syncs before the commit, and the Enqueue carrying commit and Welcome. No single
/// ResolveUser or FetchKeyPackage, and no FetchHybridKeys. The engine joiner, online
/// afterwards, joins from the Welcome with a bounded number of store commits (its 100
/// members' directory rows in one transaction).
#[test]
fn inviting_ninety_nine_takes_at_most_four_round_trips() {
    // 99 registrations from one address: the per-address registration, authentication and
    // connection limits are not what this test is about.
    let s = TestServer::start_with(|c| {
        c.registrations_per_ip = 1000;
        c.auth_rate_per_sec = 1e6;
        c.auth_rate_burst = 1e6;
        c.max_connections_per_ip = 1000;
    });
    let alice = s.user("alice");
    let joiner = s.user("m0");
    joiner.shutdown();
    let mut names = vec!["m0".to_string()];
    names.extend(raw_accounts(&s, 98));
    let conv = alice.create_group("ninety-nine", false).unwrap();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let count = |m: u16| s.service.metrics.method_count(m);
    let before = round_trips(&s);
    let singles = (
        count(method::RESOLVE_USER),
        count(method::FETCH_KEY_PACKAGE),
        count(method::FETCH_HYBRID_KEYS),
    );
    let batches = (
        count(method::RESOLVE_USERS),
        count(method::FETCH_KEY_PACKAGES),
    );
    alice.invite(&conv, &refs).unwrap();
    let took = round_trips(&s) - before;
    assert_eq!(
        (
            count(method::RESOLVE_USER),
            count(method::FETCH_KEY_PACKAGE),
            count(method::FETCH_HYBRID_KEYS)
        ),
        singles,
        "no single lookups"
    );
    assert_eq!(
        (
            count(method::RESOLVE_USERS) - batches.0,
            count(method::FETCH_KEY_PACKAGES) - batches.1
        ),
        (1, 1)
    );
    assert!(took <= 4, "the invite took {took} round trips");
    eprintln!("C2 inviter, add 99: {took} round trips");
    assert_eq!(alice.conversation(&conv).unwrap().members.len(), 100);

    // The joiner learns 100 members' devices on first contact: its directory rows go in
    // one transaction, not one autocommit (one fsync) per device.
    let joiner = s.open(joiner.dir.path());
    wait_joined(&joiner, &conv);
    let commits = joiner.debug_counters().unwrap().commits;
    eprintln!("C2 first join of 100: {commits} store commits from opening to joined");
    assert!(
        commits < 30,
        "{commits} store commits to open and join a group of 100"
    );
    alice.send_text(&conv, "welcome all").unwrap();
    wait_text(&joiner, "welcome all");
}

/// An unknown username among many fails the invite as a single lookup would (NotFound,
/// naming it) and changes nothing.
#[test]
fn an_unknown_invitee_fails_the_batch_and_changes_nothing() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let _bob = s.user("bob");
    let conv = alice.create_group("g", false).unwrap();
    let e = alice.invite(&conv, &["bob", "nobody"]).unwrap_err();
    assert_eq!(e.code(), qpq_core::ErrorCode::NotFound);
    assert!(e.to_string().contains("nobody"), "{e}");
    assert_eq!(alice.conversation(&conv).unwrap().members.len(), 1);
    assert_eq!(
        s.service.metrics.method_count(method::FETCH_KEY_PACKAGES),
        0
    );
}

/// The Welcome payloads the server stored for `conv`, as it stores them.
fn stored_welcomes(s: &TestServer, conv: &qpq_core::ConversationId) -> Vec<Vec<u8>> {
    let db = s.dir.path().join("qpq.db");
    let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare("SELECT data FROM payloads WHERE channel_id = ?1 AND kind = 2")
        .unwrap();
    st.query_map([&conv.as_bytes()[..]], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// ADR 0111: an X-Wing group's Welcome is not sealed in the hybrid envelope (its HPKE is
/// post-quantum already): the server stores the MLS Welcome with no per-recipient envelope
/// entry (1,176 B each), and the group's name is not readable in it. Both joiners join and
/// learn the name; a classic group's Welcome stays sealed.
#[test]
fn an_x_wing_welcome_goes_unsealed_and_still_hides_the_name() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let bob = s.user("bob");
    let carol = s.user("carol");
    let name = "canary-group-name-7f3a";
    let pq = alice.create_group(name, true).unwrap();
    alice.invite(&pq, &["bob", "carol"]).unwrap();
    let w = stored_welcomes(&s, &pq);
    assert_eq!(w.len(), 1, "one Welcome for both joiners");
    assert_eq!(w[0][0], 0xA1, "MLS-protected, not an envelope");
    assert!(
        !w[0].windows(name.len()).any(|x| x == name.as_bytes()),
        "the name is encrypted"
    );
    for c in [&bob, &carol] {
        wait_joined(c, &pq);
        let conv = c.conversation(&pq).unwrap();
        assert_eq!(conv.name, name);
        assert!(conv.post_quantum);
    }
    alice.send_text(&pq, "pq hello").unwrap();
    wait_text(&carol, "pq hello");

    let classic = alice.create_group(name, false).unwrap();
    alice.invite(&classic, &["bob", "carol"]).unwrap();
    let w = stored_welcomes(&s, &classic);
    assert_eq!(w[0][0], qpq_crypto::envelope::ENVELOPE_VERSION, "sealed");
    assert_eq!(
        qpq_crypto::envelope::recipient_fingerprints(&w[0])
            .unwrap()
            .len(),
        2
    );
    assert!(!w[0].windows(name.len()).any(|x| x == name.as_bytes()));
    wait_joined(&bob, &classic);
    assert_eq!(bob.conversation(&classic).unwrap().name, name);
}
