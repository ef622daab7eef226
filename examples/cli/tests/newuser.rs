//! Issue 10, what a new user hit, driven through the `qpq` binary as a user would: scripted
//! subcommands in a shell pipeline, REPLs in pseudo-terminals (type lines, read the screen).
//! Each test runs its own real qpq-server.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use expectrl::{Eof, Regex, Session};

mod common;
use common::{server, Server};

const QPQ: &str = env!("CARGO_BIN_EXE_qpq");

/// `qpq` as `user`, talking to `s`, with its store under `base/user`.
fn qpq(s: &Server, user: &str, base: &Path) -> Command {
    let mut c = Command::new(QPQ);
    c.env("QPQ_SERVER", &s.addr)
        .env("QPQ_CA_CERT", &s.cert)
        .env("QPQ_USERNAME", user)
        .env("QPQ_PASSWORD", format!("{user}-password"))
        .env("QPQ_CLIENT_DATA_DIR", base.join(user))
        .env_remove("QPQ_DATA_DIR");
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn texts(text: &str) -> Vec<String> {
    json_lines(text)
        .into_iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect()
}

fn repl_cmd(server: &str, cert: &Path, user: &str, data: Option<&Path>) -> Command {
    let mut cmd = Command::new(QPQ);
    cmd.args(["repl", "--server", server, "--ca-cert"])
        .arg(cert)
        .args([
            "--username",
            user,
            "--password",
            &format!("{user}-password"),
        ])
        .env_remove("QPQ_DATA_DIR")
        .env_remove("QPQ_CLIENT_DATA_DIR");
    if let Some(d) = data {
        cmd.arg("--data-dir").arg(d.join(user));
    }
    cmd
}

fn spawn(cmd: Command) -> Session {
    let mut p = Session::spawn(cmd).unwrap();
    // Generous: a REPL start derives two Argon2id keys, on a machine shared by parallel builds.
    p.set_expect_timeout(Some(Duration::from_secs(120)));
    p
}

/// Types /quit and waits for the REPL to exit.
fn quit(mut p: Session) {
    p.send_line("/quit").unwrap();
    p.expect(Eof).unwrap();
}

/// Waits up to 120 s for `path` to exist and hold `needle`; returns its text.
fn wait_file(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if t.contains(needle) {
                return t;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path:?} never held {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Item 3: `recv --follow | head -1` ends cleanly when head goes away, and the message it
/// could not write out is printed by the next `recv`; `history` re-reads everything.
#[test]
fn recv_follow_into_head_loses_nothing_and_history_rereads() {
    let s = server();
    let w = tempfile::tempdir().unwrap();
    ok(qpq(&s, "alice", w.path()).args(["register", "--json"]));
    ok(qpq(&s, "bob", w.path()).args(["register", "--json"]));
    ok(qpq(&s, "alice", w.path()).args(["send", "--to", "bob", "--msg", "one", "--json"]));
    let first = ok(qpq(&s, "bob", w.path()).args(["recv", "--json"]));
    assert_eq!(texts(&first), ["one"], "{first}");

    let mut follow = Command::new("bash");
    follow
        .arg("-c")
        .arg("\"$QPQ\" recv --follow --json | head -1; exit ${PIPESTATUS[0]}")
        .env("QPQ", QPQ)
        .envs(
            qpq(&s, "bob", w.path())
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k, v))),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = follow.spawn().unwrap();
    ok(qpq(&s, "alice", w.path()).args(["send", "--to", "bob", "--msg", "two", "--json"]));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(texts(&line), ["two"], "{line}");
    // head has exited; qpq still follows. The next message finds the pipe closed.
    ok(qpq(&s, "alice", w.path()).args(["send", "--to", "bob", "--msg", "three", "--json"]));
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "recv exit {status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let again = ok(qpq(&s, "bob", w.path()).args(["recv", "--json"]));
    assert_eq!(
        texts(&again),
        ["three"],
        "the unwritten message comes next: {again}"
    );
    let none = ok(qpq(&s, "bob", w.path()).args(["recv", "--json"]));
    assert!(texts(&none).is_empty(), "{none}");
    let hist = ok(qpq(&s, "bob", w.path()).args(["history", "--to", "alice", "--json"]));
    assert_eq!(texts(&hist), ["one", "two", "three"], "{hist}");

    // The demo into a closed pipe: a clean exit too.
    let demo = Command::new("bash")
        .arg("-c")
        .arg("\"$QPQ\" demo | head -1 >/dev/null; exit ${PIPESTATUS[0]}")
        .env("QPQ", QPQ)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&demo.stderr);
    assert!(
        demo.status.success(),
        "demo | head: {:?} {err}",
        demo.status
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Item 4: the REPL's line history never holds message text, and it is kept in the store
/// directory with or without --data-dir.
#[test]
fn repl_history_keeps_commands_only_with_or_without_data_dir() {
    let s = server();
    let w = tempfile::tempdir().unwrap();
    ok(qpq(&s, "bob", w.path()).args(["register", "--json"]));
    let xdg = w.path().join("xdg");
    let mut cmd = repl_cmd(&s.addr, &s.cert, "alice", None);
    cmd.env("XDG_DATA_HOME", &xdg);
    let mut alice = spawn(cmd);
    alice.expect("registered and logged in as alice").unwrap();
    alice.send_line("/dm bob").unwrap();
    alice.expect("now talking in @bob").unwrap();
    alice.expect("@bob> ").unwrap();
    alice.send_line("secret words for bob").unwrap();
    alice.expect("@bob> ").unwrap();
    alice.send_line("/history").unwrap();
    alice.expect("you: secret words for bob").unwrap();
    quit(alice);
    let dir = xdg
        .join("qpq")
        .join(s.addr.replace([':', '/', '[', ']'], "_"))
        .join("alice");
    let history = wait_file(&dir.join("repl-history"), "/dm bob");
    assert!(history.contains("/dm bob"), "{history}");
    assert!(!history.contains("secret"), "{history}");
    for f in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("secret words"),
            "plaintext on disk"
        );
    }
}

