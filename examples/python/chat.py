#!/usr/bin/env python3
"""A two-user terminal chat against a running qpq-server.

    QPQ_PASSWORD=... python chat.py --server HOST:PORT --cert server-cert.der \\
        --store ./alice-store --username alice --peer bob

Each side runs it with its own store and username, naming the other as ``--peer``. The
first run registers the account (later runs log in) and opens the DM with the peer. Type a
line to send it; incoming messages are printed as they arrive. Ctrl-D or Ctrl-C quits.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

import quicproquo as qpq


def show(client: qpq.Client, conversation: qpq.ConversationId) -> None:
    """Prints the peer's messages of ``conversation`` until the client is closed."""
    for event in client.events():
        if isinstance(event, qpq.MessageReceived) and event.message.conversation == conversation:
            m = event.message
            if not m.outgoing:
                print(f"\r<{m.sender}> {m.text if m.text is not None else m.body}", flush=True)
        elif isinstance(event, qpq.MessageFailed):
            print(f"\r! not delivered: {event.reason}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of the qpq-server")
    parser.add_argument("--cert", type=Path, help="the server's DER certificate to pin")
    parser.add_argument("--store", type=Path, required=True, help="your store directory")
    parser.add_argument("--username", required=True)
    parser.add_argument("--peer", required=True, help="the username to chat with")
    args = parser.parse_args(argv)
    password = os.environ.get("QPQ_PASSWORD")
    if not password:
        print("set QPQ_PASSWORD", file=sys.stderr)
        return 2
    with qpq.Client(args.store, server=args.server, cert=args.cert, passphrase=password) as client:
        _, created = client.register_or_login(args.username, password)
        print(f"{'registered' if created else 'logged in'} as {args.username}")
        try:
            dm = client.create_dm(args.peer)
        except qpq.NotFoundError:
            print(f"{args.peer} has no account yet: start their chat first", file=sys.stderr)
            return 1
        for m in client.messages(dm, limit=20):
            print(f"<{m.sender}> {m.text if m.text is not None else m.body}")
        printer = threading.Thread(target=show, args=(client, dm), daemon=True)
        printer.start()
        try:
            for line in sys.stdin:
                if line.strip():
                    client.send(dm, line.rstrip("\n"))
        except KeyboardInterrupt:
            pass
    printer.join(timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
