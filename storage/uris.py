"""Naming objects: local paths, file:// and s3:// URIs, and the S3 endpoint."""
from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from .errors import InvalidURI

__all__ = ["is_s3", "split_s3_uri", "local_path", "resolve_endpoint_url"]


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidURI(f"not an s3:// URI: {uri!r}", uri)
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str) -> str:
    """The file system path of a plain path or a `file://` URI; any other scheme is an error."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidURI(f"file:// URI with a remote host is not supported: {uri}", uri)
        return unquote(parsed.path)
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
        raise InvalidURI(f"unsupported URI scheme {scheme!r}: {uri} (use a path, file:// or s3://)", uri)
    return uri


def resolve_endpoint_url(endpoint_url: str | None = None) -> str | None:
    """The argument, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else None (AWS)."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
