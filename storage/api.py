"""Whole objects by URI: a local path, `file://` or `s3://bucket/key`.

The functions pipeline/, serving/, training/ and checkpoint loading call to read, write,
stat, list and delete one object without first opening a store. S3 calls go through
`storage.s3.S3Bucket` (retried, errors mapped); local ones map `OSError` the same way.
Raw S3 keys are taken as given here (listings can hold keys a store would refuse).
"""
from __future__ import annotations

import io
import os
import shutil
from typing import BinaryIO, Iterator

from .errors import InvalidURI, NotFound, StorageError, TooLarge
from .local import BytesLike, map_os_error, read_file, write_atomic
from .objects import ObjectInfo
from .retry import RetryPolicy
from .uris import is_s3, local_path, split_s3_uri

__all__ = ["read_bytes", "download", "open_uri", "write_bytes", "stat", "exists", "delete", "list_objects"]


def _bucket_and_key(uri: str, endpoint_url: str | None, retry: RetryPolicy | None):
    from .s3 import S3Bucket

    bucket, key = split_s3_uri(uri)
    if not key:
        raise InvalidURI(f"not an object URI (no key): {uri}", uri)
    return S3Bucket(bucket, endpoint_url=endpoint_url, retry=retry), key


def read_bytes(uri: str, *, endpoint_url: str | None = None, max_bytes: int | None = None,
               retry: RetryPolicy | None = None) -> bytes:
    """The bytes of one object. With `max_bytes`, a larger object raises `StorageError`
    before its bytes are fetched (S3: size from a HEAD; local: from the file)."""
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri, endpoint_url, retry)
        if max_bytes is not None:
            _check_size(uri, bucket.head(key)[0], max_bytes)
        return bucket.get(key)
    path = local_path(uri)
    if max_bytes is not None:
        _check_size(uri, stat(path).size, max_bytes)
    data = read_file(path, max_bytes)
    if max_bytes is not None:
        _check_size(uri, len(data), max_bytes)  # the file grew while we read it
    return data


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(uri, size, max_bytes)


def download(uri: str, fileobj: BinaryIO, *, endpoint_url: str | None = None,
             retry: RetryPolicy | None = None) -> None:
    """Copy one object into a seekable binary file without holding it in memory."""
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri, endpoint_url, retry)
        bucket.download(key, fileobj)
        return
    with open_uri(uri) as src:
        fileobj.seek(0)
        fileobj.truncate()
        shutil.copyfileobj(src, fileobj, 1 << 20)


def open_uri(uri: str, *, endpoint_url: str | None = None) -> BinaryIO:
    """A readable binary file of the object (S3 objects are read whole first)."""
    if is_s3(uri):
        return io.BytesIO(read_bytes(uri, endpoint_url=endpoint_url))
    path = local_path(uri)
    try:
        return open(path, "rb")
    except OSError as e:
        raise map_os_error(e, path, "open") from None


def write_bytes(uri: str, data: BytesLike, *, endpoint_url: str | None = None, overwrite: bool = True,
                retry: RetryPolicy | None = None) -> bool:
    """Publish `data` at `uri` atomically (readers see all of it or nothing); with
    `overwrite=False` an existing object is kept and False returned."""
    if is_s3(uri):
        from .objects import S3Store

        bucket, key = split_s3_uri(uri)
        return S3Store(bucket, endpoint_url=endpoint_url, retry=retry).put_atomic(key, data, overwrite=overwrite)
    return write_atomic(os.path.abspath(local_path(uri)), data, overwrite=overwrite)


def stat(uri: str, *, endpoint_url: str | None = None, retry: RetryPolicy | None = None) -> ObjectInfo:
    """`ObjectInfo(uri, size, version)`: version is the S3 ETag or the local mtime in ns.
    A local path that is not a regular file is a `StorageError`."""
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri, endpoint_url, retry)
        size, etag = bucket.head(key)
        return ObjectInfo(uri, size, etag)
    path = local_path(uri)
    try:
        st = os.stat(path)
    except OSError as e:
        raise map_os_error(e, path, "stat") from None
    if not os.path.isfile(path):
        raise StorageError(f"not a regular file: {path}", path)
    return ObjectInfo(path, st.st_size, str(st.st_mtime_ns))


def exists(uri: str, *, endpoint_url: str | None = None) -> bool:
    try:
        stat(uri, endpoint_url=endpoint_url)
        return True
    except NotFound:
        return False


def delete(uri: str, *, endpoint_url: str | None = None) -> None:
    """Remove one object; a missing one is not an error."""
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri, endpoint_url, None)
        bucket.delete(key)
        return
    path = local_path(uri)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise map_os_error(e, path, "delete") from None


def list_objects(uri: str, *, endpoint_url: str | None = None, page_size: int = 1000,
                 retry: RetryPolicy | None = None) -> Iterator[ObjectInfo]:
    """Every object under an `s3://bucket/prefix` (a plain string prefix, as S3 has it),
    as `ObjectInfo(s3 URI, size, ETag)` in key order. "Folder" placeholders are skipped.
    Local folders: see `storage.objects.LocalStore.list_info`."""
    from .s3 import S3Bucket

    if not is_s3(uri):
        raise InvalidURI(f"list_objects lists s3:// prefixes; open a LocalStore for {uri}", uri)
    bucket_name, prefix = split_s3_uri(uri)
    bucket = S3Bucket(bucket_name, endpoint_url=endpoint_url, retry=retry)
    for key, size, etag in bucket.list(prefix, page_size):
        if not key.endswith("/"):
            yield ObjectInfo(f"s3://{bucket_name}/{key}", size, etag)
