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
