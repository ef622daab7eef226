#!/usr/bin/env bash
# Regenerates ffi/include/qpq.h from ffi/src with cbindgen (a dev-dependency, so nothing to
# install), then checks that it compiles. Commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
QPQ_BLESS=1 cargo test -q -p qpq-ffi --test header checked_in_header_is_fresh
cargo test -q -p qpq-ffi --test header
