//! The harness keeps working: a smoke pass (a few iterations of every scenario) writes a
//! report with every row. It asserts no timing: benchmarks are not tests.
#![allow(clippy::unwrap_used)]

#[test]
fn smoke_pass_writes_every_row() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_qpq-bench"))
        .args(["run", "--smoke", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(out.path().join("BENCHMARKS.smoke.md")).unwrap();
    for id in [
        "| S1 ", "| S2 ", "| S3 ", "| S3b ", "| S5 ", "| S6 ", "| S10 ", "| S11 ", "| S12 ",
        "| C1 ", "| C2 ", "| C3 ", "| D-8 ", "| R-3 ",
    ] {
        assert!(md.contains(id), "row {id} missing:\n{md}");
    }
    assert!(md.contains("M1: server RSS"));
    assert!(md.contains("A-6: LoginStart median"));
    assert!(md.contains("A-6: two-sample Kolmogorov–Smirnov p"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("bench/results.smoke.json")).unwrap(),
    )
    .unwrap();
    assert!(json["rows"].as_array().unwrap().len() >= 13);
    assert!(json["machine"]["cpus"].as_u64().unwrap() >= 1);
}

/// `qpq-bench b1` (Rust's side of each SDK's B1) runs against a server it did not start and
/// prints one JSON line with its figures.
#[test]
fn b1_runs_against_a_running_server() {
    use std::io::BufRead;
    let bench = env!("CARGO_BIN_EXE_qpq-bench");
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new(bench)
        .arg("serve-qpq")
        .arg(dir.path().join("server"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let announced: serde_json::Value = serde_json::from_str(&line).unwrap();
    let cert = dir.path().join("cert.der");
    std::fs::write(
        &cert,
        hex::decode(announced["cert"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(bench)
        .args(["b1", announced["addr"].as_str().unwrap()])
        .arg(&cert)
        .arg("5")
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(figures["lang"], "rust");
    assert_eq!(figures["messages"], 5);
    assert!(figures["p50_us"].as_f64().unwrap() > 0.0);
    assert!(figures["msgs_per_s"].as_f64().unwrap() > 0.0);
}
