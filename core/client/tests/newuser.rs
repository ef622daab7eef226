//! Issue 10, what a new user hit, at the layer where each defect lives: qpq-core against a
//! real qpq-server over QUIC.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use qpq_core::{Client, ClientConfig, ErrorCode, Event, StoreKey, Trust};

/// Item 5: a store is created only once the server accepted the login or registration. A
/// failed first login, an unreachable server, an unknown host and an empty password leave
/// nothing on disk; afterwards the right password works.
#[test]
fn failed_first_attempts_leave_no_store() {
    let s = TestServer::start();
    let _bob = s.user("bob");
    let root = tempfile::tempdir().unwrap();
    type Tweak = Box<dyn Fn(&mut ClientConfig)>;
    let attempts: Vec<(&str, Tweak, &str, ErrorCode)> = vec![
        (
            "typo",
            Box::new(|_| {}),
            "not bob's password",
            ErrorCode::Unauthorized,
        ),
        (
            "dead-port",
            Box::new(|c| c.server_addr = "127.0.0.1:9".into()),
            PW,
            ErrorCode::Network,
        ),
        (
            "unknown-host",
            Box::new(|c| c.server_addr = "no-such-host.invalid:5001".into()),
            PW,
            ErrorCode::Network,
        ),
        ("empty", Box::new(|_| {}), "", ErrorCode::InvalidInput),
    ];
    for (name, tweak, password, code) in attempts {
        let dir = root.path().join(name);
        let mut config = s.config(&dir);
        tweak(&mut config);
        let c = Client::open(config).unwrap();
        let e = c.login("bob", password).unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e}");
        c.shutdown();
        drop(c);
        assert!(!dir.exists(), "{name}: a failed first login left {dir:?}");
    }
    // The typo is not a lock-out: the same directory, the right password.
    let dir = root.path().join("typo");
    let c = Client::open(s.config(&dir)).unwrap();
    c.login("bob", PW).unwrap();
    c.shutdown();
    drop(c);
    assert!(dir.join("qpq-client.db").exists());
    let c = Client::open(s.config(&dir)).unwrap();
    assert_eq!(c.account().unwrap().username, "bob");
}

/// Item 1: after one side left a DM, re-opening it works (a new group for the pair), and a
/// send into the conversation nobody else is in any more is an error, not a silent success.
#[test]
fn dm_reopens_after_a_leave_and_a_send_to_nobody_fails() {
    let s = TestServer::start();
    let pat = s.user("pat");
    let quinn = s.user("quinn");
    let dm = pat.create_dm("quinn").unwrap();
    wait_joined(&quinn, &dm);
    pat.send_text(&dm, "before").unwrap();
    wait_text(&quinn, "before");
    pat.leave(&dm).unwrap();
    // quinn commits pat's leave when it arrives; then nobody else is in the old DM.
    let deadline = Instant::now() + Duration::from_secs(30);
    while quinn.conversation(&dm).unwrap().members != ["quinn"] {
        assert!(Instant::now() < deadline, "pat never left quinn's view");
        let _ = quinn.next_event(Duration::from_millis(200));
    }
    let e = quinn.send_text(&dm, "anyone?").unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    let again = pat.create_dm("quinn").unwrap();
    assert_ne!(again, dm, "a new group for the pair");
    wait_joined(&quinn, &again);
    pat.send_text(&again, "hello again").unwrap();
    wait_text(&quinn, "hello again");
    quinn.send_text(&again, "welcome back").unwrap();
    wait_text(&pat, "welcome back");
}

/// Items 2 and 9: inviting into a DM is Forbidden; inviting an existing member is
/// AlreadyMember, and nothing changes.
#[test]
fn invite_into_a_dm_or_of_a_member_is_refused() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let bob = s.user("bob");
    let _carol = s.user("carol");
    let dm = alice.create_dm("bob").unwrap();
    wait_joined(&bob, &dm);
    for c in [&alice.client, &bob.client] {
        let e = c.invite(&dm, &["carol"]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    }
    assert_eq!(alice.conversation(&dm).unwrap().members, ["alice", "bob"]);
    let g = alice.create_group("g", false).unwrap();
    alice.invite(&g, &["bob"]).unwrap();
    let epoch = alice.conversation(&g).unwrap().epoch;
    let e = alice.invite(&g, &["bob"]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyMember, "{e}");
    assert_eq!(alice.conversation(&g).unwrap().epoch, epoch);
}

