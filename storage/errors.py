"""The storage errors every caller sees, whatever the backend.

Backends translate their own failures (an `OSError`, a botocore `ClientError`) into these
once, in this package; callers catch `NotFound`, `AccessDenied`, ... and never a
backend's exception type. Every message names the object's URI.

`Throttled` and `Transient` are retried by `storage.retry` before a caller sees them.
"""
from __future__ import annotations

__all__ = [
    "StorageError",
    "NotFound",
    "BucketNotFound",
    "AccessDenied",
    "Throttled",
    "Transient",
    "InvalidURI",
    "TooLarge",
    "CorruptObject",
    "RETRYABLE",
]


class StorageError(Exception):
    """An object or listing could not be read or written; `uri` names it."""

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message)
        self.uri = uri

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.uri


class NotFound(StorageError, KeyError, FileNotFoundError):
    """The object does not exist.

    Also a `KeyError` (a store is a mapping of keys) and a `FileNotFoundError` (a URI is
    a file name), so callers written against either convention keep working."""

    def __init__(self, uri: str, message: str | None = None) -> None:
        super().__init__(message or f"object not found: {uri}", uri)


class BucketNotFound(StorageError):
    """The bucket of an s3:// URI does not exist (not the same as a missing object:
    nothing can be written there either)."""


class AccessDenied(StorageError):
    """The credentials in use may not do this (403, expired or invalid keys)."""


class Throttled(StorageError):
    """The service asked us to slow down (SlowDown, 429, throttling codes)."""


class Transient(StorageError):
    """A failure that may pass on its own: 5xx, a dropped or timed-out connection."""


class InvalidURI(StorageError, ValueError):
    """Not a local path, file:// or s3:// URI this package can open."""

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message, uri)


class TooLarge(StorageError):
    """An object is larger than the caller's cap (checked before its bytes are read)."""

    def __init__(self, uri: str, size: int, max_bytes: int) -> None:
        super().__init__(f"{uri} has {size} bytes; the limit is {max_bytes}", uri)
        self.size, self.max_bytes = size, max_bytes


class CorruptObject(StorageError, ValueError):
    """The object exists but its bytes fail verification (truncated, damaged, foreign)."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"corrupt object {uri}: {reason}", uri)
        self.reason = reason


#: Errors worth another attempt after a pause.
RETRYABLE: tuple[type[StorageError], ...] = (Throttled, Transient)
