//! End-to-end tests of qpq-core against an in-process qpq-server.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use common::*;
use qpq_core::{Client, ClientConfig, ErrorCode, Event, StoreKey};

#[test]
fn register_login_logout_and_wrong_password() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let acct = alice.account().unwrap();
    assert_eq!(acct.username, "alice");
    assert!(alice.ping().unwrap() < Duration::from_secs(5));

    // The same name again is taken.
    let other = s.open(tempfile::tempdir().unwrap().path());
    assert_eq!(
        other.register("alice", PW).unwrap_err().code(),
        ErrorCode::Conflict
    );

    alice.logout().unwrap();
    assert_eq!(
        alice.create_group("x", false).unwrap_err().code(),
        ErrorCode::Unauthorized
    );
    let e = alice.login("alice", "wrong password").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");
    let again = alice.login("alice", PW).unwrap();
    assert_eq!(
        again.identity_key, acct.identity_key,
        "the identity comes from the password"
    );
    assert_eq!(again.device_key, acct.device_key);

    // A second device of the account derives the same identity, has its own device key.
    let d2 = s.device("alice");
    let a2 = d2.account().unwrap();
    assert_eq!(a2.identity_key, acct.identity_key);
    assert_ne!(a2.device_key, acct.device_key);
    assert_eq!(alice.resolve_user("alice").unwrap().devices.len(), 2);
    let sn = alice.safety_number("alice").unwrap();
    assert_eq!(sn.len(), 71);

    alice.shutdown();
    assert_eq!(alice.ping().unwrap_err().code(), ErrorCode::Closed);
}

#[test]
fn three_members_remove_rotate_leave() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let c = s.user("carol");
    let g = a.create_group("friends", false).unwrap();
    a.invite(&g, &["bob", "carol"]).unwrap();
    wait_joined(&b, &g);
    wait_joined(&c, &g);
    let conv = b.conversation(&g).unwrap();
    assert_eq!(conv.name, "friends");
    assert_eq!(conv.members, vec!["alice", "bob", "carol"]);
    assert!(!conv.post_quantum);

    // Everyone sends; everyone else receives each message exactly once, in order.
    for i in 0..5 {
        a.send_text(&g, &format!("a{i}")).unwrap();
        b.send_text(&g, &format!("b{i}")).unwrap();
    }
    c.send_text(&g, "c0").unwrap();
    // `send` only queues, so there is no order between senders: wait until each has all 11.
    for u in [&a, &b, &c] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while texts(u, &g).len() < 11 {
            assert!(std::time::Instant::now() < deadline, "{:?}", texts(u, &g));
            let _ = u.next_event(Duration::from_millis(100));
        }
    }
    for (who, u) in [("alice", &a), ("bob", &b), ("carol", &c)] {
        let t = texts(u, &g);
        assert_eq!(t.len(), 11, "{who}: {t:?}");
        let a_order: Vec<_> = t.iter().filter(|x| x.starts_with('a')).cloned().collect();
        assert_eq!(
            a_order,
            (0..5).map(|i| format!("a{i}")).collect::<Vec<_>>(),
            "{who}"
        );
        let b_order: Vec<_> = t.iter().filter(|x| x.starts_with('b')).cloned().collect();
        assert_eq!(
            b_order,
            (0..5).map(|i| format!("b{i}")).collect::<Vec<_>>(),
            "{who}"
        );
    }
    // Sync finds nothing new.
    for u in [&a, &b, &c] {
        let ev = u.sync().unwrap();
        assert!(ev.iter().all(|e| !matches!(e, Event::Message(_))), "{ev:?}");
    }

    // Remove carol: she gets nothing later, and her stale state cannot decrypt a later message.
    let epoch = a.conversation(&g).unwrap().epoch;
    a.remove(&g, "carol").unwrap();
    wait_until(&c, "Removed", |e| matches!(e, Event::Removed { .. }));
    assert!(!c.conversation(&g).unwrap().active);
    wait_epoch(&b, &g, epoch + 1);
    a.send_text(&g, "after carol").unwrap();
    wait_text(&b, "after carol");
    let later = a.debug_encrypt(&g, "secret for alice and bob").unwrap();
    let e = c.debug_process(&g, &later).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Crypto, "{e}");
    b.debug_process(&g, &later).unwrap();
    c.sync().unwrap();
    assert!(!texts(&c, &g).iter().any(|t| t == "after carol"));
    assert_eq!(b.conversation(&g).unwrap().members, vec!["alice", "bob"]);

    // Rotate keys: a new epoch, chat continues.
    let e0 = b.conversation(&g).unwrap().epoch;
    b.rotate_keys(&g).unwrap();
    assert_eq!(b.conversation(&g).unwrap().epoch, e0 + 1);
    wait_epoch(&a, &g, e0 + 1);
    b.send_text(&g, "rotated").unwrap();
    wait_text(&a, "rotated");

    // Bob leaves: alice commits his proposal. Alone, she is told that a message would reach
    // nobody (issue 10 item 1), instead of a silent success.
    b.leave(&g).unwrap();
    assert!(!b.conversation(&g).unwrap().active);
    wait_until(
        &a,
        "bob left",
        |e| matches!(e, Event::MembersChanged { left, .. } if left.contains(&"bob".to_string())),
    );
    assert_eq!(a.conversation(&g).unwrap().members, vec!["alice"]);
    let e = a.send_text(&g, "alone").unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
}

