#!/usr/bin/env python3
"""B1 for Python: 1,000 messages alice → bob in the post-quantum group of three, next to
Rust's B1 (``qpq-bench b1``) against the same server process, in the same run.

Run it through ``sdks/python/bench/run-b1`` (release builds of the wheel and qpq-bench). It
prints both figures and their ratios, and with ``--write`` updates Python's row in the SDK
benchmarks section of docs/BENCHMARKS.md. A benchmark, not a test: it asserts nothing.

- p50: send at alice → the message event at bob, one message at a time (median);
- throughput: messages sent back to back, divided by the time until bob has them all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import quicproquo as qpq

REPO = Path(__file__).resolve().parents[3]
MARKER = "<!-- SDK benchmarks: written by each SDK's B1 benchmark, kept by qpq-bench -->"
HEADER = (
    "| SDK | p50 | p50 Rust | p50 ratio | throughput | throughput Rust | throughput ratio "
    "| build | rounds | measured |"
)
INTRO = (
    "Python (`sdks/python/bench/run-b1 --write docs/BENCHMARKS.md`, pyo3 extension): Rust's B1 "
    "is `qpq-bench b1` against the same server process in the same run, alternating rounds. "
    "p50: send at alice → message event at bob, one message at a time; throughput: messages "
    "sent back to back, divided by the time until bob has them all. Server pinned to CPU 1, "
    "clients to CPU 0.\n\n" + HEADER + "\n|---|---|---|---|---|---|---|---|---|---|\n"
)


def start_server(bench: Path, data_dir: Path) -> Tuple[subprocess.Popen[str], str, Path]:
    """``qpq-bench serve-qpq``: the real server with its limits raised, pinned to CPU 1."""
    proc = subprocess.Popen(
        [str(bench), "serve-qpq", str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    announced = json.loads(proc.stdout.readline())
    cert = data_dir.parent / "b1-cert.der"
    cert.write_bytes(bytes.fromhex(announced["cert"]))
    return proc, announced["addr"], cert


def next_text(client: qpq.Client, deadline: float) -> str:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError("B1: no message at bob in time")
        event = client.next_event(timeout=left)
        if isinstance(event, qpq.MessageReceived):
            return event.message.text or ""


def python_b1(addr: str, cert: Path, messages: int) -> Dict[str, float]:
    """Python's B1 through quicproquo; the same steps as examples/bench/src/b1.rs."""
    tag = f"py{os.getpid()}x{time.monotonic_ns() % 100000}"
    names = [f"{tag}{n}" for n in "abc"]
    with tempfile.TemporaryDirectory() as tmp:
        clients = []
        for name in names:
            c = qpq.Client(
                Path(tmp) / name,
                server=addr,
                cert=cert,
                raw_key=os.urandom(32),
                _insecure_fast_kdf=True,
            )
            c.register(name, "b1 bench password")
            clients.append(c)
        alice, bob, carol = clients
        try:
            conv = alice.create_group("scenario", post_quantum=True)
            alice.invite(conv, names[1:])
            for c in (bob, carol):
                deadline = time.monotonic() + 30
                while True:
                    e = c.next_event(timeout=max(0.0, deadline - time.monotonic()))
                    if isinstance(e, qpq.ConversationJoined) and e.conversation.id == conv:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("B1: not joined in time")
            latency: List[float] = []
            for i in range(messages):
                text = f"b1 {i}"
                t = time.perf_counter()
                alice.send(conv, text)
                while next_text(bob, time.monotonic() + 30) != text:
                    pass
                latency.append((time.perf_counter() - t) * 1e6)
            t = time.perf_counter()
            for i in range(messages):
                alice.send(conv, f"burst {i}")
            last = f"burst {messages - 1}"
            deadline = time.monotonic() + 300
            while next_text(bob, deadline) != last:
                pass
            took = time.perf_counter() - t
        finally:
            for c in clients:
                c.close()
    return {"p50_us": statistics.median(latency), "msgs_per_s": messages / took}


def rust_b1(bench: Path, addr: str, cert: Path, messages: int) -> Dict[str, float]:
    out = subprocess.run(
        [str(bench), "b1", addr, str(cert), str(messages)],
        check=True,
        capture_output=True,
        text=True,
    )
    line = json.loads(out.stdout.strip().splitlines()[-1])
    return {"p50_us": float(line["p50_us"]), "msgs_per_s": float(line["msgs_per_s"])}


def write_row(path: Path, row: str) -> None:
    """Replaces Python's row in its table after qpq-bench's SDK marker (which qpq-bench keeps
    on a rerun); adds the marker or the table if they are missing. Other SDKs' text stays."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MARKER + "\n"
    head, section = text.split(MARKER, 1)
    lines = [ln for ln in section.splitlines() if not ln.startswith("| Python |")]
    if HEADER not in lines:
        lines += ["", *INTRO.rstrip("\n").splitlines()]
    at = lines.index(HEADER) + 2
    lines.insert(at, row)
    path.write_text(head + MARKER + "\n".join(lines).rstrip("\n") + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="B1 for Python next to Rust's")
    parser.add_argument("--bench", type=Path, default=REPO / "target/release/qpq-bench")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path, help="docs/BENCHMARKS.md to update")
    parser.add_argument(
        "--build", default="release", help="how the wheel and qpq-bench were built (for the row)"
    )
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    py: List[Dict[str, float]] = []
    rs: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, addr, cert = start_server(args.bench, Path(tmp) / "server")
        try:
            for r in range(args.rounds):
                # Alternate which goes first, so drift in the machine's load hits both.
                order = ("rust", "python") if r % 2 == 0 else ("python", "rust")
                for lang in order:
                    if lang == "rust":
                        rs.append(rust_b1(args.bench, addr, cert, args.messages))
                    else:
                        py.append(python_b1(addr, cert, args.messages))
                    print(f"round {r} {lang}: {(rs if lang == 'rust' else py)[-1]}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    p50_py = statistics.median(x["p50_us"] for x in py)
    p50_rs = statistics.median(x["p50_us"] for x in rs)
    tp_py = statistics.median(x["msgs_per_s"] for x in py)
    tp_rs = statistics.median(x["msgs_per_s"] for x in rs)
    print(
        f"B1 Python: p50 {p50_py:.0f} µs vs Rust {p50_rs:.0f} µs ({p50_py / p50_rs:.2f}×); "
        f"{tp_py:.0f} msgs/s vs Rust {tp_rs:.0f} msgs/s ({tp_py / tp_rs:.2f}×)"
    )
    if args.write:
        when = time.strftime("%Y-%m-%d", time.gmtime())
        row = (
            f"| Python | {p50_py:.0f} µs | {p50_rs:.0f} µs | {p50_py / p50_rs:.2f}× "
            f"| {tp_py:.0f} msg/s | {tp_rs:.0f} msg/s | {tp_py / tp_rs:.2f}× "
            f"| {args.build} | {args.rounds} × "
            f"{args.messages} | {when}, CPython {platform.python_version()}, "
            f"{os.cpu_count()} CPUs |"
        )
        write_row(args.write, row)
        print(f"updated {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
