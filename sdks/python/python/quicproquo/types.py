"""Plain data of the public API: ids, frozen dataclasses for results, message bodies and events.

Everything here is immutable and compares by value. The native module builds these objects
positionally, so the field order of each dataclass is part of the binding: change it in
``bindings/python/src/convert.rs`` too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple, Type, TypeVar, Union

from .errors import InvalidInputError

__all__ = [
    "Account",
    "AppData",
    "Body",
    "ConnectionChanged",
    "Consent",
    "Conversation",
    "ConversationBroken",
    "ConversationId",
    "ConversationJoined",
    "ConversationKind",
    "ConversationRecovered",
    "Delete",
    "Delivery",
    "DeviceKey",
    "Edit",
    "Event",
    "EventRecord",
    "File",
    "IdentityKey",
    "Member",
    "MembersChanged",
    "Message",
    "MessageFailed",
    "MessageId",
    "MessageReceived",
    "MessageSent",
    "Reaction",
    "Removed",
    "Reply",
    "Text",
]

_IdT = TypeVar("_IdT", bound="_FixedBytes")


class _FixedBytes(bytes):
    """``LEN`` bytes shown as lower-case hex (qpq-core's one text form of ids and keys)."""

    #: The length in bytes.
    LEN: ClassVar[int] = 16

    def __new__(cls: Type[_IdT], value: Union[bytes, bytearray, memoryview, str]) -> _IdT:
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise InvalidInputError(
                    f"a {cls.__name__} is {2 * cls.LEN} hex digits, got {value!r}"
                ) from None
        else:
            raw = bytes(value)
        if len(raw) != cls.LEN:
            raise InvalidInputError(f"a {cls.__name__} is {cls.LEN} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_hex(cls: Type[_IdT], text: str) -> _IdT:
        """Parses the hex form (either case)."""
        return cls(text)

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.hex()}')"


class ConversationId(_FixedBytes):
    """A conversation's id (equal to the server channel id and the MLS group id).

    A ``bytes`` of length 16; ``str()`` gives its hex form, ``ConversationId("…hex…")`` parses
    one. Methods taking a conversation accept a ``ConversationId``, any 16 bytes, or the hex.
    """


class MessageId(_FixedBytes):
    """A message's id, chosen by the sender, unique per message. A ``bytes`` of length 16."""


class IdentityKey(_FixedBytes):
    """An account's identity key (the same on every device): a ``bytes`` of length 32."""

    LEN = 32


class DeviceKey(_FixedBytes):
    """A device's key (its MLS signature key): a ``bytes`` of length 32."""

    LEN = 32


class ConversationKind(enum.Enum):
    """Whether a conversation is a 1:1 DM or a group."""

    DM = "dm"
    GROUP = "group"


class Consent(enum.Enum):
    """Whether the user wants a conversation (ADR 0060). It changes nothing about delivery or
    storage: a ``REQUESTED`` conversation's messages arrive as usual, and the app shows them
    apart until :meth:`quicproquo.Client.accept` or :meth:`quicproquo.Client.decline`."""

    #: Created here, accepted, written in, or from a contact.
    ALLOWED = "allowed"
    #: Joined by an invitation from someone this account shares no allowed conversation with.
    REQUESTED = "requested"
    #: Declined: left, and kept only as history.
    DENIED = "denied"


class Delivery(enum.Enum):
    """Where a message of the local history is on its way out."""

    #: An incoming message (or an outgoing one from another device of this account).
    RECEIVED = "received"
    #: Stored and queued on this device; not yet accepted by the server.
    QUEUED = "queued"
    #: Accepted by the server for every member (a :class:`MessageSent` event said so).
    SENT = "sent"
    #: Refused for good; it will not be sent (a :class:`MessageFailed` event said why).
    FAILED = "failed"


@dataclass(frozen=True)
class Account:
    """This client's account."""

    username: str
    #: Account identity key (the same on every device).
    identity_key: IdentityKey
    #: This device's key (its MLS signature key).
    device_key: DeviceKey


@dataclass(frozen=True)
class Member:
    """A member of a conversation, or a user looked up on the server."""

    username: str
    #: Account identity key; ``None`` while this device does not know it yet.
    identity_key: Optional[IdentityKey]
    #: Device keys (in a conversation: the devices in the MLS group).
    devices: Tuple[DeviceKey, ...]


@dataclass(frozen=True)
class Conversation:
    """A conversation as stored locally."""

    id: ConversationId
    kind: ConversationKind
    #: The group's name, or the peer's username for a DM.
    name: str
    #: True when the group uses the X-Wing (ML-KEM-768 + X25519) ciphersuite.
    post_quantum: bool
    #: The MLS ciphersuite's name.
    ciphersuite: str
    #: The current MLS epoch.
    epoch: int
    #: Usernames of the members, sorted, each once.
    members: Tuple[str, ...]
    #: False once this account was removed or left.
    active: bool
    #: Received messages not yet read through :meth:`quicproquo.Client.messages`.
    unread: int
    #: Whether the user wants this conversation: one joined by an invitation from someone who
    #: is not a contact is ``REQUESTED`` until accepted or declined.
    consent: Consent
    #: Who invited this account (``None`` for a conversation this device created).
    invited_by: Optional[str]


@dataclass(frozen=True)
class Text:
    """A UTF-8 text body."""

    _KIND: ClassVar[str] = "text"
    text: str


@dataclass(frozen=True)
class AppData:
    """An application's own binary payload with a content type (1 to 255 bytes, not interpreted)."""

    _KIND: ClassVar[str] = "app"
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Reply:
    """Reserved (received ones are delivered; sending one raises ``InvalidInputError``)."""

    _KIND: ClassVar[str] = "reply"
    to: MessageId
    text: str


@dataclass(frozen=True)
class Reaction:
    """Reserved: a reaction to another message."""

    _KIND: ClassVar[str] = "reaction"
    to: MessageId
    emoji: str
    remove: bool = False


@dataclass(frozen=True)
class Edit:
    """Reserved: a new text for an earlier message of the same sender."""

    _KIND: ClassVar[str] = "edit"
    of: MessageId
    text: str


@dataclass(frozen=True)
class Delete:
    """Reserved: the sender deletes an earlier message of theirs."""

    _KIND: ClassVar[str] = "delete"
    of: MessageId


@dataclass(frozen=True)
class File:
    """Reserved: a file stored elsewhere, encrypted under ``key``."""

    _KIND: ClassVar[str] = "file"
    name: str
    mime_type: str
    size: int
    sha256: bytes
    key: bytes


#: What a message carries. Today :class:`Text` and :class:`AppData` can be sent.
Body = Union[Text, AppData, Reply, Reaction, Edit, Delete, File]


@dataclass(frozen=True)
class Message:
    """One message of a conversation's history."""

    id: MessageId
    conversation: ConversationId
    #: The sender's username.
    sender: str
    #: The sender's device key.
    sender_device: DeviceKey
    body: Body
    #: The sender's clock, Unix milliseconds.
    sent_at_ms: int
    #: Local order key and receive time, Unix milliseconds; strictly increasing per store.
    received_at_ms: int
    #: True when sent by this account (from this or another of its devices).
    outgoing: bool
    delivery: Delivery

    @property
    def text(self) -> Optional[str]:
        """The text of a text message, ``None`` for other bodies."""
        return self.body.text if isinstance(self.body, Text) else None


@dataclass(frozen=True)
class MessageReceived:
    """A new message (incoming, or outgoing from another device of this account)."""

    message: Message


@dataclass(frozen=True)
class ConversationJoined:
    """This account was added to a conversation."""

    conversation: Conversation


@dataclass(frozen=True)
class MembersChanged:
    """Members joined, were removed from, or left a conversation (one commit's changes)."""

    conversation_id: ConversationId
    #: Who made the change (the member who committed it); ``None`` when this device does not
    #: know that member's username.
    by: Optional[str]
    #: Usernames added.
    added: Tuple[str, ...]
    #: Usernames removed by someone else.
    removed: Tuple[str, ...]
    #: Usernames that left on their own.
    left: Tuple[str, ...]
    #: The epoch after the change.
    epoch: int


@dataclass(frozen=True)
class Removed:
    """This account is no longer in a conversation: removed by another member, or it left
    (from this device or another of its devices). The history stays, inactive."""

    conversation_id: ConversationId
    #: Who removed this account (its own username when it left); ``None`` when unknown.
    by: Optional[str]
    #: True when this account left on its own rather than being removed.
    left: bool


@dataclass(frozen=True)
class ConnectionChanged:
    """The connection to the server went up or down."""

    connected: bool


@dataclass(frozen=True)
class MessageSent:
    """The server accepted a message this device sent: it will reach every member."""

    conversation_id: ConversationId
    message_id: MessageId


@dataclass(frozen=True)
class MessageFailed:
    """A message this device queued can never be sent; it stays in history as ``FAILED``."""

    conversation_id: ConversationId
    message_id: MessageId
    #: Why, as a stable error code (see :mod:`quicproquo.errors`).
    code: int
    #: Why, for humans.
    reason: str


@dataclass(frozen=True)
class ConversationBroken:
    """This device cannot process the commit the server accepted for a conversation's epoch.
    The engine rejoins it by itself and then reports :class:`ConversationRecovered`; messages
    others sent between the two may never reach this device."""

    conversation_id: ConversationId
    #: What could not be processed, for humans.
    reason: str


@dataclass(frozen=True)
class ConversationRecovered:
    """A conversation reported broken works again (rejoined, or a later commit processed)."""

    conversation_id: ConversationId


#: Something that happened, from :meth:`quicproquo.Client.events` and friends.
Event = Union[
    MessageReceived,
    ConversationJoined,
    MembersChanged,
    Removed,
    ConnectionChanged,
    MessageSent,
    MessageFailed,
    ConversationBroken,
    ConversationRecovered,
]


@dataclass(frozen=True)
class EventRecord:
    """An event with its number: cursors increase by one per event, from 1, per client."""

    cursor: int
    event: Event
