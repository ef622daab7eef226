package org.quicproquo

import org.quicproquo.ffi.ErrorCode
import org.quicproquo.ffi.QpqException

/** The pinned code of this error (`core/client/errors.toml`). */
val QpqException.code: ErrorCode
    get() = when (this) {
        is QpqException.Network -> ErrorCode.NETWORK
        is QpqException.Unauthorized -> ErrorCode.UNAUTHORIZED
        is QpqException.NotFound -> ErrorCode.NOT_FOUND
        is QpqException.Conflict -> ErrorCode.CONFLICT
        is QpqException.InvalidInput -> ErrorCode.INVALID_INPUT
        is QpqException.Crypto -> ErrorCode.CRYPTO
        is QpqException.Storage -> ErrorCode.STORAGE
        is QpqException.RateLimited -> ErrorCode.RATE_LIMITED
        is QpqException.Timeout -> ErrorCode.TIMEOUT
        is QpqException.Closed -> ErrorCode.CLOSED
        is QpqException.Internal -> ErrorCode.INTERNAL
        is QpqException.Cancelled -> ErrorCode.CANCELLED
        is QpqException.Busy -> ErrorCode.BUSY
        is QpqException.Forbidden -> ErrorCode.FORBIDDEN
        is QpqException.AlreadyMember -> ErrorCode.ALREADY_MEMBER
    }

/** The human-readable detail (never a secret). */
val QpqException.detail: String
    get() = when (this) {
        is QpqException.Network -> detail
        is QpqException.Unauthorized -> detail
        is QpqException.NotFound -> detail
        is QpqException.Conflict -> detail
        is QpqException.InvalidInput -> detail
        is QpqException.Crypto -> detail
        is QpqException.Storage -> detail
        is QpqException.RateLimited -> detail
        is QpqException.Timeout -> detail
        is QpqException.Closed -> detail
        is QpqException.Internal -> detail
        is QpqException.Cancelled -> detail
        is QpqException.Busy -> detail
        is QpqException.Forbidden -> detail
        is QpqException.AlreadyMember -> detail
    }
