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
  QPQ_USERNAME=$u QPQ_PASSWORD="$u-pw" QPQ_DATA_DIR="$WORK/$u" "$QPQ" "$@" --json
}

out=$(as_user alice register);  check "$out" 'j["ok"] and j["username"] == "alice" and len(j["device_key"]) == 64'
out=$(as_user bob register);    check "$out" 'j["ok"] and j["username"] == "bob"'
out=$(as_user carol register);  check "$out" 'j["ok"]'

# Registering a taken name fails with a stable code and a non-zero exit.
if out=$(QPQ_DATA_DIR="$WORK/alice2" as_user alice register); then echo "expected failure"; exit 1; fi
check "$out" 'not j["ok"] and j["code"] == "Conflict"'
# A wrong password fails with Unauthorized.
if out=$(QPQ_USERNAME=bob QPQ_PASSWORD=wrong QPQ_DATA_DIR="$WORK/bob-wrong" "$QPQ" login --json); then echo "expected failure"; exit 1; fi
check "$out" 'j["code"] == "Unauthorized"'

out=$(as_user alice login);     check "$out" 'j["ok"] and j["username"] == "alice"'
out=$(as_user alice ping);      check "$out" 'j["ok"] and 0 < j["rtt_ms"] < 5000'

out=$(as_user alice send --to bob --msg "hello bob");   check "$out" 'j["ok"] and len(j["conversation"]) == 32'
out=$(as_user alice send --to @bob --msg "second");     conv=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["conversation"])' "$out")
out=$(as_user alice send --to carol --msg "hi carol");  check "$out" 'j["ok"]'

lines=$(as_user bob recv)
check "$(echo "$lines" | sed -n 1p)" 'j["sender"] == "alice" and j["text"] == "hello bob"'
check "$(echo "$lines" | sed -n 2p)" 'j["text"] == "second" and j["conversation"] == "'"$conv"'"'
[ "$(echo "$lines" | wc -l)" -eq 2 ]
# Already received: nothing new, and no duplicates.
[ -z "$(as_user bob recv)" ]

out=$(as_user bob send --to alice --msg "hello alice"); check "$out" 'j["conversation"] == "'"$conv"'"'
out=$(as_user alice recv --follow --idle-exit-ms 1500); check "$out" 'j["sender"] == "bob" and j["text"] == "hello alice"'

out=$(as_user alice groups)
check "$out" 'j["ok"] and len(j["conversations"]) == 2 and all(c["kind"] == "Dm" for c in j["conversations"])'

# A missing user is a clear error.
if out=$(as_user alice send --to nobody --msg x); then echo "expected failure"; exit 1; fi
check "$out" 'not j["ok"] and j["code"] == "NotFound"'

echo "scripted: all checks passed"
