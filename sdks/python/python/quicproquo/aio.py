"""asyncio counterparts of :class:`quicproquo.Client`.

Every method runs the blocking call on a thread pool of the client's own (the engine releases
the GIL), so the event loop never blocks::

    async with await AsyncClient.open(path, server=addr, passphrase=pw) as alice:
        await alice.login("alice", password)
        await alice.send(group, "hi")
        async for event in alice.events():
            ...

Cancelling a task blocked in :meth:`AsyncClient.next_event` or an ``async for`` over
:meth:`AsyncClient.events` ends the wait in the engine promptly (within about 50 ms) and
raises ``asyncio.CancelledError`` in the task, as usual; other waits are not disturbed.
Other calls are not interruptible: cancelling their task abandons the result, but the call
itself completes (a message passed to ``send`` is stored and sent).
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Iterable,
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import _native
from .client import Client, ConversationRef, Listener, MessageRef, PathLike, Subscription
from .errors import ClosedError
from .types import (
    Account,
    Body,
    Conversation,
    ConversationId,
    Event,
    EventRecord,
    Member,
    Message,
    MessageId,
)

__all__ = ["AsyncClient"]

_T = TypeVar("_T")


class AsyncClient:
    """A :class:`quicproquo.Client` for asyncio; see the module's documentation.

    Create it with ``await AsyncClient.open(...)`` (same arguments as ``Client``), or wrap an
    open client with ``AsyncClient(client)``. ``max_workers`` bounds the calls that run at
    once (each blocked wait holds one worker).
    """

    def __init__(self, client: Client, *, max_workers: int = 8) -> None:
        self._client = client
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="qpq-aio")
        self._closed = False

    @classmethod
    async def open(cls, data_dir: PathLike, *, max_workers: int = 8, **kwargs: Any) -> AsyncClient:
        """Opens a :class:`quicproquo.Client` off the event loop (unlocking may take a moment)."""
        loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(None, functools.partial(Client, data_dir, **kwargs))
        return cls(client, max_workers=max_workers)

    @property
    def sync_client(self) -> Client:
        """The blocking client underneath."""
        return self._client

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            # The engine answers at once once closed (ClosedError): no thread needed.
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Closes the client (idempotent); waits in progress end, later calls raise
        :class:`~quicproquo.ClosedError`."""
        if self._closed:
            return
        await self._run(self._client.close)
        self._closed = True
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def register(self, username: str, password: str) -> Account:
        """See :meth:`quicproquo.Client.register`."""
        return await self._run(self._client.register, username, password)

    async def login(self, username: str, password: str) -> Account:
        """See :meth:`quicproquo.Client.login`."""
        return await self._run(self._client.login, username, password)

    async def register_or_login(self, username: str, password: str) -> Tuple[Account, bool]:
        """See :meth:`quicproquo.Client.register_or_login`."""
        return await self._run(self._client.register_or_login, username, password)

    async def logout(self) -> None:
        """See :meth:`quicproquo.Client.logout`."""
        await self._run(self._client.logout)

    async def account(self) -> Optional[Account]:
        """See :meth:`quicproquo.Client.account`."""
        return await self._run(self._client.account)

    async def resolve_user(self, username: str) -> Member:
        """See :meth:`quicproquo.Client.resolve_user`."""
        return await self._run(self._client.resolve_user, username)

    async def safety_number(self, username: str) -> str:
        """See :meth:`quicproquo.Client.safety_number`."""
        return await self._run(self._client.safety_number, username)

    async def ping(self) -> float:
        """See :meth:`quicproquo.Client.ping`."""
        return await self._run(self._client.ping)

    async def create_group(self, name: str, *, post_quantum: bool = False) -> ConversationId:
        """See :meth:`quicproquo.Client.create_group`."""
        return await self._run(self._client.create_group, name, post_quantum=post_quantum)

    async def create_dm(self, username: str) -> ConversationId:
        """See :meth:`quicproquo.Client.create_dm`."""
        return await self._run(self._client.create_dm, username)

    async def invite(self, conversation: ConversationRef, usernames: Iterable[str]) -> None:
        """See :meth:`quicproquo.Client.invite`."""
        names = [usernames] if isinstance(usernames, str) else list(usernames)
        await self._run(self._client.invite, conversation, names)

    async def remove(self, conversation: ConversationRef, username: str) -> None:
        """See :meth:`quicproquo.Client.remove`."""
        await self._run(self._client.remove, conversation, username)

    async def leave(self, conversation: ConversationRef) -> None:
        """See :meth:`quicproquo.Client.leave`."""
        await self._run(self._client.leave, conversation)

    async def accept(self, conversation: ConversationRef) -> None:
        """See :meth:`quicproquo.Client.accept`."""
        await self._run(self._client.accept, conversation)

    async def decline(self, conversation: ConversationRef, block: bool = False) -> None:
        """See :meth:`quicproquo.Client.decline`."""
        await self._run(self._client.decline, conversation, block)

    async def block(self, username: str) -> None:
        """See :meth:`quicproquo.Client.block`."""
        await self._run(self._client.block, username)

    async def unblock(self, username: str) -> None:
        """See :meth:`quicproquo.Client.unblock`."""
        await self._run(self._client.unblock, username)

    async def blocked(self) -> List[str]:
        """See :meth:`quicproquo.Client.blocked`."""
        return await self._run(self._client.blocked)

    async def promote(self, conversation: ConversationRef, username: str) -> None:
        """See :meth:`quicproquo.Client.promote`."""
        await self._run(self._client.promote, conversation, username)

    async def rotate_keys(self, conversation: ConversationRef) -> None:
        """See :meth:`quicproquo.Client.rotate_keys`."""
        await self._run(self._client.rotate_keys, conversation)

    async def conversations(self) -> List[Conversation]:
        """See :meth:`quicproquo.Client.conversations`."""
        return await self._run(self._client.conversations)

    async def conversation(self, conversation: ConversationRef) -> Conversation:
        """See :meth:`quicproquo.Client.conversation`."""
        return await self._run(self._client.conversation, conversation)

    async def display_name(self, conversation: ConversationRef) -> str:
        """See :meth:`quicproquo.Client.display_name`."""
        return await self._run(self._client.display_name, conversation)

    async def find_conversation(self, what: str) -> Conversation:
        """See :meth:`quicproquo.Client.find_conversation`."""
        return await self._run(self._client.find_conversation, what)

    async def members(self, conversation: ConversationRef) -> List[Member]:
        """See :meth:`quicproquo.Client.members`."""
        return await self._run(self._client.members, conversation)

    async def send(
        self,
        conversation: ConversationRef,
        body: Union[str, bytes, Body],
        *,
        content_type: Optional[str] = None,
        id: Optional[MessageRef] = None,  # noqa: A002 - the message's id
    ) -> MessageId:
        """See :meth:`quicproquo.Client.send`."""
        return await self._run(
            self._client.send, conversation, body, content_type=content_type, id=id
        )

    async def messages(
        self, conversation: ConversationRef, *, limit: int = 50, before: Optional[int] = None
    ) -> List[Message]:
        """See :meth:`quicproquo.Client.messages`."""
        return await self._run(self._client.messages, conversation, limit=limit, before=before)

    async def sync(self) -> List[Event]:
        """See :meth:`quicproquo.Client.sync`."""
        return await self._run(self._client.sync)

    async def _wait(self, call: Callable[[_native.WaitToken], _T]) -> _T:
        token = _native.WaitToken()
        if self._closed:
            return call(token)
        future = asyncio.get_running_loop().run_in_executor(self._pool, call, token)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            token.cancel()
            # The worker ends within one wait slice (an event it took meanwhile is dropped
            # with the cancelled task); let it finish before re-raising.
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved: the CancelledError the token caused
            raise

    async def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """See :meth:`quicproquo.Client.next_event`; cancelling the task ends the wait."""
        native = self._client._native
        return await self._wait(lambda token: native.next_event(timeout, token))

    async def wait_event_after(
        self, cursor: int, timeout: Optional[float] = None
    ) -> Optional[EventRecord]:
        """See :meth:`quicproquo.Client.wait_event_after`; cancelling the task ends the wait."""
        native = self._client._native
        return await self._wait(lambda token: native.wait_event_after(cursor, timeout, token))

    async def events(self, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """Events as they arrive; ends on close, or after ``timeout`` seconds without one."""
        while True:
            try:
                event = await self.next_event(timeout)
            except ClosedError:
                return
            if event is None:
                return
            yield event

    def interrupt(self) -> None:
        """See :meth:`quicproquo.Client.interrupt` (it does not block)."""
        self._client.interrupt()

    def subscribe(self, listener: Listener) -> Subscription:
        """See :meth:`quicproquo.Client.subscribe`. The listener runs on an engine thread:
        use ``loop.call_soon_threadsafe`` to hand events to the loop."""
        return self._client.subscribe(listener)

    @property
    def event_cursor(self) -> int:
        """See :attr:`quicproquo.Client.event_cursor`."""
        return self._client.event_cursor