/// Lines pasted (or typed ahead) in one go are all run: the line editor keeps what it read
/// past the first line for the next prompt instead of dropping it.
#[test]
fn repl_runs_every_line_of_a_paste() {
    let s = server();
    let w = tempfile::tempdir().unwrap();
    ok(qpq(&s, "bob", w.path()).args(["register", "--json"]));
    let mut alice = spawn(repl_cmd(&s.addr, &s.cert, "alice", Some(w.path())));
    alice.expect("registered and logged in as alice").unwrap();
    alice.send_line("/dm bob").unwrap();
    alice.expect("now talking in @bob").unwrap();
    // One write: three lines reach the terminal together.
    alice.send("pasted one\npasted two\n/history\n").unwrap();
    alice.expect("you: pasted one").unwrap();
    alice.expect("you: pasted two").unwrap();
    // Both were sent, in order, while the REPL is still open.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        got.extend(texts(
            &ok(qpq(&s, "bob", w.path()).args(["recv", "--json"])),
        ));
    }
    assert_eq!(got, ["pasted one", "pasted two"]);
    // A line typed right before /quit is sent before the REPL exits.
    alice.send("last words\n/quit\n").unwrap();
    alice.expect(Eof).unwrap();
    let bob = ok(qpq(&s, "bob", w.path()).args(["recv", "--json"]));
    assert_eq!(texts(&bob), ["last words"], "{bob}");
}

