//! Test hooks never reach a release build: the `qpq` CLI and the `qpq-server` binary are built
//! without qpq-core's `test-hooks` (the `Client::debug_*` methods, `Failpoint`, the fast store
//! KDF) and without qpq-server's `testkit` (the protocol test client). Those items are compiled
//! only under their feature (`#[cfg(feature = ...)]`), so a build whose resolved features lack
//! them does not contain them.
//!
//! How it is checked: `cargo tree` prints the features Cargo resolves for a plain build of each
//! binary's package (normal dependencies only, as `cargo build --release` resolves them; dev-
//! dependencies, which enable the hooks for tests, are not built there). This runs in about a
//! second; an `nm` over release binaries would need a release build of both (minutes on the
//! CI machine) and could only see symbols the linker kept. `.ci/release-symbols` does that
//! deeper check on demand. The control: with dev-dependencies included, the same query shows
//! the features (so the check can fail).
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// `package -> enabled features` for the workspace packages `cargo tree` shows.
fn resolved(package: &str, edges: &str) -> Vec<(String, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "--manifest-path", manifest])
        .args(["-p", package, "-e", edges, "--prefix", "none"])
        .args(["--format", "{p} |{f}|"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("qpq-"))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            let feats = l
                .split('|')
                .nth(1)
                .unwrap_or("")
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect();
            (name, feats)
        })
        .collect()
}

fn has(tree: &[(String, Vec<String>)], package: &str, feature: &str) -> bool {
    tree.iter()
        .any(|(p, f)| p == package && f.iter().any(|x| x == feature))
}

#[test]
fn release_builds_of_the_cli_and_server_have_no_test_hooks() {
    for bin_package in ["qpq-cli", "qpq-server"] {
        let tree = resolved(bin_package, "normal");
        assert!(
            tree.iter().any(|(p, _)| p == "qpq-server"),
            "{bin_package}: qpq-server not in the tree: {tree:?}"
        );
        assert!(
            !has(&tree, "qpq-core", "test-hooks"),
            "{bin_package}: {tree:?}"
        );
        assert!(
            !has(&tree, "qpq-server", "testkit"),
            "{bin_package}: {tree:?}"
        );
    }
    // Control: the test builds do enable them.
    let dev = resolved("qpq-server", "normal,dev");
    assert!(has(&dev, "qpq-server", "testkit"), "{dev:?}");
    let dev = resolved("qpq-cli", "normal,dev");
    assert!(has(&dev, "qpq-core", "test-hooks"), "{dev:?}");
}
