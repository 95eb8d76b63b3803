"""Object stores: a flat namespace of keys under one root, on a directory or in S3.

Both backends expose the same small `ObjectStore` interface over *keys*: relative,
"/"-separated paths under the store's root (``model/features/ab/ab12….safetensors``).
Keys are validated the same way on every backend so a store can be copied between a
directory and a bucket without renaming anything. A reader never sees a partial object
(see `storage.local` for files; on S3 a PutObject is atomic and a multipart upload is
visible only at Complete).
"""
from __future__ import annotations

import abc
import os
import time
from typing import Any, Iterator, NamedTuple

from .errors import InvalidURI, NotFound, StorageError
from .local import TEMP_PREFIX, BytesLike, map_os_error, read_file, write_atomic
from .retry import RetryPolicy
from .uris import local_path, resolve_endpoint_url, split_s3_uri

__all__ = ["ObjectInfo", "ObjectStore", "LocalStore", "S3Store", "open_store", "check_key"]


class ObjectInfo(NamedTuple):
    """What a listing or a stat knows about an object.

    `version` changes whenever the content may have changed: the S3 ETag (quotes
    stripped) or, for local files, the modification time in nanoseconds.
    """

    key: str
    size: int
    version: str


def check_key(key: str) -> str:
    """Reject keys that could escape the root or collide with temporary files."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid object key {key!r}: must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}: must be a relative '/'-separated path")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid object key {key!r}: empty, '.' or '..' segment")
        if part.startswith(TEMP_PREFIX):
            raise ValueError(f"invalid object key {key!r}: segment uses the reserved prefix {TEMP_PREFIX!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"invalid listing prefix {prefix!r}")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"invalid listing prefix {prefix!r}")
    return prefix


class ObjectStore(abc.ABC):
    """A flat namespace of immutable-by-convention objects under one root URI."""

    root_uri: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises `NotFound` when it does not exist."""

    @abc.abstractmethod
    def put_atomic(self, key: str, data: BytesLike, *, overwrite: bool = True) -> bool:
        """Publish `data` under `key` so that readers see all of it or nothing.

        With `overwrite=False` an existing object is left untouched and False is
        returned (create-if-absent, used for content-addressed objects). Returns True
        when this call published the object.
        """

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and version of one object; raises `NotFound`."""

    @abc.abstractmethod
    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a plain string prefix, as in S3),
        in lexicographic key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error (as on S3)."""

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """The full URI (or local path) of `key`, for messages and for other tools."""

    def exists(self, key: str) -> bool:
        """Whether an object is published under `key`."""
        try:
            self.stat(key)
            return True
        except NotFound:
            return False

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """`(key, size)` of every object whose key starts with `prefix`, sorted by key."""
        for info in self.list_info(prefix):
            yield info.key, info.size


