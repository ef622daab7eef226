#!/usr/bin/env bash
# Builds libqpq and installs it for C programs:
#   PREFIX/include/qpq.h
#   PREFIX/lib/libqpq.so.0 (soname), libqpq.so -> libqpq.so.0, libqpq.a
#   PREFIX/lib/pkgconfig/qpq.pc   (then: pkg-config --cflags --libs qpq)
# Usage: ffi/install.sh PREFIX [debug|release]   (default release)
# Builds into the workspace's CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail
prefix="${1:?usage: ffi/install.sh PREFIX [debug|release]}"
profile="${2:-release}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$profile" in
  release) cargo build --manifest-path "$repo/Cargo.toml" -p qpq-ffi --release ;;
  debug) cargo build --manifest-path "$repo/Cargo.toml" -p qpq-ffi ;;
  *) echo "profile: debug or release" >&2; exit 2 ;;
esac
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
prefix="$(cd "$prefix" && pwd)"
install -m 0644 "$repo/ffi/include/qpq.h" "$prefix/include/qpq.h"
install -m 0755 "$target/$profile/libqpq.so" "$prefix/lib/libqpq.so.0"
ln -sf libqpq.so.0 "$prefix/lib/libqpq.so"
install -m 0644 "$target/$profile/libqpq.a" "$prefix/lib/libqpq.a"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)"
cat > "$prefix/lib/pkgconfig/qpq.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: qpq
Description: quicproquo end-to-end encrypted group messaging (C ABI of qpq-core)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lqpq
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PC
echo "installed libqpq ($profile) under $prefix"