/// Item 8: the creator is admin; a member removes nobody else until promoted; anyone leaves.
#[test]
fn only_admins_remove_others() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let bob = s.user("bob");
    let carol = s.user("carol");
    let g = alice.create_group("roles", false).unwrap();
    alice.invite(&g, &["bob", "carol"]).unwrap();
    wait_joined(&bob, &g);
    wait_joined(&carol, &g);
    let e = bob.remove(&g, "carol").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    let e = bob.remove(&g, "alice").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    let e = bob.promote(&g, "bob").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    alice.promote(&g, "bob").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = bob.sync();
        match bob.remove(&g, "carol") {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("bob was never promoted: {e}"),
        }
    }
    wait_until(&carol, "removed", |e| matches!(e, Event::Removed { .. }));
}

/// Item 8: events name who did what and tell leaving from being removed; a rule-breaking
/// commit (a non-admin removing someone, built past the local check and delivered past the
/// server) is refused by every member's engine, and the group does not fork.
#[test]
fn membership_events_name_the_actor_and_engines_refuse_rule_breaking_commits() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let bob = s.user("bob");
    let carol = s.user("carol");
    let dave = s.user("dave");
    let g = alice.create_group("who", false).unwrap();
    alice.invite(&g, &["bob", "carol", "dave"]).unwrap();
    for c in [&bob, &carol, &dave] {
        wait_joined(c, &g);
    }

    // bob is no admin: a commit of his removing carol is refused by alice's and carol's
    // engines (Forbidden), and changes nothing they stored.
    let carol_devices = bob.members(&g).unwrap();
    let carol_devices = &carol_devices
        .iter()
        .find(|m| m.username == "carol")
        .unwrap()
        .devices;
    let rogue = bob.debug_remove_commit(&g, carol_devices).unwrap();
    for (who, c) in [("alice", &alice), ("carol", &carol)] {
        let out = c.debug_inject(vec![(g, rogue.clone())]).unwrap();
        let err = out[0].result.as_ref().expect_err("refused");
        assert_eq!(err.code(), ErrorCode::Forbidden, "{who}: {err}");
        assert!(
            !out[0].state_changed,
            "{who}: the refused commit changed state"
        );
    }

    // alice (admin) removes carol: bob is told alice did it; carol is told she was removed by
    // alice, not that she left.
    alice.remove(&g, "carol").unwrap();
    let seen = wait_until(
        &bob,
        "carol removed",
        |e| matches!(e, Event::MembersChanged { removed, .. } if removed.contains(&"carol".to_string())),
    );
    match seen.last().unwrap() {
        Event::MembersChanged { by, left, .. } => {
            assert_eq!(by.as_deref(), Some("alice"));
            assert!(left.is_empty(), "{left:?}");
        }
        e => panic!("{e:?}"),
    }
    let seen = wait_until(&carol, "removed", |e| matches!(e, Event::Removed { .. }));
    assert!(
        matches!(seen.last().unwrap(), Event::Removed { by, left: false, .. } if by.as_deref() == Some("alice")),
        "{seen:?}"
    );

    // dave leaves: the others see "left", not "removed", and dave's own event says he left.
    dave.leave(&g).unwrap();
    let seen = wait_until(&dave, "own leave", |e| matches!(e, Event::Removed { .. }));
    assert!(
        matches!(seen.last().unwrap(), Event::Removed { left: true, .. }),
        "{seen:?}"
    );
    // The leave is a proposal: the next commit (here alice's key rotation) carries it.
    alice.sync().unwrap();
    alice.rotate_keys(&g).unwrap();
    let seen = wait_until(
        &bob,
        "dave left",
        |e| matches!(e, Event::MembersChanged { left, .. } if left.contains(&"dave".to_string())),
    );
    match seen.last().unwrap() {
        Event::MembersChanged { removed, .. } => assert!(removed.is_empty(), "{removed:?}"),
        e => panic!("{e:?}"),
    }
    // Nobody forked: alice and bob still read each other.
    alice.send_text(&g, "still one group").unwrap();
    wait_until(
        &bob,
        "message",
        |e| matches!(e, Event::Message(m) if m.text() == Some("still one group")),
    );
}