/// Item 6: `--to` names a user, never a conversation number or id prefix; `--conversation`
/// that matches two things is refused.
#[test]
fn send_to_a_user_named_like_a_conversation_number_reaches_that_user() {
    let s = server();
    let w = tempfile::tempdir().unwrap();
    for u in ["alice", "bob", "carol", "2"] {
        ok(qpq(&s, u, w.path()).args(["register", "--json"]));
    }
    ok(qpq(&s, "alice", w.path()).args(["send", "--to", "bob", "--msg", "b", "--json"]));
    ok(qpq(&s, "alice", w.path()).args(["send", "--to", "carol", "--msg", "c", "--json"]));
    // Conversation number 2 is the DM with carol; the user "2" is someone else.
    ok(qpq(&s, "alice", w.path()).args(["send", "--to", "2", "--msg", "for two", "--json"]));
    let two = ok(qpq(&s, "2", w.path()).args(["recv", "--json"]));
    assert_eq!(texts(&two), ["for two"], "{two}");
    let carol = ok(qpq(&s, "carol", w.path()).args(["recv", "--json"]));
    assert_eq!(texts(&carol), ["c"], "{carol}");

    // "2" is now both conversation number 2 and the DM @2: refused, nothing sent.
    let out = qpq(&s, "alice", w.path())
        .args(["send", "--conversation", "2", "--msg", "guess", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v = &json_lines(&String::from_utf8_lossy(&out.stdout))[0];
    assert_eq!(v["code"], "InvalidInput", "{v}");
    assert!(v["message"].as_str().unwrap().contains("matches 2"), "{v}");
    let carol = ok(qpq(&s, "carol", w.path()).args(["recv", "--json"]));
    assert!(texts(&carol).is_empty(), "{carol}");
}

/// Item 7: the client does not read the server's QPQ_DATA_DIR.
#[test]
fn client_ignores_the_servers_data_dir_variable() {
    let s = server();
    let w = tempfile::tempdir().unwrap();
    let server_dir = w.path().join("server-data");
    std::fs::create_dir_all(&server_dir).unwrap();
    let xdg = w.path().join("xdg");
    for u in ["alice", "bob"] {
        let mut c = qpq(&s, u, w.path());
        c.env_remove("QPQ_CLIENT_DATA_DIR")
            .env("QPQ_DATA_DIR", &server_dir)
            .env("XDG_DATA_HOME", &xdg);
        ok(c.args(["register", "--json"]));
    }
    assert_eq!(std::fs::read_dir(&server_dir).unwrap().count(), 0);
    let base = xdg
        .join("qpq")
        .join(s.addr.replace([':', '/', '[', ']'], "_"));
    assert!(base.join("alice/qpq-client.db").exists());
    assert!(base.join("bob/qpq-client.db").exists());
}

/// Item 11: with a store from an earlier session, the REPL starts while the server is down:
/// history readable, sends queued.
#[test]
fn repl_starts_offline_from_its_store() {
    let w = tempfile::tempdir().unwrap();
    let cert = w.path().join("server-cert.der");
    let addr;
    {
        let s = server();
        std::fs::copy(&s.cert, &cert).unwrap();
        addr = s.addr.clone();
        ok(qpq(&s, "bob", w.path()).args(["register", "--json"]));
        // The earlier session's history, written by the scripted commands (the REPL typing
        // path is item 12's test; typing while a membership event redraws the line is racy).
        ok(qpq(&s, "alice", w.path()).args(["register", "--json"]));
        ok(qpq(&s, "alice", w.path()).args([
            "send",
            "--to",
            "bob",
            "--msg",
            "said while online",
            "--json",
        ]));
    } // the server is gone
    let mut alice = spawn(repl_cmd(&addr, &cert, "alice", Some(w.path())));
    alice.expect("opened the store of alice").unwrap();
    alice.expect("offline").unwrap();
    alice.send_line("/switch @bob").unwrap();
    alice.expect("now talking in @bob").unwrap();
    alice.expect("@bob> ").unwrap();
    alice.send_line("/history").unwrap();
    alice.expect("you: said while online").unwrap();
    alice.expect("@bob> ").unwrap();
    alice.send_line("queued while offline").unwrap();
    alice.expect("@bob> ").unwrap();
    alice.send_line("/history").unwrap();
    alice.expect("you: queued while offline").unwrap();
    quit(alice);
}

/// Item 12: messages that arrived while the REPL was closed are announced when it opens,
/// counted in /list, and shown with their time.
#[test]
fn repl_announces_unread_messages_on_start_with_times() {
    let s = server();
    let w = tempfile::tempdir().unwrap();
    ok(qpq(&s, "alice", w.path()).args(["register", "--json"]));
    let mut bob = spawn(repl_cmd(&s.addr, &s.cert, "bob", Some(w.path())));
    bob.expect("registered and logged in as bob").unwrap();
    quit(bob);
    for m in ["first while away", "second while away"] {
        ok(qpq(&s, "alice", w.path()).args(["send", "--to", "bob", "--msg", m, "--json"]));
    }
    let mut bob = spawn(repl_cmd(&s.addr, &s.cert, "bob", Some(w.path())));
    bob.expect("2 unread in @alice").unwrap();
    bob.send_line("/list").unwrap();
    bob.expect("· 2 unread").unwrap();
    bob.send_line("/switch @alice").unwrap();
    bob.expect(Regex(r"\[\d\d:\d\d\] alice: first while away"))
        .unwrap();
    bob.expect(Regex(r"\[\d\d:\d\d\] alice: second while away"))
        .unwrap();
    bob.send_line("/list").unwrap();
    bob.expect(Regex(r"1\. @alice · 2 members · epoch \d+( · PQ)?\r?\n"))
        .unwrap();
    quit(bob);
}