#[test]
fn two_devices_of_one_user_both_receive() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b1 = s.user("bob");
    let b2 = s.device("bob");
    let g = a.create_group("g", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b1, &g);
    wait_joined(&b2, &g);
    assert_eq!(
        a.members(&g)
            .unwrap()
            .iter()
            .find(|m| m.username == "bob")
            .unwrap()
            .devices
            .len(),
        2
    );
    a.send_text(&g, "to both").unwrap();
    wait_text(&b1, "to both");
    wait_text(&b2, "to both");
    // A message from one of bob's devices reaches the other as outgoing.
    b1.send_text(&g, "from b1").unwrap();
    let m = wait_text(&b2, "from b1");
    assert!(m.outgoing);
    wait_text(&a, "from b1");

    // A DM: alice -> bob reaches both of his devices.
    let dm = a.create_dm("bob").unwrap();
    wait_joined(&b1, &dm);
    wait_joined(&b2, &dm);
    assert_eq!(b1.conversation(&dm).unwrap().name, "alice");
    assert_eq!(a.conversation(&dm).unwrap().name, "bob");
    assert_eq!(a.create_dm("bob").unwrap(), dm, "the DM is reused");
    a.send_text(&dm, "dm hi").unwrap();
    wait_text(&b1, "dm hi");
    wait_text(&b2, "dm hi");
}

#[test]
fn post_quantum_group_end_to_end() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("pq", true).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let conv = b.conversation(&g).unwrap();
    assert!(conv.post_quantum);
    assert!(
        conv.ciphersuite.contains("MLKEM768X25519"),
        "{}",
        conv.ciphersuite
    );
    b.send_text(&g, "quantum hello").unwrap();
    wait_text(&a, "quantum hello");
    a.rotate_keys(&g).unwrap();
    a.send_text(&g, "after update").unwrap();
    wait_text(&b, "after update");
}

