//! One process at a time opens a store (ADR 0021), across two real processes: this test binary
//! runs itself again as the holder. While the holder has the store open, `Client::open` gets
//! `Busy` at once (no lock timeout), or after waiting its timeout, without touching the store
//! file; a waiting opener gets the store when the holder closes it; a SIGKILLed holder leaves
//! no lease behind.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qpq_core::{Client, ClientConfig, ErrorCode, StoreKey, Trust};

const CHILD_DIR: &str = "QPQ_LEASE_HOLDER_DIR";

fn config(dir: &Path, wait: Duration) -> ClientConfig {
    let mut c = ClientConfig::new(
        dir,
        StoreKey::Raw([9; 32]),
        "127.0.0.1:9",
        Trust::SystemRoots,
    );
    c.lock_timeout = wait;
    c
}

/// The holder: only does something when run by `busy_across_two_processes` (the variable
/// set). Opens the store, says so, and keeps it until its stdin closes.
#[test]
fn lease_holder_process() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let client = Client::open(config(Path::new(&dir), Duration::ZERO)).unwrap();
    println!("holder: open");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    client.shutdown();
}

fn holder(dir: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "lease_holder_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "holder exited early");
        if line.contains("holder: open") {
            break;
        }
    }
    // Keep reading so the holder never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    child
}

fn files(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn busy_across_two_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    // Create the store, then let the other process hold it.
    Client::open(config(&dir, Duration::ZERO))
        .unwrap()
        .shutdown();
    let mut child = holder(&dir);
    let before = files(&dir);

    let e = Client::open(config(&dir, Duration::ZERO)).err().unwrap();
    assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    let t = Instant::now();
    let e = Client::open(config(&dir, Duration::from_millis(300)))
        .err()
        .unwrap();
    assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    assert!(t.elapsed() >= Duration::from_millis(300), "did not wait");
    assert_eq!(files(&dir), before, "a refused opener touched the store");

    // A waiting opener gets the store once the holder closes it.
    let opener = {
        let dir = dir.clone();
        std::thread::spawn(move || Client::open(config(&dir, Duration::from_secs(60))))
    };
    std::thread::sleep(Duration::from_millis(200));
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let client = opener.join().unwrap().unwrap();
    client.shutdown();

    // A killed holder leaves no lease behind.
    let mut child = holder(&dir);
    assert_eq!(
        Client::open(config(&dir, Duration::ZERO))
            .err()
            .unwrap()
            .code(),
        ErrorCode::Busy
    );
    child.kill().unwrap();
    child.wait().unwrap();
    Client::open(config(&dir, Duration::ZERO))
        .unwrap()
        .shutdown();
}
