#!/usr/bin/env python3
"""A bot that answers every message in every conversation it is invited to.

    python echo_bot.py --server HOST:PORT --cert server-cert.der --store ./bot-store \\
        --username echo-bot            # the password comes from $QPQ_PASSWORD

Invitations are accepted by the engine; the bot answers each incoming text with
``echo: <text>`` and each binary payload with the same bytes, in the same conversation.
It stops on Ctrl-C, or when its client is closed from another thread.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import quicproquo as qpq


def answer(client: qpq.Client, event: qpq.Event) -> Optional[qpq.MessageId]:
    """Answers one event if it is someone else's message; returns the answer's id."""
    if not isinstance(event, qpq.MessageReceived) or event.message.outgoing:
        return None
    message = event.message
    if isinstance(message.body, qpq.Text):
        return client.send(message.conversation, f"echo: {message.body.text}")
    if isinstance(message.body, qpq.AppData):
        return client.send(
            message.conversation, message.body.data, content_type=message.body.content_type
        )
    return None


def run(client: qpq.Client) -> int:
    """Answers messages until the client is closed; returns how many it answered."""
    answered = 0
    for event in client.events():
        if isinstance(event, qpq.ConversationJoined):
            print(f"joined {client.display_name(event.conversation.id)}", flush=True)
        elif answer(client, event) is not None:
            answered += 1
    return answered


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of the qpq-server")
    parser.add_argument("--cert", type=Path, help="the server's DER certificate to pin")
    parser.add_argument("--store", type=Path, required=True, help="the bot's store directory")
    parser.add_argument("--username", default="echo-bot")
    args = parser.parse_args(argv)
    password = os.environ.get("QPQ_PASSWORD")
    if not password:
        print("set QPQ_PASSWORD", file=sys.stderr)
        return 2
    with qpq.Client(args.store, server=args.server, cert=args.cert, passphrase=password) as client:
        client.register_or_login(args.username, password)
        print(f"{args.username} is listening", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            run(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
