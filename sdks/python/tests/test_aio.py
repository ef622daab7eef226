"""quicproquo.aio: the same API awaited, events as an async iterator, task cancellation."""

from __future__ import annotations

import asyncio
import time
from typing import List

import pytest
import quicproquo as qpq
from conftest import PASSWORD, Clients, unique
from quicproquo.aio import AsyncClient


async def open_user(clients: Clients, name: str) -> AsyncClient:
    c = await AsyncClient.open(
        clients.root / unique(name),
        server=clients.server.addr,
        cert=clients.server.cert,
        passphrase="store passphrase",
        _insecure_fast_kdf=True,
    )
    clients.opened.append(c.sync_client)
    await c.register(unique(name), PASSWORD)
    return c


def test_send_and_async_for_events(clients: Clients) -> None:
    async def story() -> None:
        async with (
            await open_user(clients, "alice") as alice,
            await open_user(clients, "bob") as bob,
        ):
            bob_account = await bob.account()
            assert bob_account is not None
            g = await alice.create_group("async", post_quantum=True)
            await alice.invite(g, [bob_account.username])
            await alice.send(g, "awaited ✓")
            texts: List[str] = []

            async def read() -> None:
                async for event in bob.events(timeout=10):
                    if isinstance(event, qpq.MessageReceived):
                        texts.append(event.message.text or "")
                        return

            await asyncio.wait_for(read(), timeout=20)
            assert texts == ["awaited ✓"]
            assert [m.username for m in await alice.members(g)] == sorted(
                [(await alice.account()).username, bob_account.username]  # type: ignore[union-attr]
            )
            with pytest.raises(qpq.NotFoundError):
                await alice.invite(g, ["nobody-such-user"])

    asyncio.run(story())


def test_cancelling_the_task_ends_the_wait_and_the_client_keeps_working(
    clients: Clients,
) -> None:
    async def story() -> None:
        alice = await open_user(clients, "alice")
        while await alice.next_event(timeout=0.3) is not None:
            pass
        other = asyncio.ensure_future(alice.next_event(timeout=30))
        waiting = asyncio.ensure_future(alice.next_event(timeout=30))
        await asyncio.sleep(0.3)  # both are blocked in the engine by now
        t = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert time.monotonic() - t < 1.0
        # The other wait was not disturbed.
        assert not other.done()
        g = await alice.create_group("still working")
        assert (await alice.conversation(g)).name == "still working"
        assert await alice.ping() > 0
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        await alice.close()
        await alice.close()
        with pytest.raises(qpq.ClosedError):
            await alice.conversations()

    asyncio.run(story())


def test_an_async_for_ends_on_close(clients: Clients) -> None:
    async def story() -> None:
        alice = await open_user(clients, "alice")
        seen: List[qpq.Event] = []

        async def read() -> None:
            async for event in alice.events():
                seen.append(event)

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.3)
        await alice.close()
        await asyncio.wait_for(reader, timeout=5)

    asyncio.run(story())


def test_consent_and_block_awaited(clients: Clients) -> None:
    async def story() -> None:
        async with (
            await open_user(clients, "alice") as alice,
            await open_user(clients, "bob") as bob,
        ):
            a = await alice.account()
            b = await bob.account()
            assert a is not None and b is not None
            g = await alice.create_group("async requests")
            await alice.invite(g, [b.username])

            async def joined() -> qpq.Conversation:
                async for event in bob.events(timeout=10):
                    if isinstance(event, qpq.ConversationJoined):
                        return event.conversation
                raise AssertionError("no ConversationJoined")

            conv = await asyncio.wait_for(joined(), timeout=20)
            assert conv.consent is qpq.Consent.REQUESTED and conv.invited_by == a.username
            await bob.accept(g)
            assert (await bob.conversation(g)).consent is qpq.Consent.ALLOWED
            await bob.block(a.username)
            assert await bob.blocked() == [a.username]
            await bob.unblock(a.username)
            assert await bob.blocked() == []
            await bob.decline(g, block=True)
            assert (await bob.conversation(g)).consent is qpq.Consent.DENIED
            assert await bob.blocked() == [a.username]

    asyncio.run(story())
