#!/usr/bin/env bash
# Builds what the Go SDK links and talks to (libqpq.a and qpq-server, debug profile, in the
# workspace's target dir) and runs its tests with the race detector: the README's command.
#   sdks/go/test.sh [go test flags...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# Two selections, each as the other suites build it: cargo resolves features per selection, so
# building the two packages together compiled most dependencies a third time (CI time).
cargo build -q --manifest-path "$repo/Cargo.toml" -p qpq-ffi --lib
cargo build -q --manifest-path "$repo/Cargo.toml" -p qpq-server --bin qpq-server
# cgo links <repo>/target/debug/libqpq.a (a path relative to the package): with another
# CARGO_TARGET_DIR, put a link to the library there.
target="$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")"
if [ "$target" != "$repo/target" ]; then
  mkdir -p "$repo/target/debug"
  ln -sf "$target/debug/libqpq.a" "$repo/target/debug/libqpq.a"
fi
cd "$here"
go vet ./...
test -z "$(gofmt -l .)" || { gofmt -l .; echo "gofmt: the files above are not formatted" >&2; exit 1; }
go test -race -count=1 "$@" ./...
