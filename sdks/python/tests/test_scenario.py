"""SCENARIO.md, every step, in Python idioms, against a real qpq-server process.

The steps run in order and share one story (alice, bob and carol on this module's server);
each step is its own test so a failure names the step.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Type, TypeVar

import pytest
import quicproquo as qpq
from conftest import DEADLINE, Server, text_of, wait_for

E = TypeVar("E")

NAMES = ("alice", "bob", "carol")
PASSWORDS = {n: f"{n} has a long password" for n in NAMES}
PASSPHRASES = {n: f"{n}'s store passphrase" for n in NAMES}


@dataclass
class Story:
    """What the steps share."""

    server: Server
    root: Path
    clients: Dict[str, qpq.Client] = field(default_factory=dict)
    seen: Dict[str, List[qpq.Event]] = field(default_factory=dict)
    group: Optional[qpq.ConversationId] = None
    epoch_before_rotation: int = 0
    extra: List[qpq.Client] = field(default_factory=list)

    def open(self, name: str, *, fast_kdf: bool = True) -> qpq.Client:
        client = qpq.Client(
            self.root / name,
            server=self.server.addr,
            cert=self.server.cert,
            passphrase=PASSPHRASES[name],
            _insecure_fast_kdf=fast_kdf,
        )
        self.clients[name] = client
        self.seen.setdefault(name, [])
        return client

    def wait(self, name: str, kind: Type[E], match: Callable[[E], bool] = lambda _: True) -> E:
        return wait_for(self.clients[name], kind, match, seen=self.seen[name])

    def count(self, name: str, pred: Callable[[qpq.Event], bool]) -> int:
        return sum(1 for e in self.seen[name] if pred(e))

    def drain(self, name: str, quiet: float = 0.5) -> None:
        """Pulls events until none comes for ``quiet`` seconds."""
        while True:
            e = self.clients[name].next_event(timeout=quiet)
            if e is None:
                return
            self.seen[name].append(e)

    @property
    def g(self) -> qpq.ConversationId:
        assert self.group is not None
        return self.group


@pytest.fixture(scope="module")
def story(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    s = Story(server, tmp_path_factory.mktemp("scenario"))
    yield s
    for c in list(s.clients.values()) + s.extra:
        c.close()


def is_text(text: str) -> Callable[[qpq.Event], bool]:
    return lambda e: text_of(e) == text


def test_01_open_three_clients(story: Story, server: Server) -> None:
    # Alice's store uses a real passphrase KDF once; the others the cheap test KDF.
    story.open("alice", fast_kdf=False)
    story.open("bob")
    story.open("carol")
    for name in NAMES:
        assert story.clients[name].account() is None
    # Nothing on the server yet: the names are free.
    probe = story.clients["alice"]
    for name in NAMES:
        with pytest.raises(qpq.QpqError) as e:
            probe.resolve_user(name)
        assert isinstance(e.value, (qpq.NotFoundError, qpq.UnauthorizedError))


def test_02_register_all_three(story: Story) -> None:
    for name in NAMES:
        account = story.clients[name].register(name, PASSWORDS[name])
        assert account == story.clients[name].account()
        assert account.username == name
        assert isinstance(account.identity_key, qpq.IdentityKey)
        assert isinstance(account.device_key, qpq.DeviceKey)
        assert len(account.identity_key) == 32 and len(account.device_key) == 32


def test_03_wrong_password_is_unauthorized_and_creates_nothing(story: Story) -> None:
    store = story.root / "fourth"
    fourth = qpq.Client(
        store,
        server=story.server.addr,
        cert=story.server.cert,
        passphrase="fourth",
        _insecure_fast_kdf=True,
    )
    story.extra.append(fourth)
    with pytest.raises(qpq.UnauthorizedError) as e:
        fourth.login("alice", "not alice's password")
    assert e.value.code == 2 and e.value.name == "Unauthorized"
    assert fourth.account() is None
    fourth.close()
    assert not (store / "qpq-client.db").exists()


def test_04_post_quantum_group_invites_two_in_one_call(story: Story) -> None:
    alice = story.clients["alice"]
    story.group = alice.create_group("scenario", post_quantum=True)
    alice.invite(story.group, ["bob", "carol"])
    conv = alice.conversation(story.group)
    assert conv.post_quantum is True
    # X-Wing: ML-KEM-768 + X25519.
    assert conv.ciphersuite == "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519"
    assert conv.kind is qpq.ConversationKind.GROUP and conv.name == "scenario"
    for name in ("bob", "carol"):
        joined = story.wait(name, qpq.ConversationJoined, lambda e: e.conversation.id == story.g)
        assert joined.conversation.post_quantum


def test_05_members_are_the_same_three_sorted(story: Story) -> None:
    for name in NAMES:
        members = story.clients[name].members(story.g)
        assert [m.username for m in members] == ["alice", "bob", "carol"]


def test_06_non_ascii_text_reaches_each_exactly_once(story: Story) -> None:
    text = "hello from alice ✓"
    sent = story.clients["alice"].send(story.g, text)
    assert isinstance(sent, qpq.MessageId) and len(sent) == 16
    for name in ("bob", "carol"):
        event = story.wait(name, qpq.MessageReceived, is_text(text))
        m = event.message
        assert (m.text, m.sender, m.outgoing, m.id) == (text, "alice", False, sent)
    history = story.clients["alice"].messages(story.g)
    mine = [m for m in history if m.id == sent]
    assert len(mine) == 1 and mine[0].outgoing and mine[0].text == text


def test_07_bob_replies_to_both(story: Story) -> None:
    story.clients["bob"].send(story.g, "hi from bob")
    for name in ("alice", "carol"):
        story.wait(name, qpq.MessageReceived, is_text("hi from bob"))


def test_08_carol_catches_up_after_reopening(story: Story) -> None:
    carol = story.clients["carol"]
    carol.close()
    story.clients["alice"].send(story.g, "while you were away")
    carol = story.open("carol")
    story.wait("carol", qpq.MessageReceived, is_text("while you were away"))
    texts = [m.text for m in carol.messages(story.g)]
    assert "hello from alice ✓" in texts and "hi from bob" in texts
    assert texts.count("while you were away") == 1


def test_09_remove_carol(story: Story) -> None:
    story.clients["alice"].remove(story.g, "carol")
    removed = story.wait("carol", qpq.Removed, lambda e: e.conversation_id == story.g)
    assert removed.by == "alice" and not removed.left
    changed = story.wait(
        "bob", qpq.MembersChanged, lambda e: e.conversation_id == story.g and bool(e.removed)
    )
    assert changed.removed == ("carol",) and changed.left == () and changed.by == "alice"


def test_10_carol_gets_nothing_after_removal(story: Story) -> None:
    story.clients["alice"].send(story.g, "after removal")
    story.wait("bob", qpq.MessageReceived, is_text("after removal"))
    deadline = time.monotonic() + 2.0
    while (left := deadline - time.monotonic()) > 0:
        e = story.clients["carol"].next_event(timeout=left)
        if e is not None:
            story.seen["carol"].append(e)
            assert not isinstance(e, qpq.MessageReceived), e


def test_11_rotation_advances_the_epoch_for_both(story: Story) -> None:
    alice, bob = story.clients["alice"], story.clients["bob"]
    before = alice.conversation(story.g).epoch
    assert bob.conversation(story.g).epoch == before
    bob.rotate_keys(story.g)
    alice.send(story.g, "after rotation")
    story.wait("bob", qpq.MessageReceived, is_text("after rotation"))
    deadline = time.monotonic() + DEADLINE
    while alice.conversation(story.g).epoch != bob.conversation(story.g).epoch:
        assert time.monotonic() < deadline, "the epochs did not converge"
        e = alice.next_event(timeout=0.2)
        if e is not None:
            story.seen["alice"].append(e)
    assert alice.conversation(story.g).epoch > before


def test_12_safety_numbers_agree(story: Story) -> None:
    a = story.clients["alice"].safety_number("bob")
    b = story.clients["bob"].safety_number("alice")
    assert a == b
    assert len(a.replace(" ", "")) == 60


def test_13_typed_errors_and_the_client_keeps_working(story: Story) -> None:
    alice = story.clients["alice"]
    with pytest.raises(qpq.NotFoundError):
        alice.invite(story.g, ["nobody-such-user"])
    with pytest.raises(qpq.NotFoundError):
        alice.send(qpq.ConversationId(os.urandom(16)), "to nowhere")
    with pytest.raises(qpq.InvalidInputError):
        alice.send("not-a-conversation-id", "malformed")
    alice.send(story.g, "still working")
    story.wait("bob", qpq.MessageReceived, is_text("still working"))


def test_14_next_event_times_out_after_200_ms(story: Story) -> None:
    story.drain("bob")
    t = time.monotonic()
    assert story.clients["bob"].next_event(timeout=0.2) is None
    elapsed = time.monotonic() - t
    assert 0.15 <= elapsed < 2.0, elapsed


def test_15_a_blocked_wait_is_cancelled_from_another_thread(story: Story) -> None:
    bob = story.clients["bob"]
    outcome: List[BaseException] = []
    returned_at: List[float] = []

    def wait() -> None:
        try:
            bob.next_event(timeout=30)
        except BaseException as e:
            outcome.append(e)
        returned_at.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)  # the waiter is blocked in the engine by now
    interrupted_at = time.monotonic()
    bob.interrupt()
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], qpq.CancelledError), outcome
    assert returned_at[0] - interrupted_at < 1.0
    # The client still works.
    bob.send(story.g, "after the interrupt")
    story.wait("alice", qpq.MessageReceived, is_text("after the interrupt"))


def test_16_close_twice_then_closed(story: Story) -> None:
    # Exactly once, over the whole story: each joined event, and each message event.
    for name in ("bob", "carol"):
        story.drain(name, quiet=0.3)
        joined = story.count(
            name, lambda e: isinstance(e, qpq.ConversationJoined) and e.conversation.id == story.g
        )
        assert joined == 1, (name, story.seen[name])
    for name, texts in {
        "bob": ["hello from alice ✓", "while you were away", "after removal", "after rotation"],
        "carol": ["hello from alice ✓", "hi from bob", "while you were away"],
    }.items():
        for text in texts:
            assert story.count(name, is_text(text)) == 1, (name, text)
    for client in list(story.clients.values()):
        client.close()
        client.close()
    for client in story.clients.values():
        with pytest.raises(qpq.ClosedError):
            client.conversations()
        with pytest.raises(qpq.ClosedError):
            client.send(story.g, "after close")