class LocalStore(ObjectStore):
    """Objects as files under a directory (created on first write).

    `fsync=False` trades crash durability for speed (benchmarks, scratch stores);
    atomic visibility holds either way.
    """

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.root_uri = self.root
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def uri(self, key: str) -> str:
        return self._path(key)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return read_file(path)
        except StorageError as e:
            if os.path.isdir(path):  # a "folder" of keys is not an object
                raise NotFound(path) from None
            raise e

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as e:
            raise map_os_error(e, path, "stat") from None
        if not os.path.isfile(path):
            raise NotFound(path)
        return ObjectInfo(key, st.st_size, str(st.st_mtime_ns))

    def put_atomic(self, key: str, data: BytesLike, *, overwrite: bool = True) -> bool:
        return write_atomic(self._path(key), data, overwrite=overwrite, fsync=self.fsync)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def remove_stale_temp(self, max_age_s: float = 24 * 3600) -> int:
        """Delete temporary files older than `max_age_s` (left by writers killed
        mid-write; invisible to readers but taking space). Returns how many were
        removed. The age threshold keeps in-flight writes safe."""
        cutoff = time.time() - max_age_s
        removed = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(directory, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = _check_prefix(prefix)
        # Start the walk at the deepest directory the prefix names, then filter.
        base = prefix.rpartition("/")[0]
        start = os.path.join(self.root, *base.split("/")) if base else self.root
        yield from self._walk(start, base + "/" if base else "", prefix)

    def _walk(self, directory: str, key_prefix: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sort by the key each entry produces (directories contribute "name/") so the
        # whole listing comes out in the order an S3 listing would.
        keyed = []
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            # Directory symlinks are not followed: the store writes none, and not
            # following them rules out loops.
            is_dir = entry.is_dir(follow_symlinks=False)
            keyed.append((key_prefix + entry.name + ("/" if is_dir else ""), is_dir, entry))
        keyed.sort(key=lambda t: t[0])
        for key, is_dir, entry in keyed:
            if is_dir:
                if key.startswith(prefix) or prefix.startswith(key):  # else no match below
                    yield from self._walk(entry.path, key, prefix)
                continue
            if not key.startswith(prefix):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # deleted (or a dangling link) while listing
                continue
            if not os.path.isfile(entry.path):
                continue
            yield ObjectInfo(key, st.st_size, str(st.st_mtime_ns))


class S3Store(ObjectStore):
    """Objects under `s3://bucket/prefix` on AWS or any S3-compatible endpoint.

    Bodies up to `multipart_threshold` bytes go up in one PutObject (atomic); larger ones
    as a multipart upload that is aborted on failure. Every call is retried as `retry`
    (default: the process-wide policy) allows. Pickles without its client.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        multipart_threshold: int = 64 << 20,
        part_size: int = 16 << 20,
        list_page_size: int = 1000,
        retry: RetryPolicy | None = None,
    ) -> None:
        from .s3 import S3Bucket

        if part_size < 5 << 20:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = resolve_endpoint_url(endpoint_url)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.list_page_size = list_page_size
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._bucket = S3Bucket(bucket, endpoint_url=self.endpoint_url, retry=retry)

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The boto3 client (for tests and tools that need a call we do not wrap)."""
        return self._bucket.client

    @property
    def _client(self) -> Any:
        return self._bucket._client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def get(self, key: str) -> bytes:
        return self._bucket.get(self._key(key))

    def stat(self, key: str) -> ObjectInfo:
        size, etag = self._bucket.head(self._key(key))
        return ObjectInfo(key, size, etag)

    def put_atomic(self, key: str, data: BytesLike, *, overwrite: bool = True) -> bool:
        from .s3 import PreconditionFailed, Unsupported

        body = bytes(data) if not isinstance(data, bytes) else data
        full_key = self._key(key)
        # Conditional write (If-None-Match: *) makes create-if-absent atomic on AWS,
        # MinIO and moto. The HEAD first saves uploading bytes we would discard.
        if not overwrite and self.exists(key):
            return False
        try:
            if len(body) <= self.multipart_threshold:
                self._bucket.put(full_key, body, if_absent=not overwrite)
            else:
                self._bucket.put_multipart(full_key, body, self.part_size, if_absent=not overwrite)
            return True
        except PreconditionFailed:
            return False  # someone else published it between our HEAD and PUT
        except Unsupported:
            if overwrite:
                raise
            # Stores without conditional writes: plain put. Benign for content-addressed
            # keys (a racing writer publishes the same bytes).
            return self.put_atomic(key, body, overwrite=True)

    def delete(self, key: str) -> None:
        self._bucket.delete(self._key(key))

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = _check_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        for full_key, size, etag in self._bucket.list(full_prefix, self.list_page_size):
            key = full_key[strip:]
            if not key or key.endswith("/"):
                continue  # "folder" placeholder objects some tools create
            yield ObjectInfo(key, size, etag)


def open_store(uri: str, *, endpoint_url: str | None = None, **options: Any) -> ObjectStore:
    """Open the store at `uri`: a local path, `file:///path`, or `s3://bucket[/prefix]`.

    `endpoint_url` (or `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`) points S3 at MinIO,
    moto or another S3-compatible service; extra `options` go to the backend class.
    """
    if not isinstance(uri, str) or not uri:
        raise InvalidURI(f"invalid store URI {uri!r}", str(uri))
    if uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(uri)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, **options)
    return LocalStore(local_path(uri), **options)
