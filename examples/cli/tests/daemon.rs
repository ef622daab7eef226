//! One process holds a store (the lease, ADR 0021); scripts keep working through it. Real
//! `qpq` processes against a real server: while `qpq recv --follow` holds bob's store, a
//! scripted `qpq send` and `qpq groups` on the same store run through its socket (mode 0600),
//! and what bob receives meanwhile is still printed by the follower. After the follower exits,
//! `send` opens the store itself.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{server, Server};

const QPQ: &str = env!("CARGO_BIN_EXE_qpq");

fn qpq(s: &Server, user: &str, data: &Path) -> Command {
    let mut c = Command::new(QPQ);
    c.env("QPQ_SERVER", &s.addr)
        .env("QPQ_CA_CERT", &s.cert)
        .env("QPQ_USERNAME", user)
        .env("QPQ_PASSWORD", format!("{user}-pw"))
        .env("QPQ_CLIENT_DATA_DIR", data.join(user));
    c
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "not JSON: {text:?}; stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The follower and a channel of the lines it prints.
fn follow(s: &Server, user: &str, data: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = qpq(s, user, data)
        .args(["recv", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => continue,
            Err(e) => panic!("the follower never printed {needle:?}: {e}"),
        }
    }
}

#[test]
fn scripted_send_reaches_a_running_recv_follow() {
    let s = server();
    let data = s.dir.path().join("clients");
    for u in ["alice", "bob"] {
        let out = qpq(&s, u, &data)
            .args(["register", "--json"])
            .output()
            .unwrap();
        assert_eq!(json(&out)["ok"], true, "{out:?}");
    }
    // alice opens a DM, so bob's follower has a conversation to print from.
    let out = qpq(&s, "alice", &data)
        .args(["send", "--to", "bob", "--msg", "before", "--json"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["ok"], true, "{out:?}");

    let (mut follower, lines) = follow(&s, "bob", &data);
    wait_for(&lines, "\"before\"");
    let socket = data.join("bob").join("qpq.sock");
    for _ in 0..600 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    // A scripted send on bob's store while the follower holds it: it runs in the follower.
    for i in 0..3 {
        let out = qpq(&s, "bob", &data)
            .args([
                "send",
                "--to",
                "alice",
                "--msg",
                &format!("from bob {i}"),
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let j = json(&out);
        assert_eq!(j["ok"], true, "{j}");
        assert_eq!(j["conversation"].as_str().unwrap().len(), 32);
    }
    let out = qpq(&s, "bob", &data)
        .args(["groups", "--json"])
        .output()
        .unwrap();
    let j = json(&out);
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["conversations"].as_array().unwrap().len(), 1, "{j}");
    // A wrong password is refused by the holder.
    let out = qpq(&s, "bob", &data)
        .env("QPQ_PASSWORD", "not bob's")
        .args(["groups", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    // `recv` is not served (it would take the follower's messages): the store is Busy.
    let out = qpq(&s, "bob", &data)
        .env("QPQ_LOCK_WAIT_MS", "0")
        .args(["recv", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(json(&out)["code"], "Busy", "{out:?}");

    // The follower still prints what arrives, and alice got bob's three messages.
    let out = qpq(&s, "alice", &data)
        .args(["send", "--to", "bob", "--msg", "while following", "--json"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["ok"], true, "{out:?}");
    wait_for(&lines, "\"while following\"");
    let out = qpq(&s, "alice", &data)
        .args(["recv", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..3 {
        assert_eq!(
            text.matches(&format!("\"from bob {i}\"")).count(),
            1,
            "{text}"
        );
    }

    // Without a holder, `send` opens the store itself again (the stale socket is ignored).
    follower.kill().unwrap();
    follower.wait().unwrap();
    let out = qpq(&s, "bob", &data)
        .args(["send", "--to", "alice", "--msg", "alone", "--json"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["ok"], true, "{out:?}");
}
