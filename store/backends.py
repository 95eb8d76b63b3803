"""Object storage backends for the feature store: a local directory and S3.

Both backends expose the same small `ObjectStore` interface over *keys*: relative,
"/"-separated paths under the store's root (``model/features/ab/ab12….safetensors``).
Keys are validated the same way on every backend so that a store can be copied
between a directory and a bucket without renaming anything.

Atomicity (DESIGN §5, "a reader never sees a partial object"):
- local: the bytes go to a temporary file in the destination directory, are fsynced,
  then published with `os.replace` (or `os.link` when the caller must not overwrite).
  Both are atomic renames within one filesystem. Temporary names start with
  `TEMP_PREFIX` and are never listed as objects.
- S3: a single PutObject is atomic by definition (the object appears whole or not at
  all); a multipart upload becomes visible only at CompleteMultipartUpload and is
  aborted on any failure, so neither path can leave a partial object.

Credentials are never handled here: boto3 resolves them through the standard AWS
chain (env vars, shared config/credentials files, instance/container roles).
"""
from __future__ import annotations

import abc
import errno
import os
import re
import threading
import uuid
from typing import Any, Iterator, NamedTuple
from urllib.parse import unquote, urlparse

__all__ = [
    "StoreError",
    "ObjectNotFound",
    "CorruptObject",
    "ObjectInfo",
    "ObjectStore",
    "LocalStore",
    "S3Store",
    "open_store",
    "split_s3_uri",
    "s3_client",
    "resolve_endpoint_url",
    "TEMP_PREFIX",
    "check_model_id",
]

#: Prefix of in-flight temporary files of `LocalStore`; never a valid key segment.
TEMP_PREFIX = ".seemtmp-"

BytesLike = bytes | bytearray | memoryview


# --------------------------------------------------------------------------- errors
class StoreError(Exception):
    """Base class of storage errors; the message always names the object's URI."""


class ObjectNotFound(StoreError, KeyError):
    """The object does not exist. A `KeyError` so `except KeyError` callers work too."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.uri = uri

    def __str__(self) -> str:  # KeyError's default str() would only repr the argument
        return f"object not found: {self.uri}"


class CorruptObject(StoreError, ValueError):
    """The object exists but its bytes fail verification (truncated, damaged, foreign)."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"corrupt object {uri}: {reason}")
        self.uri = uri
        self.reason = reason


class ObjectInfo(NamedTuple):
    """What a listing or a stat knows about an object.

    `version` changes whenever the object's content may have changed: the S3 ETag
    (quotes stripped) or, for local files, the modification time in nanoseconds.
    """

    key: str
    size: int
    version: str


# --------------------------------------------------------------------------- keys
def _check_key(key: str) -> str:
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


_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_model_id(model_id: str) -> str:
    """Model ids become a key segment: allow only [A-Za-z0-9._-], at most 128 chars."""
    if not isinstance(model_id, str) or not _MODEL_ID_RE.match(model_id) or model_id in (".", ".."):
        raise ValueError(f"invalid model id {model_id!r}: expected [A-Za-z0-9._-], at most 128 characters")
    return model_id


def _check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"invalid listing prefix {prefix!r}")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"invalid listing prefix {prefix!r}")
    return prefix


# --------------------------------------------------------------------------- interface
class ObjectStore(abc.ABC):
    """A flat namespace of immutable-by-convention objects under one root URI."""

    root_uri: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises `ObjectNotFound` when it does not exist."""

    @abc.abstractmethod
    def put_atomic(self, key: str, data: BytesLike, *, overwrite: bool = True) -> bool:
        """Publish `data` under `key` so that readers see all of it or nothing.

        With `overwrite=False` an existing object is left untouched and False is
        returned (create-if-absent, used for content-addressed objects). Returns True
        when this call published the object.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is published under `key`."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and version of one object; raises `ObjectNotFound`."""

    @abc.abstractmethod
    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a plain string prefix, as in S3),
        in lexicographic key order."""

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """`(key, size)` of every object whose key starts with `prefix`, sorted by key."""
        for info in self.list_info(prefix):
            yield info.key, info.size

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error (as on S3)."""

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """The full URI (or local path) of `key`, for messages and for other tools."""


# --------------------------------------------------------------------------- local
def _write_fully(fd: int, data: memoryview) -> None:
    """Write all of `data` to `fd` (os.write may write less than asked)."""
    chunk = 1 << 22
    pos = 0
    while pos < len(data):
        pos += os.write(fd, data[pos : pos + chunk])


def _fsync_dir(path: str) -> None:
    # The rename is only durable once the directory entry is on disk; not every
    # platform/filesystem lets us open a directory, which is harmless to skip.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        return os.path.join(self.root, *_check_key(key).split("/"))

    def uri(self, key: str) -> str:
        return self._path(key)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(path) from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(path) from None
        if not os.path.isfile(path):
            raise ObjectNotFound(path)
        return ObjectInfo(key, st.st_size, str(st.st_mtime_ns))

    def put_atomic(self, key: str, data: BytesLike, *, overwrite: bool = True) -> bool:
        path = self._path(key)
        directory = os.path.dirname(path)
        if not overwrite and os.path.exists(path):
            return False
        os.makedirs(directory, exist_ok=True)
        # Same directory => same filesystem => the final rename/link is atomic.
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _write_fully(fd, memoryview(data).cast("B"))
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, path)
                published = True
            else:
                published = self._link_no_clobber(tmp, path)
        except BaseException:
            # Any failure (disk full, interrupt) must not leave the temp file behind.
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if not overwrite:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if published and self.fsync:
            _fsync_dir(directory)
        return published

    @staticmethod
    def _link_no_clobber(tmp: str, path: str) -> bool:
        """Publish tmp at path only if path does not exist (atomic where link() works)."""
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            # Filesystems without hard links (some FUSE/SMB mounts): fall back to a
            # check-then-replace. The race it leaves is benign for content-addressed
            # objects, whose competing writers publish identical bytes.
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
            return True

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def remove_stale_temp(self, max_age_s: float = 24 * 3600) -> int:
        """Delete temporary files older than `max_age_s` (left by writers that were
        killed mid-write; they are invisible to readers but take space). Returns how
        many were removed. The age threshold keeps in-flight writes safe."""
        import time

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
        # Sort by the key each entry produces (directories contribute "name/") so
        # the whole listing comes out in the same order an S3 listing would.
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
                # Skip subtrees that cannot contain a match.
                if key.startswith(prefix) or prefix.startswith(key):
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


