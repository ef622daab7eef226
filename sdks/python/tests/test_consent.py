"""Consent, blocking and who-did-what membership events, against the real server."""

from __future__ import annotations

import pytest
import quicproquo as qpq
from conftest import Clients, text_of, wait_for


def name_of(client: qpq.Client) -> str:
    account = client.account()
    assert account is not None
    return account.username


def test_a_strangers_invite_is_requested_until_accepted(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    g = alice.create_group("strangers")
    assert alice.conversation(g).consent is qpq.Consent.ALLOWED
    assert alice.conversation(g).invited_by is None
    alice.invite(g, [name_of(bob)])
    joined = wait_for(bob, qpq.ConversationJoined, lambda e: e.conversation.id == g)
    assert joined.conversation.consent is qpq.Consent.REQUESTED
    assert joined.conversation.invited_by == name_of(alice)
    assert bob.conversation(g).consent is qpq.Consent.REQUESTED
    bob.accept(g)
    assert bob.conversation(g).consent is qpq.Consent.ALLOWED
    with pytest.raises(qpq.NotFoundError):
        bob.accept(qpq.ConversationId(bytes(16)))


def test_decline_leaves_and_denies(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    g = alice.create_group("unwanted")
    alice.invite(g, [name_of(bob)])
    wait_for(bob, qpq.ConversationJoined, lambda e: e.conversation.id == g)
    bob.decline(g)
    conv = bob.conversation(g)
    assert conv.consent is qpq.Consent.DENIED and not conv.active
    left = wait_for(alice, qpq.MembersChanged, lambda e: e.conversation_id == g and bool(e.left))
    assert left.left == (name_of(bob),)
    assert bob.blocked() == []


def test_block_unblock_blocked_round_trip(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    assert alice.blocked() == []
    alice.block(name_of(bob))
    alice.block(name_of(bob))  # idempotent
    assert alice.blocked() == [name_of(bob)]
    # A blocked account cannot add this one to a group.
    g = bob.create_group("pushy")
    with pytest.raises(qpq.ForbiddenError):
        bob.invite(g, [name_of(alice)])
    alice.unblock(name_of(bob))
    alice.unblock(name_of(bob))  # idempotent
    assert alice.blocked() == []
    bob.invite(g, [name_of(alice)])
    wait_for(alice, qpq.ConversationJoined, lambda e: e.conversation.id == g)
    with pytest.raises(qpq.NotFoundError):
        alice.block("nobody-by-this-name")


def test_a_leave_is_in_members_changed_left_with_by(clients: Clients) -> None:
    alice, bob = clients.user("alice"), clients.user("bob")
    g = alice.create_group("short stay")
    alice.invite(g, [name_of(bob)])
    wait_for(bob, qpq.ConversationJoined, lambda e: e.conversation.id == g)
    alice.send(g, "welcome")
    wait_for(bob, qpq.MessageReceived, lambda e: text_of(e) == "welcome")
    bob.leave(g)
    gone = wait_for(bob, qpq.Removed, lambda e: e.conversation_id == g)
    assert gone.left and gone.by == name_of(bob)
    changed = wait_for(alice, qpq.MembersChanged, lambda e: e.conversation_id == g and bool(e.left))
    assert changed.left == (name_of(bob),) and changed.removed == () and changed.added == ()
    assert changed.by is not None
    assert alice.conversation(g).members == (name_of(alice),)
