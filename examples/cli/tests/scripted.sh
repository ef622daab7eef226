#!/usr/bin/env bash
# The scripted subcommands as a shell user would drive them, checking their JSON output.
# Needs: QPQ (the binary), QPQ_SERVER, QPQ_CA_CERT, WORK (a scratch dir).
set -euo pipefail

check() { # check <json> <python expression over j>
  [ -n "$1" ] || { echo "empty output where JSON was expected: $2" >&2; return 1; }
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert eval(sys.argv[2]), (sys.argv[2], j)' "$1" "$2"
}
as_user() { # as_user <name> <subcommand> [args…]
  local u=$1; shift
  QPQ_USERNAME=$u QPQ_PASSWORD="$u-pw" QPQ_CLIENT_DATA_DIR="$WORK/$u" "$QPQ" "$@" --json
}

out=$(as_user alice register);  check "$out" 'j["ok"] and j["username"] == "alice" and len(j["device_key"]) == 64'
out=$(as_user bob register);    check "$out" 'j["ok"] and j["username"] == "bob"'
out=$(as_user carol register);  check "$out" 'j["ok"]'

# Registering a taken name fails with a stable code and a non-zero exit.
if out=$(QPQ_CLIENT_DATA_DIR="$WORK/alice2" "$QPQ" register --json --username alice --password alice-pw); then echo "expected failure"; exit 1; fi
check "$out" 'not j["ok"] and j["code"] == "Conflict"'
# A wrong password fails with Unauthorized, exit status 10 + 2.
set +e
out=$(QPQ_USERNAME=bob QPQ_PASSWORD=wrong QPQ_CLIENT_DATA_DIR="$WORK/bob-wrong" "$QPQ" login --json); rc=$?
set -e
check "$out" 'j["code"] == "Unauthorized"'
[ "$rc" -eq 12 ] || { echo "wrong password exit $rc, expected 12"; exit 1; }
# A wrong passphrase for an existing local store is a Storage failure (17), not bad input.
set +e
out=$(QPQ_USERNAME=bob QPQ_PASSWORD=not-bobs QPQ_CLIENT_DATA_DIR="$WORK/bob" "$QPQ" login --json); rc=$?
set -e
check "$out" 'j["code"] == "Storage"'
[ "$rc" -eq 17 ] || { echo "wrong passphrase exit $rc, expected 17"; exit 1; }
# An empty password is refused before anything is created.
set +e
out=$("$QPQ" register --json --username dora --password "" --data-dir "$WORK/dora"); rc=$?
set -e
check "$out" 'j["code"] == "InvalidInput" and "empty" in j["message"]'
[ "$rc" -eq 15 ] && [ ! -e "$WORK/dora/qpq-client.db" ]
# Usage errors honour --json, exit 2.
set +e
out=$(as_user alice send --to bob); rc=$?
set -e
check "$out" 'not j["ok"] and j["code"] == "InvalidInput"'
[ "$rc" -eq 2 ] || { echo "usage error exit $rc, expected 2"; exit 1; }

out=$(as_user alice login);     check "$out" 'j["ok"] and j["username"] == "alice"'
# ping needs only the server: no username, password or store.
out=$(env -u QPQ_USERNAME -u QPQ_PASSWORD "$QPQ" ping --json); check "$out" 'j["ok"] and 0 < j["rtt_ms"] < 5000'

out=$(as_user alice send --to bob --msg "hello bob");   check "$out" 'j["ok"] and len(j["conversation"]) == 32 and len(j["id"]) == 32'
out=$(echo "second" | as_user alice send --to @bob --msg-file -); conv=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["conversation"])' "$out")
out=$(as_user alice send --to carol --msg "hi carol");  check "$out" 'j["ok"]'

all=$(as_user bob recv)
check "$(echo "$all" | grep '"type":"joined"' | head -1)" 'j["conversation"] == "'"$conv"'" and j["conversation_name"] == "@alice"'
lines=$(echo "$all" | grep '"type":"message"')
check "$(echo "$lines" | sed -n 1p)" 'j["sender"] == "alice" and j["text"] == "hello bob" and j["conversation_name"] == "@alice"'
check "$(echo "$lines" | sed -n 2p)" 'j["text"] == "second\n" and j["conversation"] == "'"$conv"'"'
[ "$(echo "$lines" | wc -l)" -eq 2 ]
# Already received: nothing new, and no duplicates.
[ -z "$(as_user bob recv)" ]

out=$(as_user bob send --to alice --msg "hello alice"); check "$out" 'j["conversation"] == "'"$conv"'"'
out=$(as_user alice recv --follow --idle-exit-ms 1500 | grep '"type":"message"'); check "$out" 'j["sender"] == "bob" and j["text"] == "hello alice"'

out=$(as_user alice groups)
check "$out" 'j["ok"] and len(j["conversations"]) == 2 and all(c["kind"] == "Dm" for c in j["conversations"])'

# A missing user is a clear error.
set +e
out=$(as_user alice send --to nobody --msg x); rc=$?
set -e
check "$out" 'not j["ok"] and j["code"] == "NotFound"'
[ "$rc" -eq 13 ] || { echo "NotFound exit $rc, expected 13"; exit 1; }

echo "scripted: all checks passed"
