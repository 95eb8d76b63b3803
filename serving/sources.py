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


def _read_s3(uri: str, max_bytes: int, endpoint_url: str | None) -> bytes:
    from store.backends import ObjectNotFound, StoreError, open_store, split_s3_uri

    bucket, key = split_s3_uri(uri)
    backend = open_store(f"s3://{bucket}", endpoint_url=endpoint_url)
    try:
        size = backend.stat(key).size
        if size > max_bytes:
            raise ApiError("body_too_large", f"the object has {size} bytes; the limit is {max_bytes}")
        return backend.get(key)
    except ObjectNotFound:
        raise ApiError("image_not_found", f"no object at {uri[:200]!r}") from None
    except StoreError as e:
        raise ApiError("unavailable", f"could not read {uri[:200]!r}: {e}") from None
    except ValueError as e:  # a key the store refuses
        raise ApiError("uri_not_allowed", f"{uri[:200]!r}: {e}") from None


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        if not os.path.isfile(path):
            raise ApiError("image_not_found", "no file at that path")
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ApiError("body_too_large", f"the file has {size} bytes; the limit is {max_bytes}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ApiError("image_not_found", f"cannot read the file: {e.strerror}") from None
    if len(data) > max_bytes:  # grew while we read it
        raise ApiError("body_too_large", f"the file is over the limit of {max_bytes} bytes")
    return data


async def read_uri(uri: str, allowed_prefixes: tuple[str, ...], max_bytes: int, endpoint_url: str | None) -> bytes:
    """The bytes at `uri` (blocking reads run in a thread)."""
    kind, where = resolve_uri(uri, allowed_prefixes)
    if kind == "s3":
        return await asyncio.to_thread(_read_s3, where, max_bytes, endpoint_url)
    return await asyncio.to_thread(_read_file, where, max_bytes)
