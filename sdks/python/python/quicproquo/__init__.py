"""quicproquo: end-to-end encrypted group messaging over QUIC, with the qpq engine native.

The engine (Rust, ``qpq-core``) keeps an encrypted local store per account, runs MLS groups
(classic, or post-quantum with the X-Wing suite) and delivers every incoming message exactly
once, in order, as an event. This package gives it Python idioms:

- :class:`Client`, a blocking client (a context manager; every call releases the GIL);
- :mod:`quicproquo.aio`, the same API for asyncio;
- frozen dataclasses for results and events (:mod:`quicproquo.types`);
- one exception class per stable error code, rooted at :class:`QpqError`
  (:mod:`quicproquo.errors`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._native import MAX_BODY_BYTES, MAX_CONTENT_TYPE_BYTES
from .client import Client, ConversationRef, Listener, MessageRef, Subscription
from .errors import (
    AlreadyMemberError,
    BusyError,
    CancelledError,
    ClosedError,
    ConflictError,
    CryptoError,
    ForbiddenError,
    InternalError,
    InvalidInputError,
    NetworkError,
    NotFoundError,
    QpqError,
    RateLimitedError,
    StorageError,
    TimeoutError,
    UnauthorizedError,
)
from .types import (
    Account,
    AppData,
    Body,
    ConnectionChanged,
    Conversation,
    ConversationId,
    ConversationJoined,
    ConversationKind,
    Delete,
    Delivery,
    DeviceKey,
    Edit,
    Event,
    EventRecord,
    File,
    IdentityKey,
    Member,
    MembersChanged,
    Message,
    MessageFailed,
    MessageId,
    MessageReceived,
    MessageSent,
    Reaction,
    Removed,
    Reply,
    Text,
)

try:
    __version__: str = version("quicproquo")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_CONTENT_TYPE_BYTES",
    "Account",
    "AlreadyMemberError",
    "AppData",
    "Body",
    "BusyError",
    "CancelledError",
    "Client",
    "ClosedError",
    "ConflictError",
    "ConnectionChanged",
    "Conversation",
    "ConversationId",
    "ConversationJoined",
    "ConversationKind",
    "ConversationRef",
    "CryptoError",
    "Delete",
    "Delivery",
    "DeviceKey",
    "Edit",
    "Event",
    "EventRecord",
    "File",
    "ForbiddenError",
    "IdentityKey",
    "InternalError",
    "InvalidInputError",
    "Listener",
    "Member",
    "MembersChanged",
    "Message",
    "MessageFailed",
    "MessageId",
    "MessageReceived",
    "MessageRef",
    "MessageSent",
    "NetworkError",
    "NotFoundError",
    "QpqError",
    "RateLimitedError",
    "Reaction",
    "Removed",
    "Reply",
    "StorageError",
    "Subscription",
    "Text",
    "TimeoutError",
    "UnauthorizedError",
    "__version__",
]
