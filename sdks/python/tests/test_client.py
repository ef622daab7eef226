"""The binding and the Python idioms: errors, ids, bodies, threads, the GIL, signals."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest
import quicproquo as qpq
from conftest import REPO, Clients, text_of, unique, wait_for
from quicproquo import _native


def error_table() -> List[tuple[int, str]]:
    """(number, name) of every row of core's pinned table, core/client/errors.toml."""
    text = (REPO / "core" / "client" / "errors.toml").read_text()
    rows = []
    for block in text.split("[[code]]")[1:]:
        number = re.search(r"^number = (\d+)$", block, re.M)
        name = re.search(r'^name = "(\w+)"$', block, re.M)
        assert number and name, block
        rows.append((int(number.group(1)), name.group(1)))
    return rows


def test_one_exception_class_per_code_of_the_pinned_table() -> None:
    table = error_table()
    assert len(table) >= 15
    for number, name in table:
        cls = getattr(qpq, f"{name}Error")
        assert issubclass(cls, qpq.QpqError)
        assert number == cls.CODE, name
        e = qpq.errors._from_core(number, "m", None)
        assert type(e) is cls and e.code == number and e.name == name
    # Nothing more in Python than in the table, and the engine agrees with both.
    classes = {
        c.CODE
        for c in vars(qpq.errors).values()
        if isinstance(c, type) and issubclass(c, qpq.QpqError) and c is not qpq.QpqError
    }
    assert classes == {n for n, _ in table}
    assert list(_native.ERROR_CODES) == table


def test_an_unknown_code_is_a_plain_qpq_error_and_retry_after_is_kept() -> None:
    e = qpq.errors._from_core(999, "from the future", 1.5)
    assert type(e) is qpq.QpqError and e.code == 999 and e.name == "Unknown"
    assert e.retry_after == 1.5 and str(e) == "from the future"


def test_ids_are_bytes_with_hex_forms() -> None:
    raw = bytes(range(16))
    cid = qpq.ConversationId(raw)
    assert cid == raw and isinstance(cid, bytes)
    assert str(cid) == raw.hex() and qpq.ConversationId.from_hex(raw.hex().upper()) == cid
    assert repr(cid) == f"ConversationId('{raw.hex()}')"
    for bad in (b"short", "zz" * 16, "ab" * 15):
        with pytest.raises(qpq.InvalidInputError):
            qpq.ConversationId(bad)
    key = qpq.DeviceKey(bytes(32))
    assert qpq.DeviceKey.LEN == 32 and str(key) == "00" * 32
    with pytest.raises(qpq.InvalidInputError):
        qpq.IdentityKey(bytes(16))


def test_opening_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(qpq.InvalidInputError):
        qpq.Client(tmp_path, server="127.0.0.1:9")  # no key
    with pytest.raises(qpq.InvalidInputError):
        qpq.Client(tmp_path, server="127.0.0.1:9", raw_key=b"short")
    with pytest.raises(qpq.InvalidInputError):
        qpq.Client(tmp_path, server="127.0.0.1:9", passphrase="p", fingerprint="zz")


def test_a_second_client_on_one_store_is_busy_and_a_wrong_key_is_storage(
    clients: Clients, tmp_path: Path
) -> None:
    store = tmp_path / "shared"
    first = clients.open(store)
    first.register(unique("busy"), "pw pw pw pw")
    with pytest.raises(qpq.BusyError):
        clients.open(store)
    first.close()
    with pytest.raises(qpq.StorageError):
        clients.open(store, passphrase="not the passphrase")
    again = clients.open(store)  # the right key, after the lease was released
    assert again.account() is not None


