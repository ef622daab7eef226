"""The blocking :class:`Client`: one account, one encrypted store, one server connection."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Type, Union

from . import _native
from .errors import ClosedError, InvalidInputError
from .types import (
    Account,
    AppData,
    Body,
    Conversation,
    ConversationId,
    Event,
    EventRecord,
    Member,
    Message,
    MessageId,
    Text,
)

__all__ = ["Client", "ConversationRef", "Listener", "MessageRef", "Subscription"]

#: A conversation: a :class:`ConversationId`, any 16 bytes, or its 32 hex digits.
ConversationRef = Union[ConversationId, bytes, str]
#: A message id: a :class:`MessageId`, any 16 bytes, or its 32 hex digits.
MessageRef = Union[MessageId, bytes, str]
#: A callable that receives events on a thread of the engine's.
Listener = Callable[[Event], None]
PathLike = Union[str, "os.PathLike[str]"]


def _body(body: Union[str, bytes, Body], content_type: Optional[str]) -> Body:
    if isinstance(body, str):
        if content_type is not None:
            raise InvalidInputError("content_type= goes with a bytes body, not with text")
        return Text(body)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return AppData(content_type or "application/octet-stream", bytes(body))
    if content_type is not None:
        raise InvalidInputError("content_type= goes with a bytes body")
    return body


class Subscription:
    """Stops one listener's deliveries when cancelled (or used as a context manager)."""

    def __init__(self, native: _native.NativeSubscription) -> None:
        self._native = native

    def cancel(self) -> None:
        """Stops deliveries. Events already handed to the listener are still delivered."""
        self._native.cancel()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.cancel()


