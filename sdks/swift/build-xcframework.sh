#!/usr/bin/env bash
# Builds QpqNative.xcframework (iOS device, iOS simulator arm64 + x86_64, macOS arm64 + x86_64)
# from qpq-uniffi's static library, for the package's binaryTarget. macOS with Xcode only: it
# has never run on the project's Linux machines (no Swift toolchain, no Xcode).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
triples="aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin"
rustup target add $triples
for t in $triples; do
  cargo rustc --release -p qpq-uniffi --lib --crate-type staticlib --target "$t"
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
lib=libqpq_uniffi.a
mkdir -p "$work/ios-sim" "$work/macos" "$work/headers"
lipo -create "$target/aarch64-apple-ios-sim/release/$lib" "$target/x86_64-apple-ios/release/$lib" \
  -output "$work/ios-sim/$lib"
lipo -create "$target/aarch64-apple-darwin/release/$lib" "$target/x86_64-apple-darwin/release/$lib" \
  -output "$work/macos/$lib"
cp "$here/Sources/qpq_uniffiFFI/qpq_uniffiFFI.h" "$work/headers/"
# The static library is linked by the binaryTarget itself: no `link` line in its modulemap.
grep -v '^ *link ' "$here/Sources/qpq_uniffiFFI/module.modulemap" >"$work/headers/module.modulemap"
rm -rf "$here/QpqNative.xcframework"
xcodebuild -create-xcframework \
  -library "$target/aarch64-apple-ios/release/$lib" -headers "$work/headers" \
  -library "$work/ios-sim/$lib" -headers "$work/headers" \
  -library "$work/macos/$lib" -headers "$work/headers" \
  -output "$here/QpqNative.xcframework"
echo "wrote $here/QpqNative.xcframework"
