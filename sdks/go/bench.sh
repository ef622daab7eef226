#!/usr/bin/env bash
# SCENARIO.md's B1 for Go against Rust, same server, same run; writes the row into
# docs/BENCHMARKS.md. QPQ_B1_MESSAGES overrides the 1,000 messages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cargo build -q --manifest-path "$repo/Cargo.toml" -p qpq-ffi -p qpq-server --bin qpq-server --lib --example b1
cd "$here"
QPQ_B1_WRITE="${QPQ_B1_WRITE:-1}" go test -run '^$' -bench B1 -benchtime=1x -timeout 30m ./qpq/