class Client:
    """A qpq client: one account, one encrypted store in ``data_dir``, one server.

    Opening needs no network. Every method blocks until done and releases the GIL meanwhile,
    so other threads keep running; one client may be used from several threads at once.
    Reads (:meth:`conversations`, :meth:`messages`, :meth:`account`) never wait for the
    network. Use it as a context manager, or call :meth:`close`; after closing every call
    raises :class:`~quicproquo.ClosedError`.

    Trust in the server: ``cert`` pins its certificate (DER bytes, or a path to a DER file),
    ``fingerprint`` pins the SHA-256 of its certificate (64 hex digits, ``:`` allowed); with
    neither the WebPKI roots are used. The store is unlocked by ``passphrase`` (stretched with
    Argon2id) or by a 32-byte ``raw_key`` (e.g. from a keyring). Another client or process
    holding the store gives :class:`~quicproquo.BusyError` at once, or after ``lock_timeout``
    seconds. A wrong key gives :class:`~quicproquo.StorageError` and leaves the store as it was.
    """

    def __init__(
        self,
        data_dir: PathLike,
        *,
        server: str,
        passphrase: Optional[str] = None,
        raw_key: Optional[bytes] = None,
        cert: Union[bytes, PathLike, None] = None,
        fingerprint: Optional[str] = None,
        server_name: str = "localhost",
        request_timeout: float = 15.0,
        lock_timeout: float = 0.0,
        _insecure_fast_kdf: bool = False,
    ) -> None:
        cert_der: Optional[bytes] = None
        cert_file: Optional[str] = None
        if isinstance(cert, (bytes, bytearray)):
            cert_der = bytes(cert)
        elif cert is not None:
            cert_file = os.fspath(cert)
        self._native = _native.NativeClient.open(
            os.fspath(data_dir),
            server,
            passphrase=passphrase,
            raw_key=raw_key,
            cert_der=cert_der,
            cert_file=cert_file,
            fingerprint=fingerprint,
            server_name=server_name,
            request_timeout=request_timeout,
            lock_timeout=lock_timeout,
            insecure_fast_kdf=_insecure_fast_kdf,
        )
        self._data_dir = Path(data_dir)

    @property
    def data_dir(self) -> Path:
        """The store's directory."""
        return self._data_dir

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stops background receive, closes the connection and releases the store.

        Idempotent. Blocked waits in other threads raise :class:`~quicproquo.ClosedError`
        (an :meth:`events` loop just ends); later calls raise it too.
        """
        self._native.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- account -------------------------------------------------------------------------

    def register(self, username: str, password: str) -> Account:
        """Registers ``username`` (OPAQUE: the password never leaves this device) and logs in.

        :class:`~quicproquo.ConflictError` when the name is taken.
        """
        return self._native.register(username, password)

    def login(self, username: str, password: str) -> Account:
        """Logs in; a wrong password raises :class:`~quicproquo.UnauthorizedError`.

        The session is kept in the store: a reopened client stays logged in.
        """
        return self._native.login(username, password)

    def register_or_login(self, username: str, password: str) -> Tuple[Account, bool]:
        """Registers on first use, else logs in. Returns the account and whether it is new."""
        return self._native.register_or_login(username, password)

    def logout(self) -> None:
        """Ends the session (best effort). Keys, groups and history stay in the store."""
        self._native.logout()

    def account(self) -> Optional[Account]:
        """The account in this store (logged in or not), or ``None`` before registering."""
        return self._native.account()

    def resolve_user(self, username: str) -> Member:
        """Looks a user up on the server; :class:`~quicproquo.NotFoundError` when unknown."""
        return self._native.resolve_user(username)

    def safety_number(self, username: str) -> str:
        """The safety number between this account and ``username`` (60 digits, 12 groups)."""
        return self._native.safety_number(username)

    def ping(self) -> float:
        """Round-trip time of a health call to the server, in seconds."""
        return self._native.ping()

    # -- conversations -------------------------------------------------------------------

    def create_group(self, name: str, *, post_quantum: bool = False) -> ConversationId:
        """Creates a group; ``post_quantum=True`` picks the X-Wing (ML-KEM-768 + X25519) suite."""
        return self._native.create_group(name, post_quantum)

    def create_dm(self, username: str) -> ConversationId:
        """Creates (or reuses) the DM with ``username``, inviting all of their devices."""
        return self._native.create_dm(username)

    def invite(self, conversation: ConversationRef, usernames: Iterable[str]) -> None:
        """Adds every device of every named user in one commit.

        :class:`~quicproquo.NotFoundError` for an unknown user,
        :class:`~quicproquo.AlreadyMemberError` for a member.
        """
        names = [usernames] if isinstance(usernames, str) else list(usernames)
        self._native.invite(conversation, names)

    def remove(self, conversation: ConversationRef, username: str) -> None:
        """Removes every device of ``username`` (admins only in groups with roles)."""
        self._native.remove(conversation, username)

    def leave(self, conversation: ConversationRef) -> None:
        """Leaves the conversation; the local group state is dropped, history kept."""
        self._native.leave(conversation)

    def accept(self, conversation: ConversationRef) -> None:
        """Accepts a conversation whose :attr:`~quicproquo.Conversation.consent` is
        ``REQUESTED``: it becomes ``ALLOWED`` and its members count as contacts. Local only;
        sending in the conversation accepts it too. :class:`~quicproquo.NotFoundError` for an
        unknown conversation."""
        self._native.accept(conversation)

    def decline(self, conversation: ConversationRef, block: bool = False) -> None:
        """Declines a conversation: leaves it if still a member (as :meth:`leave`) and marks
        it ``DENIED``; its history stays. With ``block``, also blocks the account that invited
        this one (see :meth:`block`)."""
        self._native.decline(conversation, block)

    def block(self, username: str) -> None:
        """Blocks ``username`` on the server: its messages no longer reach any device of this
        account and it cannot add this account to a group or DM. Commits of shared groups
        still arrive. Idempotent; :class:`~quicproquo.NotFoundError` for an unknown user. It
        leaves and declines nothing by itself."""
        self._native.block(username)

    def unblock(self, username: str) -> None:
        """Ends a block made by :meth:`block`. Idempotent."""
        self._native.unblock(username)

    def blocked(self) -> List[str]:
        """Usernames this account blocks, as the server stores them."""
        return self._native.blocked()

    def promote(self, conversation: ConversationRef, username: str) -> None:
        """Makes ``username`` an admin of the group (admins only)."""
        self._native.promote(conversation, username)

    def rotate_keys(self, conversation: ConversationRef) -> None:
        """Commits fresh key material for this device (a new epoch)."""
        self._native.rotate_keys(conversation)

    def conversations(self) -> List[Conversation]:
        """Every local conversation, active or not. Local only."""
        return self._native.conversations()

    def conversation(self, conversation: ConversationRef) -> Conversation:
        """One conversation; :class:`~quicproquo.NotFoundError` when unknown. Local only."""
        return self._native.conversation(conversation)

    def display_name(self, conversation: ConversationRef) -> str:
        """The group's name, or ``@peer`` for a DM or an unnamed group."""
        return self._native.display_name(conversation)

    def find_conversation(self, what: str) -> Conversation:
        """A conversation by list position (``"#2"``), hex id prefix, name, or ``"@bob"``.

        Several matches raise :class:`~quicproquo.InvalidInputError` naming them: never a guess.
        """
        return self._native.find_conversation(what)

    def members(self, conversation: ConversationRef) -> List[Member]:
        """The members as the MLS group sees them, one per account."""
        return self._native.members(conversation)

    # -- messages ------------------------------------------------------------------------

    def send(
        self,
        conversation: ConversationRef,
        body: Union[str, bytes, Body],
        *,
        content_type: Optional[str] = None,
        id: Optional[MessageRef] = None,  # noqa: A002 - the message's id
    ) -> MessageId:
        """Queues a message and returns its id once it is stored locally.

        ``body`` is text (``str``), an application payload (``bytes``, with ``content_type``,
        default ``application/octet-stream``), or a body dataclass. Delivery is reported later
        by a :class:`~quicproquo.MessageSent` or :class:`~quicproquo.MessageFailed` event,
        never as an error here. Pass your own ``id`` (16 random bytes kept before calling) to
        make a retry after a crash safe: a known id is not sent twice.
        """
        return self._native.send(conversation, _body(body, content_type), id)

    def messages(
        self, conversation: ConversationRef, *, limit: int = 50, before: Optional[int] = None
    ) -> List[Message]:
        """Up to ``limit`` messages, oldest first; ``before`` (a ``received_at_ms``) pages back.

        Reading the latest page clears the conversation's ``unread``. Local only.
        """
        return self._native.messages(conversation, limit, before)

    # -- events --------------------------------------------------------------------------

    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (``None``: forever).

        Returns ``None`` at the timeout. Raises :class:`~quicproquo.CancelledError` when
        :meth:`interrupt` is called meanwhile, :class:`~quicproquo.ClosedError` once closed,
        and ``KeyboardInterrupt`` on Ctrl-C. Events go to subscribed listeners instead while
        any exists.
        """
        return self._native.next_event(timeout)

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """Iterates over events as they arrive; ends when the client is closed.

        ``timeout`` (seconds) also ends it after that long without an event. An
        :meth:`interrupt` raises :class:`~quicproquo.CancelledError` from the loop.
        """
        while True:
            try:
                event = self._native.next_event(timeout)
            except ClosedError:
                return
            if event is None:
                return
            yield event

    def wait_event_after(
        self, cursor: int, timeout: Optional[float] = None
    ) -> Optional[EventRecord]:
        """The first event numbered after ``cursor`` (0: the oldest kept), or ``None``.

        Every event is numbered and the last 4,096 are kept, whoever consumed them: a reader
        that stores the last cursor it handled resumes without gaps. Readers do not consume.
        """
        return self._native.wait_event_after(cursor, timeout)

    @property
    def event_cursor(self) -> int:
        """The cursor of the newest event so far (0: none yet)."""
        return self._native.event_cursor()

    def sync(self) -> List[Event]:
        """Fetches and processes everything queued now and sends the outbox.

        Returns the events produced (they are not also delivered to :meth:`events`).
        """
        return self._native.sync()

    def interrupt(self) -> None:
        """Makes every wait in progress (:meth:`next_event`, :meth:`events`, ...) raise
        :class:`~quicproquo.CancelledError`. Safe from any thread; later waits are unaffected.
        """
        self._native.interrupt()

    def subscribe(self, listener: Listener) -> Subscription:
        """Calls ``listener(event)`` for every later event, on a thread of its own, in order.

        While a subscription exists, events skip :meth:`next_event`. The listener may call
        back into this client; an exception it raises goes to ``sys.unraisablehook``.
        """
        return Subscription(self._native.subscribe(listener))

    def set_listener(self, listener: Optional[Listener]) -> None:
        """Sets (or with ``None`` clears) the client's one managed listener."""
        self._native.set_listener(listener)
