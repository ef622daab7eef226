#!/usr/bin/env bash
# Generates the Kotlin and Swift sources of qpq-uniffi in library mode from the built
# (unstripped, debug) library, into the SDKs that check them in (ADR 0090):
#   sdks/kotlin/src/generated/kotlin/org/quicproquo/ffi/qpq_uniffi.kt
#   sdks/swift/Sources/QpqFFI/QpqFFI.swift
#   sdks/swift/Sources/qpq_uniffiFFI/{qpq_uniffiFFI.h,module.modulemap}
# The modulemap gets a `link "qpq_uniffi"` line so the package's system-library target links the
# library (build-xcframework.sh drops it again for the static XCFramework).
# With --check it writes nothing and fails when a checked-in copy differs (stale bindings).
# The library and the bindgen runner are built by separate cargo commands: building them
# together bloated the library 6x (NOTES.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target="${CARGO_TARGET_DIR:-$root/target}"
check=false
[ "${1:-}" = "--check" ] && check=true

cargo build -q -p qpq-uniffi
cargo build -q -p uniffi-bindgen
lib="$target/debug/libqpq_uniffi.so"
[ -f "$lib" ] || lib="$target/debug/libqpq_uniffi.dylib"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$target/debug/uniffi-bindgen" generate --library "$lib" --language kotlin --out-dir "$out/kotlin" --no-format >/dev/null
"$target/debug/uniffi-bindgen" generate --library "$lib" --language swift --out-dir "$out/swift" --no-format >/dev/null

mkdir -p "$out/tree/sdks/kotlin/src/generated/kotlin/org/quicproquo/ffi" \
  "$out/tree/sdks/swift/Sources/QpqFFI" "$out/tree/sdks/swift/Sources/qpq_uniffiFFI"
cp "$out/kotlin/org/quicproquo/ffi/qpq_uniffi.kt" "$out/tree/sdks/kotlin/src/generated/kotlin/org/quicproquo/ffi/"
cp "$out/swift/QpqFFI.swift" "$out/tree/sdks/swift/Sources/QpqFFI/"
cp "$out/swift/qpq_uniffiFFI.h" "$out/tree/sdks/swift/Sources/qpq_uniffiFFI/"
sed 's/^}$/    link "qpq_uniffi"\n}/' "$out/swift/qpq_uniffiFFI.modulemap" \
  >"$out/tree/sdks/swift/Sources/qpq_uniffiFFI/module.modulemap"

status=0
for f in $(cd "$out/tree" && find . -type f | sort); do
  f=${f#./}
  if $check; then
    if ! cmp -s "$out/tree/$f" "$root/$f"; then
      echo "stale generated binding: $f (run bindings/uniffi/generate.sh)" >&2
      status=1
    fi
  else
    mkdir -p "$(dirname "$root/$f")"
    cp "$out/tree/$f" "$root/$f"
    echo "wrote $f"
  fi
done
exit $status
