"""Fixtures: a real qpq-server process per test module, and clients on fresh stores.

The server binary is ``$QPQ_SERVER_BIN``, else ``<repo>/target/debug/qpq-server``
(built with ``cargo build -p qpq-server`` when missing). It listens on a free loopback port
with its own temporary data dir; clients pin the certificate it writes there.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Type, TypeVar

import pytest
import quicproquo as qpq

REPO = Path(__file__).resolve().parents[3]
#: Every wait for an event has this deadline (SCENARIO.md).
DEADLINE = 10.0
PASSWORD = "correct horse battery staple"

E = TypeVar("E")


@dataclass
class Server:
    """A running qpq-server: its address and the certificate clients pin."""

    addr: str
    cert: Path
    data_dir: Path
    process: subprocess.Popen[bytes]


def server_binary() -> Path:
    """The qpq-server to run, built from the workspace when it is not there yet."""
    given = os.environ.get("QPQ_SERVER_BIN")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / "qpq-server"
    if not binary.exists():
        subprocess.run(
            ["cargo", "build", "-p", "qpq-server", "--bin", "qpq-server"], cwd=REPO, check=True
        )
    return binary


def start_server(data_dir: Path) -> Server:
    """Starts qpq-server on 127.0.0.1:0 and waits for its "listening" log line."""
    log = data_dir.parent / (data_dir.name + ".log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(server_binary()),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--log-format",
                "json",
                "--config",
                os.devnull,
                # As qpq-server's Config::ephemeral: every client comes from 127.0.0.1, and
                # the test machine's disk is shared and small.
                "--registrations-per-ip",
                "0",
                "--ip-rate-per-sec",
                "0",
                "--health-rate-per-sec",
                "0",
                "--min-free-disk-bytes",
                "0",
            ],
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "qpq-server listening":
                return Server(fields["listen"], data_dir / "server-cert.der", data_dir, process)
        if process.poll() is not None:
            raise RuntimeError(f"qpq-server exited: {log.read_text(errors='replace')}")
        time.sleep(0.02)
    process.kill()
    raise RuntimeError("qpq-server did not start in 60 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A qpq-server process for one test module."""
    s = start_server(tmp_path_factory.mktemp("server") / "data")
    yield s
    s.process.terminate()
    try:
        s.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        s.process.kill()


_names = itertools.count(1)


def unique(name: str) -> str:
    """A username no other test of this run uses."""
    return f"{name}{os.getpid()}x{next(_names)}"


@dataclass
class Clients:
    """Opens clients on fresh store directories, and closes them all at the end."""

    server: Server
    root: Path
    opened: List[qpq.Client] = field(default_factory=list)

    def open(self, store: Optional[Path] = None, **kwargs: object) -> qpq.Client:
        """A client on ``store`` (a fresh directory by default) with the cheap test KDF."""
        if store is None:
            store = self.root / f"store{len(self.opened)}"
        args: dict[str, object] = {
            "server": self.server.addr,
            "cert": self.server.cert,
            "passphrase": "store passphrase",
            "_insecure_fast_kdf": True,
        }
        args.update(kwargs)
        client = qpq.Client(store, **args)  # type: ignore[arg-type]
        self.opened.append(client)
        return client

    def user(self, name: str) -> qpq.Client:
        """A client with a freshly registered, logged-in account named ``unique(name)``."""
        client = self.open()
        client.register(unique(name), PASSWORD)
        return client


@pytest.fixture
def clients(server: Server, tmp_path: Path) -> Iterator[Clients]:
    """A factory of clients against the module's server."""
    c = Clients(server, tmp_path)
    yield c
    for client in c.opened:
        client.close()


def wait_for(
    client: qpq.Client,
    kind: Type[E],
    match: Callable[[E], bool] = lambda _: True,
    *,
    seen: Optional[List[qpq.Event]] = None,
    timeout: float = DEADLINE,
) -> E:
    """Pulls events until one of type ``kind`` matches; fails at the deadline.

    Every event pulled is appended to ``seen`` (for exactly-once checks).
    """
    deadline = time.monotonic() + timeout
    pulled: List[qpq.Event] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout} s; saw {pulled}")
        event = client.next_event(timeout=min(left, 1.0))
        if event is None:
            continue
        pulled.append(event)
        if seen is not None:
            seen.append(event)
        if isinstance(event, kind) and match(event):
            return event


def text_of(event: qpq.Event) -> Optional[str]:
    """The text of a message event, else ``None``."""
    return event.message.text if isinstance(event, qpq.MessageReceived) else None
