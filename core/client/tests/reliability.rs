//! Client-side promises of RELIABILITY.md: group semantics (F-2, F-5, F-6, replay and foreign
//! input as in D-6/F-7) and the local store (L-1, L-2, L-4). Each test's doc comment starts
//! with its plan id and the figure it checks. `QPQ_LONG=1` runs the plan's full figures.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use common::*;
use qpq_core::{
    Client, ClientConfig, ConversationId, ErrorCode, Event, Failpoint, StoreKey, Trust,
};
use sha2::Digest;

fn long() -> bool {
    std::env::var_os("QPQ_LONG").is_some()
}

/// Both members agree: same epoch, same members, and each can read the other.
fn assert_same_group(a: &Client, b: &Client, conv: &ConversationId, tag: &str) {
    let (ca, cb) = (a.conversation(conv).unwrap(), b.conversation(conv).unwrap());
    assert_eq!(ca.epoch, cb.epoch, "{tag}: epochs differ");
    let (mut ma, mut mb) = (ca.members.clone(), cb.members.clone());
    ma.sort();
    mb.sort();
    assert_eq!(ma, mb, "{tag}: members differ");
    let text = format!("{tag}: still one group");
    a.send_text(conv, &text).unwrap();
    wait_text(b, &text);
}

/// F-2: two members commit from the same epoch at the same moment, round after round:
/// exactly one commit per epoch wins, the loser re-applies, and after every round both are at
/// the same epoch with the same members: 0 forks in 100 rounds (1,000 with QPQ_LONG).
#[test]
fn f2_concurrent_commits_never_fork() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("race", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let rounds = if long() { 1000 } else { 100 };
    for round in 0..rounds {
        let start = a.conversation(&g).unwrap().epoch;
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                barrier.wait();
                a.rotate_keys(&g).unwrap();
            });
            sc.spawn(|| {
                barrier.wait();
                b.rotate_keys(&g).unwrap();
            });
        });
        // Two commits were accepted, one per epoch: each side sees both.
        wait_epoch(&a, &g, start + 2);
        wait_epoch(&b, &g, start + 2);
        if round % 10 == 9 || round == rounds - 1 {
            assert_same_group(&a, &b, &g, &format!("round {round}"));
        } else {
            assert_eq!(
                a.conversation(&g).unwrap().epoch,
                b.conversation(&g).unwrap().epoch,
                "round {round}"
            );
        }
    }
}

/// F-2 (5 members): five members rotate at once; every commit lands in its own epoch and all
/// five agree afterwards (20 rounds; 200 with QPQ_LONG).
#[test]
fn f2_five_members_commit_at_once() {
    let s = TestServer::start();
    let names = ["m0", "m1", "m2", "m3", "m4"];
    let users: Vec<_> = names.iter().map(|n| s.user(n)).collect();
    let g = users[0].create_group("five", false).unwrap();
    users[0].invite(&g, &names[1..]).unwrap();
    for u in &users[1..] {
        wait_joined(u, &g);
    }
    let rounds = if long() { 200 } else { 20 };
    for round in 0..rounds {
        let start = users[0].conversation(&g).unwrap().epoch;
        let barrier = std::sync::Barrier::new(users.len());
        std::thread::scope(|sc| {
            for u in &users {
                let barrier = &barrier;
                sc.spawn(move || {
                    barrier.wait();
                    u.rotate_keys(&g).unwrap();
                });
            }
        });
        for u in &users {
            wait_epoch(u, &g, start + users.len() as u64);
        }
        let epochs: Vec<u64> = users
            .iter()
            .map(|u| u.conversation(&g).unwrap().epoch)
            .collect();
        assert!(
            epochs.iter().all(|e| *e == epochs[0]),
            "round {round}: {epochs:?}"
        );
    }
    assert_same_group(&users[0], &users[4], &g, "five");
}

