//! The `qpq` binary end to end: the demo, two REPLs in pseudo-terminals, the scripted
//! subcommands from a shell script. Each test runs its own real qpq-server on a free port.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use expectrl::{Regex, Session};

mod common;
use common::{server, Server};

const QPQ: &str = env!("CARGO_BIN_EXE_qpq");

#[test]
fn demo_succeeds_and_prints_a_transcript() {
    let out = Command::new(QPQ).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "registered with OPAQUE",
        "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519",
        "invited bob and carol",
        "← alice: \"Hello from alice",
        "removed carol",
        "rotated her keys",
        "was removed from \"demo\" by alice",
        // The routing half of the lock-out; the cryptographic half ("cannot decrypt") needs
        // a `--features test-hooks` build (ADR 0014) and is measured by F-6/F-7.
        "synced: nothing new for her",
        "all expectations held",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains('✗'), "{text}");
}

/// A REPL in a pseudo-terminal. Its engine logs calls to a file, and a step that fails
/// reports the terminal output not yet matched and that log, so a failure on a busy CI
/// machine says which call was slow or lost.
struct Repl {
    user: String,
    p: Session,
    log: PathBuf,
}

impl Repl {
    fn send(&mut self, line: &str) {
        self.p.send_line(line).unwrap();
    }

    fn expect<N: expectrl::Needle + std::fmt::Debug>(&mut self, needle: N) {
        let what = format!("{needle:?}");
        if let Err(e) = self.p.expect(needle) {
            let unmatched = self
                .p
                .check(Regex("(?s).+"))
                .map(|c| String::from_utf8_lossy(c.as_bytes()).into_owned())
                .unwrap_or_default();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!(
                "{}: waiting for {what}: {e}\n--- terminal output not matched ---\n{unmatched}\n--- engine log ---\n{log}",
                self.user
            );
        }
    }
}

fn repl(s: &Server, user: &str, data: &Path) -> Repl {
    let log = s.dir.path().join(format!("{user}.log"));
    let mut cmd = Command::new(QPQ);
    cmd.args(["repl", "--server", &s.addr, "--ca-cert"])
        .arg(&s.cert)
        .args([
            "--username",
            user,
            "--password",
            &format!("{user}-password"),
            "--data-dir",
        ])
        .arg(data.join(user))
        .env("QPQ_LOG", "qpq_core=debug")
        .env("QPQ_LOG_FILE", &log);
    let mut p = Session::spawn(cmd).unwrap();
    // Generous: what the test checks is that each line arrives, not how fast.
    p.set_expect_timeout(Some(Duration::from_secs(60)));
    Repl {
        user: user.to_string(),
        p,
        log,
    }
}

#[test]
fn two_repls_chat_and_errors_keep_the_repl_alive() {
    let s = server();
    let data = s.dir.path().join("clients");
    let mut bob = repl(&s, "bob", &data);
    bob.expect("registered and logged in as bob");
    let mut alice = repl(&s, "alice", &data);
    alice.expect("registered and logged in as alice");

    // Errors are one line and the REPL keeps running.
    alice.send("/frobnicate");
    alice.expect("error: unknown command /frobnicate");
    alice.send("/dm nobody");
    alice.expect(Regex("error: .*"));
    alice.send("hello?");
    alice.expect("error: no active conversation");
    alice.send("/whoami");
    alice.expect("alice · identity");

    alice.send("/dm bob");
    alice.expect("now talking in @bob");
    alice.send("hi bob, it's alice");
    // The message appears on bob's screen while his prompt waits.
    bob.expect("alice: hi bob, it's alice");
    bob.send("/switch @alice");
    bob.expect("now talking in @alice");
    bob.send("hello alice");
    alice.expect("bob: hello alice");
    bob.send("/history");
    bob.expect("you: hello alice");
    alice.send("/verify bob");
    alice.expect(Regex(r"\d{5} \d{5} \d{5}"));
    // The engine log names calls and times, never what was said.
    alice.send("/quit");
    bob.send("/quit");
    for r in [&mut alice, &mut bob] {
        let _ = r.p.expect(expectrl::Eof);
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(log.contains("call"), "no calls logged: {log}");
        for secret in ["hi bob", "hello alice", "-password"] {
            assert!(!log.contains(secret), "{secret:?} in the log of {}", r.user);
        }
    }
}

#[test]
fn scripted_subcommands_from_a_shell_script() {
    let s = server();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripted.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("QPQ", QPQ)
        .env("QPQ_SERVER", &s.addr)
        .env("QPQ_CA_CERT", &s.cert)
        .env("WORK", s.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("scripted: all checks passed"), "{stdout}");
}
