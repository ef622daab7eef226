//! ABI stability: the `qpq_` symbols `libqpq.so` exports are exactly `abi/symbols.txt`. A
//! symbol that disappears breaks every program linked against `libqpq.so.0` (a removal needs
//! a major soname bump and a changelog entry); a new one must be listed (an addition is fine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/libqpq.so`, built with this test (the lib's crate types include cdylib).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let lib = profile_dir.join("libqpq.so");
    assert!(lib.exists(), "{} is missing: cargo build -p qpq-ffi", lib.display());
    lib
}

#[test]
fn exported_symbols_are_exactly_the_listed_ones() {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(library()).output().expect("nm is installed");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("qpq_"))
        .map(str::to_string)
        .collect();
    let listed_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/abi/symbols.txt")).unwrap();
    let listed: BTreeSet<String> = listed_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = listed.difference(&exported).collect();
    let unlisted: Vec<_> = exported.difference(&listed).collect();
    assert!(missing.is_empty(), "symbols removed from the ABI (needs a major soname bump): {missing:?}");
    assert!(unlisted.is_empty(), "new symbols: add them to ffi/abi/symbols.txt: {unlisted:?}");
    assert!(exported.len() > 100, "the whole Client API is exported");
}

#[test]
fn soname_is_versioned() {
    let out = Command::new("readelf").arg("-d").arg(library()).output().expect("readelf is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Library soname: [libqpq.so.0]"), "{text}");
}