def test_group_text_bytes_history_and_delivery_events(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    bob_name = bob.account().username  # type: ignore[union-attr]
    g = alice.create_group("bytes", post_quantum=False)
    alice.invite(g, bob_name)  # one name as a str works too
    wait_for(bob, qpq.ConversationJoined, lambda e: e.conversation.id == g)
    payload = bytes(range(256)) * 4
    sent = alice.send(g, payload, content_type="application/x-test")
    got = wait_for(bob, qpq.MessageReceived, lambda e: e.message.id == sent)
    assert got.message.body == qpq.AppData("application/x-test", payload)
    assert got.message.text is None
    wait_for(alice, qpq.MessageSent, lambda e: e.message_id == sent)
    [mine] = [m for m in alice.messages(g) if m.id == sent]
    assert mine.delivery is qpq.Delivery.SENT and mine.outgoing
    with pytest.raises(qpq.InvalidInputError):
        alice.send(g, "")
    with pytest.raises(qpq.InvalidInputError):
        alice.send(g, qpq.Reaction(sent, "👍"))  # reserved kinds cannot be sent yet
    with pytest.raises(qpq.InvalidInputError):
        alice.send(g, "text", content_type="text/plain")
    # A caller-chosen id is sent once, however often it is passed.
    mid = qpq.MessageId(os.urandom(16))
    assert alice.send(g, "once", id=mid) == mid
    assert alice.send(g, "once", id=mid) == mid
    wait_for(bob, qpq.MessageReceived, lambda e: e.message.id == mid)
    # Paging backwards with `before`.
    history = bob.messages(g, limit=1)
    assert len(history) == 1 and history[0].id == mid
    older = bob.messages(g, limit=10, before=history[0].received_at_ms)
    assert [m.id for m in older] == [sent]
    assert bob.find_conversation("bytes").id == g
    assert bob.display_name(g) == "bytes"


def test_dm_members_and_resolve(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    bob_name = bob.account().username  # type: ignore[union-attr]
    dm = alice.create_dm(bob_name)
    joined = wait_for(bob, qpq.ConversationJoined, lambda e: e.conversation.id == dm)
    assert joined.conversation.kind is qpq.ConversationKind.DM
    member = alice.resolve_user(bob_name)
    assert member.username == bob_name and len(member.devices) == 1
    assert member.identity_key == bob.account().identity_key  # type: ignore[union-attr]
    assert sorted(m.username for m in alice.members(dm)) == sorted(
        [alice.account().username, bob_name]  # type: ignore[union-attr]
    )
    with pytest.raises(qpq.NotFoundError):
        alice.resolve_user(unique("nobody"))
    assert alice.ping() > 0


def test_two_threads_use_one_client_at_once(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    g = alice.create_group("threads")
    alice.invite(g, [bob.account().username])  # type: ignore[union-attr]
    wait_for(bob, qpq.ConversationJoined)
    errors: List[BaseException] = []

    def send(prefix: str) -> None:
        try:
            for i in range(15):
                alice.send(g, f"{prefix}{i}")
                alice.conversations()  # reads interleave with the other thread's sends
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=send, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    want = {f"{p}{i}" for p in "ab" for i in range(15)}
    got: List[str] = []
    while len(got) < len(want):
        e = wait_for(bob, qpq.MessageReceived)
        got.append(e.message.text or "")
    assert sorted(got) == sorted(want)


def test_the_gil_is_released_during_a_blocking_receive(clients: Clients) -> None:
    alice = clients.user("alice")
    while alice.next_event(timeout=0.3) is not None:
        pass  # nothing pending: the wait below lasts its whole timeout
    counter = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        time.sleep(0.05)
        before = counter[0]
        assert alice.next_event(timeout=0.5) is None
        advanced = counter[0] - before
    finally:
        stop.set()
        t.join()
    # Holding the GIL for the 0.5 s wait would have let the counter move at most once.
    assert advanced >= 10, advanced


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_events(clients: Clients) -> None:
    alice = clients.user("alice")
    assert threading.current_thread() is threading.main_thread()
    # A process started in the background by a shell without job control inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: install it here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    # Should the signal not interrupt the wait, this ends it (and the test fails) instead
    # of hanging the suite.
    watchdog = threading.Timer(10, alice.interrupt)
    started = time.monotonic()
    timer.start()
    watchdog.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in alice.events():
                pass
    finally:
        watchdog.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 5
    assert alice.account() is not None  # still usable


def test_events_ends_on_close_and_interrupt_cancels_it(clients: Clients) -> None:
    alice = clients.user("alice")
    outcome: List[object] = []

    def loop() -> None:
        try:
            outcome.extend(alice.events())
            outcome.append("ended")
        except qpq.CancelledError as e:
            outcome.append(e)

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.2)
    alice.interrupt()
    t.join(timeout=5)
    assert isinstance(outcome[-1], qpq.CancelledError), outcome
    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.2)
    alice.close()
    t.join(timeout=5)
    assert outcome.count("ended") == 1
    assert list(alice.events(timeout=0.1)) == []


def test_listener_gets_events_on_its_thread_until_cancelled(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    got: List[qpq.Event] = []
    threads: List[str] = []
    arrived = threading.Event()

    def listener(event: qpq.Event) -> None:
        got.append(event)
        threads.append(threading.current_thread().name)
        if text_of(event) == "to the listener":
            arrived.set()

    with bob.subscribe(listener):
        g = alice.create_group("listened")
        alice.invite(g, [bob.account().username])  # type: ignore[union-attr]
        alice.send(g, "to the listener")
        assert arrived.wait(10)
    assert any(isinstance(e, qpq.ConversationJoined) for e in got)
    assert threading.current_thread().name not in threads
    # Cancelled: events go back to next_event.
    alice.send(g, "to the queue")
    wait_for(bob, qpq.MessageReceived, lambda e: e.message.text == "to the queue")


def test_sync_and_cursors(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    g = alice.create_group("cursors")
    alice.invite(g, [bob.account().username])  # type: ignore[union-attr]
    wait_for(bob, qpq.ConversationJoined)
    start = bob.event_cursor
    alice.send(g, "numbered")
    record = bob.wait_event_after(start, timeout=10)
    while record is not None and text_of(record.event) != "numbered":
        record = bob.wait_event_after(record.cursor, timeout=10)
    assert record is not None and record.cursor > start
    assert isinstance(bob.sync(), list)


def test_the_version_is_the_installed_distribution_s() -> None:
    from importlib.metadata import version

    assert qpq.__version__ == version("quicproquo")