/// F-5: the process dies between "commit stored" and "sent", or between "server accepted"
/// and "merged" (the stuck-group bug): after a restart from the store the group proceeds,
/// the pending commit merged if the server took it and dropped if not. 0 stuck groups and
/// 0 forks over 20 crashes at each point (100 with QPQ_LONG).
#[test]
fn f5_crash_between_commit_sent_and_merged_leaves_no_stuck_group() {
    let s = TestServer::start();
    let b = s.user("bob");
    let a_dir = tempfile::tempdir().unwrap();
    let mut a = s.open(a_dir.path());
    a.register("alice", PW).unwrap();
    let g = a.create_group("crashy", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let cycles = if long() { 100 } else { 20 };
    for i in 0..cycles {
        for at in [Failpoint::CommitBuilt, Failpoint::CommitSent] {
            a.debug_failpoint(Some(at));
            let r = a.rotate_keys(&g);
            assert!(r.is_err(), "{at:?}: the failpoint stops the commit");
            a.shutdown();
            drop(a);
            a = s.open(a_dir.path());
            // After the restart alice syncs: the pending commit is resolved either way.
            a.sync().unwrap();
            let tag = format!("cycle {i} {at:?}");
            wait_epoch(&b, &g, a.conversation(&g).unwrap().epoch);
            assert_same_group(&a, &b, &g, &tag);
            // And the group can still move on.
            a.rotate_keys(&g).unwrap();
            wait_epoch(&b, &g, a.conversation(&g).unwrap().epoch);
        }
    }
}

/// F-6: after the removal commit, none of 1,000 later messages decrypts with the removed
/// member's state. The check uses a copy of carol's store taken *before* she processed her
/// removal, opened offline: the failure is cryptographic (no secrets for the new epochs),
/// not her client refusing an inactive group.
#[test]
fn f6_removed_member_decrypts_nothing_later() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let carol_dir = tempfile::tempdir().unwrap();
    let carol = s.open(carol_dir.path());
    carol.register("carol", PW).unwrap();
    let g = a.create_group("f6", false).unwrap();
    a.invite(&g, &["bob", "carol"]).unwrap();
    wait_joined(&b, &g);
    wait_joined(&carol, &g);
    a.send_text(&g, "before").unwrap();
    wait_text(&carol, "before");
    // A message of the current epoch decrypts for carol's (copied) state: the control.
    let control = a.debug_encrypt(&g, "control").unwrap();
    carol.shutdown();
    drop(carol);
    let stale = copy_store(carol_dir.path());
    a.remove(&g, "carol").unwrap();
    a.rotate_keys(&g).unwrap();
    let n = 1000;
    let ciphertexts: Vec<_> = (0..n)
        .map(|i| a.debug_encrypt(&g, &format!("secret {i}")).unwrap())
        .collect();
    // Offline, so the copy cannot learn anything new.
    let offline = s.open_offline(stale.path());
    offline.debug_process(&g, &control).unwrap();
    let decrypted = ciphertexts
        .iter()
        .filter(|c| offline.debug_process(&g, c).is_ok())
        .count();
    assert_eq!(
        decrypted, 0,
        "0 of {n} later messages decrypt for the removed member"
    );
    let e = offline.debug_process(&g, &ciphertexts[0]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Crypto, "{e}");
}