# --------------------------------------------------------------------------- S3
def resolve_endpoint_url(endpoint_url: str | None = None) -> str | None:
    """The argument, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else None (AWS)."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint_url: str | None = None) -> Any:
    """A shared boto3 S3 client for `endpoint_url` (resolved as in `resolve_endpoint_url`).

    Clients are cached per process and endpoint because creating one costs tens of
    milliseconds, and boto3 clients are thread-safe. The cache is keyed by pid so a
    forked child never reuses its parent's connection pool.
    """
    import boto3
    from botocore.config import Config

    endpoint = resolve_endpoint_url(endpoint_url)
    cache_key = (os.getpid(), endpoint)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
            # A fresh Session per client: the default session is not thread-safe.
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            _clients[cache_key] = client
        return client


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store(ObjectStore):
    """Objects under `s3://bucket/prefix` on AWS or any S3-compatible endpoint.

    Bodies up to `multipart_threshold` bytes go up in one PutObject (atomic); larger
    ones as a multipart upload that is aborted on failure. The store pickles without
    its client (Ray ships it to workers), which is re-created lazily on first use.
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
    ) -> None:
        if part_size < 5 << 20:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = resolve_endpoint_url(endpoint_url)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.list_page_size = list_page_size
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: Any = None

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r}, endpoint_url={self.endpoint_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _raise(self, exc: Exception, op: str, key: str) -> None:
        code = _error_code(exc)
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFound(self.uri(key)) from None
        if code == "NoSuchBucket":
            raise StoreError(f"{op} {self.uri(key)}: bucket {self.bucket!r} does not exist") from exc
        raise StoreError(f"{op} {self.uri(key)}: {code or type(exc).__name__}: {exc}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()
        except (ClientError, BotoCoreError) as e:
            self._raise(e, "get", key)
            raise  # unreachable; keeps type checkers happy

    def stat(self, key: str) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            self._raise(e, "stat", key)
            raise
        return ObjectInfo(key, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except ObjectNotFound:
            return False

    def put_atomic(self, key: str, data: BytesLike, *, overwrite: bool = True) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        body = bytes(data) if not isinstance(data, bytes) else data
        full_key = self._key(key)
        # Conditional write (If-None-Match: *) makes create-if-absent atomic on AWS,
        # MinIO and moto. The HEAD first saves uploading bytes we would discard.
        if not overwrite and self.exists(key):
            return False
        extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
        try:
            if len(body) <= self.multipart_threshold:
                self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body, **extra)
            else:
                self._put_multipart(full_key, body, extra)
            return True
        except (ClientError, BotoCoreError) as e:
            code = _error_code(e)
            if not overwrite and code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False  # someone else published it between our HEAD and PUT
            if not overwrite and code in ("NotImplemented", "501"):
                # Stores without conditional writes: plain put. Benign for
                # content-addressed keys (a racing writer publishes the same bytes).
                return self.put_atomic(key, body, overwrite=True)
            self._raise(e, "put", key)
            raise

    def _put_multipart(self, full_key: str, body: bytes, extra: dict[str, Any]) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full_key)["UploadId"]
        try:
            parts = []
            view = memoryview(body)
            for number, start in enumerate(range(0, len(body), self.part_size), start=1):
                response = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=view[start : start + self.part_size].tobytes(),
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra
            )
        except BaseException:
            # Nothing is visible before Complete; aborting frees the stored parts.
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            except Exception:
                pass
            raise

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            if _error_code(e) in _NOT_FOUND_CODES:
                return
            self._raise(e, "delete", key)

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = _check_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=full_prefix, PaginationConfig={"PageSize": self.list_page_size}
        )
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][strip:]
                    if not key or key.endswith("/"):
                        continue  # "folder" placeholder objects some tools create
                    yield ObjectInfo(key, int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
        except (ClientError, BotoCoreError) as e:
            code = _error_code(e)
            if code == "NoSuchBucket":
                raise StoreError(f"list {self.root_uri}/{prefix}: bucket {self.bucket!r} does not exist") from e
            raise StoreError(f"list {self.root_uri}/{prefix}: {code or type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- factory
def open_store(uri: str, *, endpoint_url: str | None = None, **options: Any) -> ObjectStore:
    """Open the store at `uri`: a local path, `file:///path`, or `s3://bucket[/prefix]`.

    `endpoint_url` (or `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`) points S3 at MinIO,
    moto or another S3-compatible service; extra `options` go to the backend class.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"invalid store URI {uri!r}")
    if uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(uri)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, **options)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a remote host is not supported: {uri!r}")
        return LocalStore(unquote(parsed.path), **options)
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
        raise ValueError(f"unsupported store URI scheme {scheme!r} in {uri!r} (use a path, file:// or s3://)")
    return LocalStore(uri, **options)

