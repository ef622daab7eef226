"""The examples: the echo bot answers in a group; mypy --strict and ruff pass on everything."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest
import quicproquo as qpq
from conftest import REPO, Clients, wait_for

sys.path.insert(0, str(REPO / "examples" / "python"))
import echo_bot

HERE = Path(__file__).resolve().parent
PYTHON_SOURCES = [
    str(HERE),
    str(HERE.parent / "python"),
    str(HERE.parent / "bench"),
    str(REPO / "examples" / "python"),
]


def test_the_echo_bot_answers_a_message_in_a_group(clients: Clients) -> None:
    alice, bot = clients.user("alice"), clients.user("bot")
    answered: List[int] = []
    runner = threading.Thread(target=lambda: answered.append(echo_bot.run(bot)))
    runner.start()
    try:
        bot_name = bot.account().username  # type: ignore[union-attr]
        g = alice.create_group("with a bot", post_quantum=True)
        alice.invite(g, [bot_name])
        alice.send(g, "ping ✓")
        reply = wait_for(alice, qpq.MessageReceived, lambda e: e.message.sender == bot_name)
        assert reply.message.text == "echo: ping ✓"
        assert reply.message.conversation == g
        alice.send(g, b"\x00\x01binary", content_type="application/x-raw")
        raw = wait_for(
            alice,
            qpq.MessageReceived,
            lambda e: e.message.sender == bot_name and e.message.text is None,
        )
        assert raw.message.body == qpq.AppData("application/x-raw", b"\x00\x01binary")
    finally:
        bot.close()
        runner.join(timeout=10)
    assert answered == [2]


def run_tool(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=HERE.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy is not installed")
def test_mypy_strict_on_the_package_tests_and_examples() -> None:
    run_tool("mypy", "--strict", *PYTHON_SOURCES)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_on_the_package_tests_and_examples() -> None:
    run_tool("ruff", "check", *PYTHON_SOURCES)
    run_tool("ruff", "format", "--check", *PYTHON_SOURCES)
