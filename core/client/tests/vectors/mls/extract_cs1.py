#!/usr/bin/env python3
"""Copies the cipher-suite-1 cases of the MLS passive-client test vectors into this folder.

Usage: python3 extract_cs1.py [SOURCE_DIR]   (default: /work/shared/vectors/mls)

Reads passive-client-{welcome,handling-commit,random}.json from SOURCE_DIR and writes
passive-client-{...}-cs1.json here: the same JSON objects, in the same order, keeping only
those with "cipher_suite": 1. Nothing inside a case is changed.
"""

import hashlib
import json
import os
import sys

NAMES = ["welcome", "handling-commit", "random"]


def main() -> None:
    src = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/vectors/mls"
    here = os.path.dirname(os.path.abspath(__file__))
    for name in NAMES:
        path = os.path.join(src, f"passive-client-{name}.json")
        with open(path, "rb") as f:
            raw = f.read()
        cases = json.loads(raw)
        cs1 = [c for c in cases if c["cipher_suite"] == 1]
        out = os.path.join(here, f"passive-client-{name}-cs1.json")
        with open(out, "w") as f:
            json.dump(cs1, f, indent=2)
            f.write("\n")
        epochs = sum(len(c["epochs"]) for c in cs1)
        print(
            f"{os.path.basename(path)} sha256[:16]={hashlib.sha256(raw).hexdigest()[:16]}: "
            f"{len(cases)} cases, {len(cs1)} cs1 with {epochs} epochs -> "
            f"{os.path.basename(out)} ({os.path.getsize(out)} bytes)"
        )


if __name__ == "__main__":
    main()