/// F-7 / P-3 at the client: a ciphertext of one group fed to another, every truncation of a
/// valid ciphertext, and garbage are all rejected, and leave the group working (the probe
/// rolls its transaction back, so rejected input cannot change stored state). Replays are
/// stopped before MLS: the server de-duplicates by message id and the engine skips sequence
/// numbers it has processed (see `restart_and_offline_delivery` in tests/client.rs).
#[test]
fn foreign_truncated_and_garbage_input_is_rejected_without_effect() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g1 = a.create_group("one", false).unwrap();
    let g2 = a.create_group("two", false).unwrap();
    a.invite(&g1, &["bob"]).unwrap();
    a.invite(&g2, &["bob"]).unwrap();
    wait_joined(&b, &g1);
    wait_joined(&b, &g2);
    let c = a.debug_encrypt(&g1, "valid").unwrap();
    b.debug_process(&g1, &c).unwrap();
    assert!(
        b.debug_process(&g2, &c).is_err(),
        "a ciphertext of another group is rejected"
    );
    for cut in 0..c.len() {
        assert!(
            b.debug_process(&g1, &c[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    for _ in 0..200 {
        let junk: Vec<u8> = (0..rand::random::<usize>() % 400)
            .map(|_| rand::random())
            .collect();
        assert!(b.debug_process(&g1, &junk).is_err());
    }
    assert_same_group(&a, &b, &g1, "after rejected input");
}

fn store_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// L-1: 1,000 canary strings sent and received, plus the group name and both usernames: 0
/// hits in the database, its WAL and SHM and any other file of the store; the file does not start with "SQLite format 3".
#[test]
fn l1_store_is_encrypted_at_rest() {
    let s = TestServer::start();
    // Names long enough to be canaries: a 3-letter name occurs by chance in MBs of ciphertext.
    let a = s.user("alicecanary7f3a91c2");
    let b = s.user("bobcanary5e8d20b4");
    let g = a.create_group("canary-group-name-7f3a", false).unwrap();
    a.invite(&g, &["bobcanary5e8d20b4"]).unwrap();
    wait_joined(&b, &g);
    let canaries: Vec<String> = (0..1000)
        .map(|i| format!("canary-{i:04}-{:016x}", rand::random::<u64>()))
        .collect();
    for c in &canaries {
        a.send_text(&g, c).unwrap();
    }
    wait_text(&b, canaries.last().unwrap());
    for (who, dir) in [("alice", a.dir.path()), ("bob", b.dir.path())] {
        let mut raw = Vec::new();
        for f in store_files(dir) {
            let bytes = std::fs::read(&f).unwrap();
            if f.extension().is_some_and(|e| e == "db") {
                assert!(
                    !bytes.starts_with(b"SQLite format 3"),
                    "{who}: plaintext SQLite header"
                );
            }
            raw.extend_from_slice(&bytes);
        }
        let hay = String::from_utf8_lossy(&raw);
        let hits = canaries.iter().filter(|c| hay.contains(c.as_str())).count();
        assert_eq!(hits, 0, "{who}: canaries found in the store");
        for needle in [
            "canary-group-name-7f3a",
            "alicecanary7f3a91c2",
            "bobcanary5e8d20b4",
        ] {
            assert!(
                !hay.contains(needle),
                "{who}: {needle:?} found in the store"
            );
        }
    }
}

/// L-2: wrong passphrases never open the store (0 of 200; 1,000 with QPQ_LONG) and modify no
/// file: contents and modification times unchanged.
#[test]
fn l2_wrong_passphrase_opens_nothing_and_changes_nothing() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    {
        let c = s.open(dir.path());
        c.register("alice", PW).unwrap();
        c.shutdown();
    }
    // The last connection's close checkpoints and removes the WAL; let it finish first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store_files(dir.path())
        .iter()
        .any(|f| f.to_string_lossy().ends_with("-wal"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let snapshot =
        |d: &std::path::Path| -> Vec<(std::path::PathBuf, Vec<u8>, std::time::SystemTime)> {
            let mut v: Vec<_> = store_files(d)
                .into_iter()
                .map(|f| {
                    let m = std::fs::metadata(&f).unwrap();
                    let h = sha2::Sha256::digest(std::fs::read(&f).unwrap()).to_vec();
                    (f, h, m.modified().unwrap())
                })
                .collect();
            v.sort();
            v
        };
    let before = snapshot(dir.path());
    let n = if long() { 1000 } else { 200 };
    for i in 0..n {
        let mut config = s.config(dir.path());
        config.store_key = StoreKey::Passphrase(format!("wrong passphrase {i}"));
        let e = Client::open(config)
            .err()
            .expect("a wrong passphrase must not open the store");
        assert_eq!(e.code(), ErrorCode::Storage, "{e}");
    }
    assert_eq!(snapshot(dir.path()), before, "no file was modified");
    // The right passphrase still opens it.
    let c = s.open(dir.path());
    assert_eq!(c.account().unwrap().username, "alice");
}

/// L-4: one byte flipped in the database file, at 100 random places (one at a time, on a
/// copy): the client either reports a Storage error or shows exactly the original data;
/// never different data.
#[test]
fn l4_tampered_pages_are_detected_not_used() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("tamper", false).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    for i in 0..30 {
        a.send_text(&g, &format!("history line {i}")).unwrap();
    }
    wait_text(&b, "history line 29");
    let original = texts(&b, &g);
    let b_dir = b.dir.path().to_path_buf();
    b.shutdown();
    let db = store_files(&b_dir)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "db"))
        .unwrap();
    let pristine = std::fs::read(&db).unwrap();
    let mut detected = 0;
    let mut unaffected = 0;
    for round in 0..100 {
        let copy = tempfile::tempdir().unwrap();
        for f in store_files(&b_dir) {
            if f.extension().is_some_and(|e| e == "db") {
                let mut bytes = pristine.clone();
                let at = 1024 + (rand::random::<usize>() % (bytes.len() - 1024));
                bytes[at] ^= 1 << (rand::random::<u8>() % 8);
                std::fs::write(copy.path().join(f.file_name().unwrap()), bytes).unwrap();
            } else if !f.to_string_lossy().ends_with("-wal")
                && !f.to_string_lossy().ends_with("-shm")
            {
                std::fs::copy(&f, copy.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        // Offline, so the background receiver cannot write anything.
        let mut config = ClientConfig::new(
            copy.path(),
            StoreKey::Passphrase("store passphrase".into()),
            "127.0.0.1:9",
            Trust::PinnedCertDer(s.cert_der.clone()),
        );
        config.insecure_fast_kdf = true;
        config.request_timeout = Duration::from_millis(200);
        let outcome = Client::open(config).and_then(|c| {
            let r = c.conversations().and_then(|_| c.messages(&g, 1000, None));
            c.shutdown();
            r
        });
        match outcome {
            Err(e) => {
                assert!(
                    matches!(e.code(), ErrorCode::Storage | ErrorCode::NotFound),
                    "round {round}: {e}"
                );
                detected += 1;
            }
            Ok(msgs) => {
                let t: Vec<String> = msgs
                    .into_iter()
                    .map(|m| m.text().unwrap_or_default().to_string())
                    .collect();
                assert_eq!(t, original, "round {round}: tampered data was shown");
                unaffected += 1;
            }
        }
    }
    assert!(
        detected > 0,
        "no tampering was detected at all ({unaffected} unaffected)"
    );
}

/// Delivers one input to `who` and returns its outcome.
fn inject_one(who: &Client, conv: &ConversationId, bytes: &[u8]) -> qpq_core::DebugInjected {
    who.debug_inject(vec![(*conv, bytes.to_vec())])
        .unwrap()
        .pop()
        .unwrap()
}

/// Asserts that `who` rejects the input with `Crypto` and stores nothing of it.
fn assert_rejected(who: &Client, conv: &ConversationId, bytes: &[u8], what: &str) {
    let o = inject_one(who, conv, bytes);
    match o.result {
        Ok(ev) => panic!("{what}: accepted (events {ev:?})"),
        Err(e) => assert_eq!(e.code(), ErrorCode::Crypto, "{what}: {e}"),
    }
    assert!(
        !o.state_changed,
        "{what}: rejected, but stored state changed"
    );
}

/// F-7: handshake messages that must not move a group: commits from a non-member (fresh
/// self-updates made from a removed member's pre-removal state), replays of a commit already
/// merged, and a member's commit of another group delivered under this group: 100 %
/// rejected with stored state byte-identical (hash over every table, MLS state included).
/// Controls: the replayed commit was accepted the first time, the foreign commit is accepted
/// in its own group, and afterwards the members still agree and read each other.
/// 20 of each kind (100 with QPQ_LONG).
#[test]
fn f7_injected_replayed_and_foreign_commits_are_rejected() {
    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let c = s.user("carol");
    let dave_dir = tempfile::tempdir().unwrap();
    let dave = s.open(dave_dir.path());
    dave.register("dave", PW).unwrap();
    let g = a.create_group("f7", true).unwrap();
    a.invite(&g, &["bob", "carol", "dave"]).unwrap();
    for u in [&b.client, &c.client, &dave] {
        wait_joined(u, &g);
    }
    let h = a.create_group("f7 other", true).unwrap();
    a.invite(&h, &["bob"]).unwrap();
    wait_joined(&b, &h);
    dave.shutdown();
    drop(dave);
    let stale = copy_store(dave_dir.path());
    a.remove(&g, "dave").unwrap();
    let epoch = a.conversation(&g).unwrap().epoch;
    wait_epoch(&b, &g, epoch);
    wait_epoch(&c, &g, epoch);
    let rounds = if long() { 100 } else { 20 };

    // Dave as he was before removal, offline.
    let former = s.open_offline(stale.path());
    for i in 0..rounds {
        let commit = former.debug_self_update(&g).unwrap();
        assert_rejected(&b, &g, &commit, &format!("non-member commit {i}"));
    }

    let mut foreign = Vec::new();
    for i in 0..rounds {
        foreign = a.debug_self_update(&h).unwrap();
        assert_rejected(&b, &g, &foreign, &format!("commit of another group {i}"));
    }
    let o = inject_one(&b, &h, &foreign);
    assert!(
        o.result.is_ok() && o.state_changed,
        "control: the foreign commit is valid in its own group: {:?}",
        o.result
    );

    let replayed = c.debug_self_update(&g).unwrap();
    for who in [&a, &b] {
        let o = inject_one(who, &g, &replayed);
        assert!(o.result.is_ok(), "control: first delivery: {:?}", o.result);
    }
    let epoch = epoch + 1;
    assert_eq!(a.conversation(&g).unwrap().epoch, epoch);
    for i in 0..rounds {
        for who in [&a, &b] {
            assert_rejected(who, &g, &replayed, &format!("replayed commit {i}"));
        }
    }
    assert_eq!(b.conversation(&g).unwrap().epoch, epoch);
    // Still one group for alice and bob (carol never merged her own update, so she is the
    // one left behind; the server never saw the injected commit).
    let text = a.debug_encrypt(&g, "f7: still one group").unwrap();
    let o = inject_one(&b, &g, &text);
    let shown = o.result.unwrap();
    assert!(
        shown
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.text() == Some("f7: still one group"))),
        "{shown:?}"
    );
}

/// D-6: every message delivered 1–3 times and shuffled within windows of 10, under new
/// sequence numbers (what a replaying or buggy server would do; the sequence-number check
/// cannot catch it): each message is shown and stored exactly once, every extra copy is
/// rejected (its key generation is used) with stored state unchanged, and the group works
/// across epochs afterwards. 5 epochs × 40 messages (20 × 100 with QPQ_LONG).
#[test]
fn d6_duplicated_and_reordered_delivery_shows_each_message_once() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    let s = TestServer::start();
    let a = s.user("alice");
    let b = s.user("bob");
    let g = a.create_group("d6", true).unwrap();
    a.invite(&g, &["bob"]).unwrap();
    wait_joined(&b, &g);
    let (epochs, per_epoch) = if long() { (20, 100) } else { (5, 40) };
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut shown: HashMap<String, usize> = HashMap::new();
    let (mut delivered, mut rejected) = (0usize, 0usize);
    for e in 0..epochs {
        let texts: Vec<String> = (0..per_epoch).map(|i| format!("d6 {e}.{i}")).collect();
        let cts: Vec<Vec<u8>> = texts
            .iter()
            .map(|t| a.debug_encrypt(&g, t).unwrap())
            .collect();
        let mut order: Vec<usize> = (0..per_epoch)
            .flat_map(|i| std::iter::repeat_n(i, rng.gen_range(1..=3)))
            .collect();
        for w in order.chunks_mut(10) {
            w.shuffle(&mut rng);
        }
        delivered += order.len();
        let out = b
            .debug_inject(order.iter().map(|&i| (g, cts[i].clone())).collect())
            .unwrap();
        for (&i, o) in order.iter().zip(out) {
            match o.result {
                Ok(events) => {
                    assert!(o.state_changed, "an accepted message is stored");
                    for ev in events {
                        if let Event::Message(m) = ev {
                            assert_eq!(m.text(), Some(texts[i].as_str()));
                            *shown
                                .entry(m.text().unwrap_or_default().to_string())
                                .or_default() += 1;
                        }
                    }
                }
                Err(err) => {
                    assert_eq!(err.code(), ErrorCode::Crypto, "{err}");
                    assert!(!o.state_changed, "a rejected copy changed stored state");
                    rejected += 1;
                }
            }
        }
        a.rotate_keys(&g).unwrap();
        wait_epoch(&b, &g, a.conversation(&g).unwrap().epoch);
    }
    let total = epochs * per_epoch;
    assert_eq!(shown.len(), total, "every message shown");
    assert!(shown.values().all(|&n| n == 1), "no message shown twice");
    assert_eq!(rejected, delivered - total, "every extra copy rejected");
    let stored = b.messages(&g, 100_000, None).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        *counts.entry(m.text().unwrap_or_default()).or_default() += 1;
    }
    assert_eq!(counts.len(), total);
    assert!(counts.values().all(|&n| n == 1), "stored exactly once");
    println!(
        "D-6: {total} messages, {delivered} deliveries, {rejected} copies rejected, 0 shown twice"
    );
    assert_same_group(&a, &b, &g, "after redelivery");
    assert_same_group(&b, &a, &g, "after redelivery, other way");
}