#[test]
fn concurrent_commits_converge() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let _c = s.user("carol");
    let _d = s.user("dave");
    let g = a.create_group("race", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let e0 = a.conversation(&g).unwrap().epoch;
    std::thread::scope(|scope| {
        let ta = scope.spawn(|| a.invite(&g, &["carol"]));
        let tb = scope.spawn(|| b.invite(&g, &["dave"]));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
    let e1 = e0 + 2;
    wait_epoch(&a, &g, e1);
    wait_epoch(&b, &g, e1);
    let (ca, cb) = (a.conversation(&g).unwrap(), b.conversation(&g).unwrap());
    assert_eq!(ca.epoch, cb.epoch);
    assert_eq!(ca.members, vec!["alice", "bob", "carol", "dave"]);
    assert_eq!(ca.members, cb.members);
    // Both rotate at once too.
    std::thread::scope(|scope| {
        let ta = scope.spawn(|| a.rotate_keys(&g));
        let tb = scope.spawn(|| b.rotate_keys(&g));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
    wait_epoch(&a, &g, e1 + 2);
    wait_epoch(&b, &g, e1 + 2);
    a.send_text(&g, "still one group").unwrap();
    wait_text(&b, "still one group");
}

#[test]
fn restart_and_offline_delivery() {
    let s = TestServer::start();
    let a = s.user("alice");
    let bdir = tempfile::tempdir().unwrap();
    let b = s.open(bdir.path());
    b.register("bob", PW).unwrap();
    let g = a.create_group("g", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    a.send_text(&g, "before restart").unwrap();
    wait_text(&b, "before restart");
    drop(b);

    // Sent while bob is offline (`sync` sends alice's outbox now: `send` only queues).
    a.send_text(&g, "while offline").unwrap();
    a.sync().unwrap();
    let b = s.open(bdir.path());
    assert_eq!(b.account().unwrap().username, "bob");
    let ev = b.sync().unwrap();
    let got: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => m.text().map(str::to_string),
            _ => None,
        })
        .collect();
    let all = texts(&b, &g);
    assert!(
        got.contains(&"while offline".to_string()) || all.contains(&"while offline".to_string())
    );
    assert_eq!(all.iter().filter(|t| *t == "before restart").count(), 1);
    assert_eq!(all.iter().filter(|t| *t == "while offline").count(), 1);
    b.send_text(&g, "back").unwrap();
    wait_text(&a, "back");
}

#[test]
fn store_is_encrypted_and_wrong_key_fails_cleanly() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("zebediah");
    let g = a.create_group("g", false).unwrap();
    a.invite(&g, &["zebediah"]).unwrap();
    wait_joined(&b, &g);
    let secret = "the eagle lands at midnight";
    b.send_text(&g, secret).unwrap();
    wait_text(&a, secret);
    let User {
        client: bc,
        dir: bdir,
    } = b;
    let dir = bdir.path().to_path_buf();
    bc.shutdown();
    drop(bc);
    let db = dir.join("qpq-client.db");
    let mut raw = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(dir.join("qpq-client.db-wal")) {
        raw.extend(wal);
    }
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&raw, secret.as_bytes()),
        "message text in the file"
    );
    assert!(!contains(&raw, b"zebediah"), "username in the file");
    assert!(!contains(&raw, b"SQLite format 3"), "plaintext header");

    let before = std::fs::read(&db).unwrap();
    let mut cfg: ClientConfig = s.config(&dir);
    cfg.store_key = StoreKey::Passphrase("not the passphrase".into());
    let e = Client::open(cfg).err().expect("wrong key must fail");
    assert_eq!(e.code(), ErrorCode::Storage, "{e}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "file unchanged");
    // The right key still opens it.
    let ok = s.open(&dir);
    assert_eq!(texts(&ok, &g).last().unwrap(), secret);
}

/// A listener runs on its own thread: it may call back into the client (look the conversation
/// up, read history) while the engine keeps receiving.
#[test]
fn listener_may_call_back_into_the_client() {
    use std::sync::{mpsc, Arc, Mutex};
    struct Lookup {
        client: Arc<qpq_core::Client>,
        seen: Mutex<mpsc::Sender<(String, usize)>>,
    }
    impl qpq_core::EventListener for Lookup {
        fn on_event(&self, event: Event) {
            if let Event::Message(m) = event {
                let name = self
                    .client
                    .conversation(&m.conversation)
                    .map(|c| c.name)
                    .unwrap_or_default();
                let history = self
                    .client
                    .messages(&m.conversation, 10, None)
                    .map(|v| v.len())
                    .unwrap_or(0);
                let _ = self.seen.lock().unwrap().send((name, history));
            }
        }
    }
    let s = TestServer::start();
    let a = s.user("alice");
    let b = Arc::new(s.open(&s.dir.path().join("bob")));
    b.register("bob", "bob password").unwrap();
    let g = a.create_group("callbacks", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    let (tx, rx) = mpsc::channel();
    b.set_listener(Some(Arc::new(Lookup {
        client: b.clone(),
        seen: Mutex::new(tx),
    })));
    a.send_text(&g, "hello listener").unwrap();
    let (name, history) = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("listener called");
    assert_eq!(name, "callbacks");
    assert!(history >= 1);
    b.set_listener(None);
}

/// After `close()` and the drop, the store file is closed at once (SQLite removes the WAL
/// when its last connection closes), so an app may copy, move or delete the files, and the
/// store reopens with everything in it. Repeated, because the background task used to hold
/// the store for a moment after the drop.
#[test]
fn close_and_drop_release_the_store_at_once() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("qpq-client.db-wal");
    let mut c = s.open(dir.path());
    c.register("alice", PW).unwrap();
    let g = c.create_group("kept", false).unwrap();
    for i in 0..10 {
        assert!(wal.exists(), "round {i}: the open store has a WAL");
        c.shutdown();
        drop(c);
        assert!(
            !wal.exists(),
            "round {i}: the store is still open after close + drop"
        );
        let moved = tempfile::tempdir().unwrap();
        let moved_db = moved.path().join("qpq-client.db");
        std::fs::rename(dir.path().join("qpq-client.db"), &moved_db).unwrap();
        std::fs::rename(moved_db, dir.path().join("qpq-client.db")).unwrap();
        c = s.open(dir.path());
        assert_eq!(c.conversation(&g).unwrap().name, "kept");
    }
}

/// The server's KeyPackage fetch limit (K-2, per requester device → target device) leaves
/// ordinary use alone: one user creating 12 groups with the same friend in a row, then a DM,
/// succeeds every time (each add consumes one of the friend's KeyPackages).
#[test]
fn many_groups_with_the_same_friend_are_not_rate_limited() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    for i in 0..12 {
        let g = a.create_group(&format!("group {i}"), i % 2 == 0).unwrap();
        a.invite(&g, &["bob"])
            .unwrap_or_else(|e| panic!("group {i}: {e}"));
        wait_joined(&b, &g);
    }
    let dm = a.create_dm("bob").unwrap();
    wait_joined(&b, &dm);
}
