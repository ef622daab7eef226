#!/usr/bin/env bash
# Builds libqpq (debug) and qpq-server from the workspace, installs libqpq into a temporary
# prefix, builds examples/c with its Makefile (pkg-config), starts a qpq-server on a free
# loopback port and runs the example and the error-path tests against it; then both again
# under valgrind (definite leaks and invalid accesses fail the run) unless QPQ_NO_VALGRIND=1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
tmp="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

"$repo/ffi/install.sh" "$tmp/prefix" debug >/dev/null
cargo build -q --manifest-path "$repo/Cargo.toml" -p qpq-server --bin qpq-server
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
make -s -C "$here" clean all

# The server: ephemeral port, its own data dir; the address comes from its JSON log line.
mkdir -p "$tmp/server"
: >"$tmp/server.log" # exists before the server's shell opens it, for the reads below
"$CARGO_TARGET_DIR/debug/qpq-server" --listen 127.0.0.1:0 --log-format json --log-level warn,qpq_server=info \
  --data-dir "$tmp/server" 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 100); do
  addr="$(sed -n 's/.*"listen":"\([0-9.:]*\)".*/\1/p' "$tmp/server.log" | head -1 || true)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { cat "$tmp/server.log"; echo "qpq-server did not start" >&2; exit 1; }
cert="$tmp/server/server-cert.der"

run() { # name, then the command prefix
  local name="$1"; shift
  rm -rf "$tmp/work"; mkdir -p "$tmp/work"
  # A fresh server state per run: each program registers the same usernames.
  "$@" "$here/$name" "$addr" "$cert" "$tmp/work"
}
restart_server() {
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  rm -rf "$tmp/server"; mkdir -p "$tmp/server"; : >"$tmp/server.log"
  "$CARGO_TARGET_DIR/debug/qpq-server" --listen "$addr" --log-format json --log-level warn,qpq_server=info \
    --data-dir "$tmp/server" 2>"$tmp/server.log" &
  server_pid=$!
  for _ in $(seq 100); do grep -q '"listen"' "$tmp/server.log" && break; sleep 0.1; done
}

echo "== C example"; run chat
restart_server; echo "== C error paths"; run errors
if [ "${QPQ_NO_VALGRIND:-0}" != 1 ]; then
  # A fresh machine may lack it: install it from the Debian packages (as 20-kotlin does Maven).
  command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; } || true
  command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
  vg=(valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite
      --error-exitcode=1 --suppressions="$here/valgrind.supp")
  [ "${QPQ_VALGRIND_SUMMARY:-0}" = 1 ] || vg+=(-q) # QPQ_VALGRIND_SUMMARY=1 prints the summaries
  restart_server; echo "== C example under valgrind"; run chat "${vg[@]}"
  restart_server; echo "== C error paths under valgrind"; run errors "${vg[@]}"
fi
echo "C suite: ok"
