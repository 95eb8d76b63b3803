"""Reading an image named by URI (`{"uri": ...}`, `image_uri`), only under allowed prefixes.

A server that fetches what a client names must not become a way to read anything else:
- nothing is readable until `allowed_uri_prefixes` is configured;
- local paths are resolved (symlinks, "..") before the prefix check, so
  `/data/images/../../etc/passwd` is refused;
- a prefix matches whole path components, local and S3 alike: `/data/allowed` admits
  `/data/allowed/x.png`, never `/data/allowed-secret/x.png`; `s3://imgs/photos` never
  `s3://imgs/photos2/x.png`;
- S3 keys with empty, "." or ".." segments are refused (stores and proxies disagree on
  what they mean);
- only s3://, file:// and absolute paths; no http(s) (no requests to arbitrary hosts);
- the size is checked before the bytes are read.
"""
from __future__ import annotations

import asyncio
import os
from urllib.parse import unquote, urlparse

from .errors import ApiError

__all__ = ["read_uri", "resolve_uri"]


def _local_prefix(prefix: str) -> str:
    """The prefix as a resolved directory path without a trailing slash ("/" stays "/")."""
    path = unquote(urlparse(prefix).path) if prefix.startswith("file://") else prefix
    return os.path.realpath(path)


def _under(path: str, directory: str, sep: str = "/") -> bool:
    """Whether `path` is `directory` or inside it, by whole components."""
    if directory in ("", sep):
        return True
    directory = directory.rstrip(sep)
    return path == directory or path.startswith(directory + sep)


def _s3_allowed(normalized: str, prefix: str) -> bool:
    bucket, _, key = normalized[len("s3://"):].partition("/")
    p_bucket, _, p_key = prefix[len("s3://"):].partition("/")
    return bucket == p_bucket and _under(key, p_key.strip("/"))


def resolve_uri(uri: str, allowed_prefixes: tuple[str, ...]) -> tuple[str, str]:
    """("s3", "s3://bucket/key") or ("file", "/real/path") for an allowed URI, else ApiError 400."""
    if not allowed_prefixes:
        raise ApiError("uri_not_allowed", "reading images by URI is disabled on this server (no allowed prefixes)")
    if "\x00" in uri or "\\" in uri:
        raise ApiError("uri_not_allowed", "the URI contains a NUL or a backslash")
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise ApiError("uri_not_allowed", f"{uri[:200]!r} names no object (s3://bucket/key)")
        if parsed.query or parsed.fragment or any(part in ("", ".", "..") for part in key.split("/")):
            raise ApiError("uri_not_allowed", f"{uri[:200]!r}: empty, '.' or '..' path segments, or a query")
        normalized = f"s3://{parsed.netloc}/{key}"
        if any(p.startswith("s3://") and _s3_allowed(normalized, p) for p in allowed_prefixes):
            return "s3", normalized
        raise ApiError("uri_not_allowed", f"{uri[:200]!r} is not under an allowed prefix")
    if uri.startswith("file://") or uri.startswith("/"):
        parsed = urlparse(uri) if uri.startswith("file://") else None
        if parsed is not None and parsed.netloc not in ("", "localhost"):
            raise ApiError("uri_not_allowed", "file:// URIs with a host are not supported")
        path = unquote(parsed.path) if parsed is not None else uri
        real = os.path.realpath(path)
        for p in allowed_prefixes:
            if p.startswith(("file://", "/")) and _under(real, _local_prefix(p)):
                return "file", real
        raise ApiError("uri_not_allowed", f"{uri[:200]!r} is not under an allowed prefix")
    raise ApiError("uri_not_allowed", f"{uri[:200]!r}: only s3://, file:// and absolute paths are supported")


def _read(kind: str, where: str, max_bytes: int, endpoint_url: str | None) -> bytes:
    """The object's bytes through the storage layer, its errors as the API's."""
    import storage

    try:
        return storage.read_bytes(where, endpoint_url=endpoint_url, max_bytes=max_bytes)
    except storage.TooLarge as e:
        raise ApiError("body_too_large", f"the object has {e.size} bytes; the limit is {max_bytes}") from None
    except storage.NotFound:
        raise ApiError("image_not_found", f"no object at {where[:200]!r}" if kind == "s3" else "no file at that path") from None
    except storage.InvalidURI as e:
        raise ApiError("uri_not_allowed", f"{where[:200]!r}: {e}") from None
    except storage.StorageError as e:
        if kind == "file":  # a directory, a file we may not read: nothing to fetch there
            raise ApiError("image_not_found", f"cannot read the file: {e}") from None
        raise ApiError("unavailable", f"could not read {where[:200]!r}: {e}") from None


async def read_uri(uri: str, allowed_prefixes: tuple[str, ...], max_bytes: int, endpoint_url: str | None) -> bytes:
    """The bytes at `uri` (blocking reads run in a thread)."""
    kind, where = resolve_uri(uri, allowed_prefixes)
    return await asyncio.to_thread(_read, kind, where, max_bytes, endpoint_url)
