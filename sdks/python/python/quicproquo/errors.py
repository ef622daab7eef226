"""The exception hierarchy: one class per code of qpq-core's pinned error table.

Every error the engine reports is a :class:`QpqError` subclass named after its stable code
(``core/client/errors.toml``), so callers catch by type, never by parsing text::

    try:
        client.login(username="alice", password="wrong")
    except quicproquo.UnauthorizedError:
        ...

Each instance carries ``.code`` (the stable number), ``.name`` (the stable name) and
``.retry_after`` (seconds the server asked to wait, or ``None``).
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, Type

__all__ = [
    "AlreadyMemberError",
    "BusyError",
    "CancelledError",
    "ClosedError",
    "ConflictError",
    "CryptoError",
    "ForbiddenError",
    "InternalError",
    "InvalidInputError",
    "NetworkError",
    "NotFoundError",
    "QpqError",
    "RateLimitedError",
    "StorageError",
    "TimeoutError",
    "UnauthorizedError",
]


class QpqError(Exception):
    """Base class of every error raised by quicproquo.

    ``code`` is the stable number of core's error table; subclasses fix it. An error with a
    code this version does not know is raised as a plain ``QpqError`` with that number.
    """

    #: The stable number of this error class (0 for the base class).
    CODE: ClassVar[int] = 0

    def __init__(
        self, message: str, *, code: Optional[int] = None, retry_after: Optional[float] = None
    ) -> None:
        super().__init__(message)
        #: Human-readable message (never contains secrets); do not parse it.
        self.message: str = message
        #: The stable numeric code.
        self.code: int = self.CODE if code is None else code
        #: Seconds the server asked to wait before retrying, or ``None``.
        self.retry_after: Optional[float] = retry_after

    @property
    def name(self) -> str:
        """The code's stable name, e.g. ``"Unauthorized"`` (``"Unknown"`` when unknown)."""
        cls = _BY_CODE.get(self.code)
        return cls.__name__[: -len("Error")] if cls is not None else "Unknown"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code}, "
            f"retry_after={self.retry_after!r})"
        )


class NetworkError(QpqError):
    """The server could not be reached or the connection failed."""

    CODE = 1


class UnauthorizedError(QpqError):
    """Not logged in, wrong password, or the session expired or was revoked."""

    CODE = 2


class NotFoundError(QpqError):
    """The user, conversation or key does not exist."""

    CODE = 3


class ConflictError(QpqError):
    """Conflicts with current state (username taken, a concurrent commit that kept losing)."""

    CODE = 4


class InvalidInputError(QpqError):
    """The caller passed something invalid (an empty body, a malformed id, ...)."""

    CODE = 5


class CryptoError(QpqError):
    """A cryptographic operation failed (cannot decrypt, bad signature, MLS error)."""

    CODE = 6


class StorageError(QpqError):
    """The local encrypted store failed, is corrupt, or the key is wrong."""

    CODE = 7


class RateLimitedError(QpqError):
    """The server asks to slow down; see ``retry_after``."""

    CODE = 8


class TimeoutError(QpqError):  # noqa: A001 - the stable name; reach it as quicproquo.TimeoutError
    """The request did not complete in time."""

    CODE = 9


class ClosedError(QpqError):
    """The client was closed."""

    CODE = 10


class InternalError(QpqError):
    """A bug or an unexpected server answer."""

    CODE = 11


class CancelledError(QpqError):
    """A wait was interrupted (:meth:`quicproquo.Client.interrupt`)."""

    CODE = 12


class BusyError(QpqError):
    """The store is held by another process (or another open client)."""

    CODE = 13


class ForbiddenError(QpqError):
    """Not allowed: not an admin, a DM cannot be widened, blocked, consent missing."""

    CODE = 14


class AlreadyMemberError(QpqError):
    """The invited user is already in the conversation."""

    CODE = 15


_BY_CODE: Dict[int, Type[QpqError]] = {
    cls.CODE: cls
    for cls in (
        NetworkError,
        UnauthorizedError,
        NotFoundError,
        ConflictError,
        InvalidInputError,
        CryptoError,
        StorageError,
        RateLimitedError,
        TimeoutError,
        ClosedError,
        InternalError,
        CancelledError,
        BusyError,
        ForbiddenError,
        AlreadyMemberError,
    )
}


def _from_core(code: int, message: str, retry_after: Optional[float]) -> QpqError:
    """The exception for an engine error (called by the native module only)."""
    cls = _BY_CODE.get(code, QpqError)
    return cls(message, code=code, retry_after=retry_after)
