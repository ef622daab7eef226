//! `qpq-bench`: every scenario next to its bare baseline, measured in the same run, written to
//! `docs/BENCHMARKS.md` (a table of medians, ratios and goals) and `docs/bench/results.json`
//! (raw figures and the machine).
//!
//! `cargo run --release -p qpq-bench -- run` is the full run; `-- run --smoke` does a few
//! iterations of everything (the test suite runs it to keep the harness working; it never
//! asserts a timing). `--only C2,S10` runs just those scenario groups (see `run_all`). Servers run as child processes (this binary's `serve-qpq` and
//! `serve-bare` modes), pinned to another CPU than the client where the machine has one.

// A measuring tool: printing is its purpose.
#![allow(clippy::print_stdout)]

mod b1;
mod bare;
mod c1;
mod isolation;
mod report;
mod scaleout;
mod scenarios;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: qpq-bench run [--smoke] [--out DIR] [--only S10,C2,...]   (DIR default: docs)\n       \
         qpq-bench serve-qpq DATA_DIR | serve-qpq-limits DATA_DIR | serve-bare DATA_DIR | serve-qpq-pg DATA_DIR URL NODE on|off   (internal: child servers)\n       \
         qpq-bench c1 [SIZES like 3,100] [MESSAGES]   (only the C1 rows, printed)\n       \
         qpq-bench b1 ADDR CERT_FILE [MESSAGES]   (Rust's B1 against a running server, for the SDK benchmarks)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve-qpq") if args.len() == 2 => bare::serve_qpq(&args[1], false),
        Some("serve-qpq-limits") if args.len() == 2 => bare::serve_qpq(&args[1], true),
        Some("serve-bare") if args.len() == 2 => bare::serve_bare(&args[1]),
        Some("serve-qpq-pg") if args.len() == 5 => {
            bare::serve_qpq_pg(&args[1], &args[2], &args[3], &args[4])
        }
        Some("b1") if args.len() == 3 || args.len() == 4 => {
            let messages = match args.get(3).map(|n| n.parse::<usize>()) {
                None => 1000,
                Some(Ok(n)) if n > 0 => n,
                Some(_) => return usage(),
            };
            match b1::run(&args[1], std::path::Path::new(&args[2]), messages) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("B1 failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("c1") if args.len() <= 3 => {
            let sizes: Vec<usize> = match args.get(1) {
                None => vec![3, 100],
                Some(s) => match s.split(',').map(str::parse).collect() {
                    Ok(v) => v,
                    Err(_) => return usage(),
                },
            };
            let messages = match args.get(2).map(|n| n.parse::<usize>()) {
                None => 200,
                Some(Ok(n)) if n > 0 => n,
                Some(_) => return usage(),
            };
            match c1::cli(&sizes, messages) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("C1 failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("run") => {
            let smoke = args.iter().any(|a| a == "--smoke");
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_else(|| "docs".into());
            let only = args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .map(|v| v.split(',').map(str::to_string).collect());
            match scenarios::run_all(smoke, only) {
                Ok(results) => match report::write(&results, std::path::Path::new(&out), smoke) {
                    Ok(path) => {
                        println!("wrote {path}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot write the report: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("benchmark failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
