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

from ._native import MAX_BODY_BYTES, MAX_CONTENT_TYPE_BYTES
from ._native import __version__ as _engine_version
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
    Consent,
    Conversation,
    ConversationBroken,
    ConversationId,
    ConversationJoined,
    ConversationKind,
    ConversationRecovered,
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

#: The package's version: the engine's (the crates and the package are versioned together).
__version__: str = _engine_version

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
    "Consent",
    "Conversation",
    "ConversationBroken",
    "ConversationId",
    "ConversationJoined",
    "ConversationKind",
    "ConversationRecovered",
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
