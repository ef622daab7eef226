#!/usr/bin/env bash
# Builds libqpq_uniffi.so for the Android ABIs into an app's jniLibs directory, with 16 KiB
# page alignment, then checks the alignment. Needs the Android NDK (ANDROID_NDK_HOME) and
# cargo-ndk (`cargo install cargo-ndk`) and the rustup targets; none of them exist on the
# project's machines, so this script has never run here (see ANDROID.md).
# Usage: build-android.sh OUT_JNILIBS_DIR   (e.g. app/src/main/jniLibs)
set -euo pipefail
out=${1:?usage: build-android.sh OUT_JNILIBS_DIR}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android
# max-page-size=16384: every LOAD segment aligned to 16 KiB (NDK r27 and older default to 4 KiB).
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-z,max-page-size=16384"
cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 --platform 24 -o "$out" \
  build --release -p qpq-uniffi
for so in "$out"/*/libqpq_uniffi.so; do
  "${ANDROID_NDK_HOME:?}"/toolchains/llvm/prebuilt/*/bin/llvm-strip --strip-unneeded "$so"
done
python3 "$here/check-16k-alignment.py" "$out"/*/libqpq_uniffi.so