/// Issue 16 item 9: the client takes the username rule from qpq-proto, the one the server
/// applies: refused names fail before anything is sent or stored, and names are normalised.
#[test]
fn usernames_follow_the_shared_rule() {
    let s = TestServer::start();
    for bad in ["", "al ice", "ålice", &"a".repeat(33)] {
        let dir = tempfile::tempdir().unwrap();
        let c = s.open(dir.path());
        let e = c.register(bad, "pw").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput, "{bad:?}: {e}");
        drop(c);
        assert!(
            !dir.path().join("qpq-client.db").exists(),
            "{bad:?}: a store reached the disk"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let c = s.open(dir.path());
    let a = c.register("  Alice.B ", "pw").unwrap();
    assert_eq!(a.username, "alice.b");
    let other = tempfile::tempdir().unwrap();
    let d = s.open(other.path());
    assert_eq!(d.login("ALICE.B", "pw").unwrap().username, "alice.b");
}

/// Item 10: `ping` to a dead address fails within its deadline and names the address.
#[test]
fn ping_to_a_dead_address_fails_fast_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig::new(
        dir.path(),
        StoreKey::Raw([1; 32]),
        "127.0.0.1:9",
        Trust::SystemRoots,
    );
    let c = Client::open(config).unwrap();
    let t = Instant::now();
    let e = c.ping().unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), ErrorCode::Network, "{e}");
    assert!(e.message().contains("127.0.0.1:9"), "{e}");
    // The deadline is the connect timeout (4 s) plus scheduling slack; it was 30 s.
    assert!(took < Duration::from_secs(10), "ping took {took:?}");
    println!("ping to a dead address failed after {took:?}");
}

/// Harness, not a test of its own: `sigkill_of_the_server_is_noticed_within_seconds` runs it
/// in a child process (this test binary again) so that the server can be SIGKILLed.
#[test]
#[ignore = "harness: started as a child process by sigkill_of_the_server_is_noticed_within_seconds"]
fn child_server_harness() {
    let dir = std::env::var_os("QPQ_CHILD_SERVER_DIR").expect("run by the parent test");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = qpq_server::config::Config::ephemeral(std::path::Path::new(&dir));
        let server = qpq_server::Server::bind(config).await.unwrap();
        println!("LISTENING {}", server.local_addr().unwrap());
        server.run().await.unwrap();
    });
}

/// The child server dies with the test, also when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Item 10: after the server process is SIGKILLed (no CONNECTION_CLOSE ever reaches the
/// client), the client reports "connection lost" within seconds (it took ~45 s).
#[test]
fn sigkill_of_the_server_is_noticed_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_server_harness",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QPQ_CHILD_SERVER_DIR", &server_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("child exited").unwrap();
        // The harness prints on the test's own status line ("test … ... LISTENING addr").
        if let Some((_, a)) = line.split_once("LISTENING ") {
            break a.trim().to_string();
        }
    };
    let cert = std::fs::read(server_dir.join("server-cert.der")).unwrap();
    let mut config = ClientConfig::new(
        dir.path().join("alice"),
        StoreKey::Raw([2; 32]),
        addr,
        Trust::PinnedCertDer(cert),
    );
    config.insecure_fast_kdf = true;
    let alice = Client::open(config).unwrap();
    alice.register("alice", PW).unwrap();
    wait_until(&alice, "connected", |e| {
        matches!(e, Event::ConnectionChanged { connected: true })
    });
    // Let the background receiver settle into its long poll.
    std::thread::sleep(Duration::from_millis(500));
    child.0.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let _ = child.0.wait();
    wait_until(&alice, "connection lost", |e| {
        matches!(e, Event::ConnectionChanged { connected: false })
    });
    let took = killed.elapsed();
    println!("SIGKILL -> connection lost: {took:?}");
    assert!(took < Duration::from_secs(15), "noticed after {took:?}");
}
