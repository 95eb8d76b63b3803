"""S3 (AWS, MinIO, moto, any S3-compatible endpoint): the only module that imports boto3.

`S3Bucket` makes the raw calls by full key, each one retried (`storage.retry`) and its
failure translated into `storage.errors` by `map_s3_error`. botocore's own retries are
switched off so that every retry is ours: one policy, counted.

Credentials are never handled here: boto3 resolves them through the standard AWS chain
(env vars, shared config/credentials files, instance/container roles).
"""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from .errors import AccessDenied, BucketNotFound, NotFound, StorageError, Throttled, Transient
from .retry import RetryPolicy, with_retries
from .uris import resolve_endpoint_url

__all__ = ["s3_client", "map_s3_error", "S3Bucket", "PreconditionFailed", "Unsupported"]

T = TypeVar("T")

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled", "AccountProblem"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
              "TooManyRequests", "TooManyRequestsException", "429", "RequestThrottled", "BandwidthLimitExceeded"}
_TRANSIENT = {"InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException", "500", "502",
              "503", "504", "BadGateway", "GatewayTimeout", "PriorRequestNotComplete"}
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_UNSUPPORTED = {"NotImplemented", "501"}


class PreconditionFailed(StorageError):
    """A conditional write (If-None-Match: *) found the object already there."""


class Unsupported(StorageError):
    """The endpoint does not implement a request feature (e.g. conditional writes)."""


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status) if status else ""
    return code


def map_s3_error(exc: BaseException, uri: str, op: str) -> StorageError:
    """The `storage.errors` exception for a botocore failure of `op` on `uri`."""
    from botocore import exceptions as bce

    code = _error_code(exc)
    if code in _NOT_FOUND:
        return NotFound(uri)
    if code == "NoSuchBucket":
        return BucketNotFound(f"{op} {uri}: bucket does not exist", uri)
    text = f"{op} {uri}: {code or type(exc).__name__}: {exc}"
    if code in _DENIED:
        return AccessDenied(text, uri)
    if code in _THROTTLED:
        return Throttled(text, uri)
    if code in _TRANSIENT:
        return Transient(text, uri)
    if code in _PRECONDITION:
        return PreconditionFailed(text, uri)
    if code in _UNSUPPORTED:
        return Unsupported(text, uri)
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError,
                        bce.ResponseStreamingError)):
        return Transient(text, uri)  # connection refused/reset/timed out, body cut short
    if isinstance(exc, bce.NoCredentialsError):
        return AccessDenied(text, uri)
    return StorageError(text, uri)


_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint_url: str | None = None) -> Any:
    """A shared boto3 S3 client for `endpoint_url` (resolved as in `resolve_endpoint_url`).

    Cached per process and endpoint because creating one costs tens of milliseconds and
    clients are thread-safe; keyed by pid so a forked child never reuses its parent's
    connection pool. botocore retries nothing itself (`storage.retry` does).
    """
    import boto3
    from botocore.config import Config

    endpoint = resolve_endpoint_url(endpoint_url)
    cache_key = (os.getpid(), endpoint)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=32)
            # A fresh Session per client: the default session is not thread-safe.
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            _clients[cache_key] = client
        return client


class S3Bucket:
    """Calls on one bucket by full key, retried and with errors mapped. Pickles without
    its client (Ray ships it to workers); the client is re-created on first use."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, retry: RetryPolicy | None = None) -> None:
        self.bucket = bucket
        self.endpoint_url = resolve_endpoint_url(endpoint_url)
        self.retry = retry
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        """`fn()` (one or more client calls) retried, its botocore errors mapped."""
        from botocore.exceptions import BotoCoreError, ClientError

        def once() -> T:
            try:
                return fn()
            except (ClientError, BotoCoreError) as e:
                raise map_s3_error(e, uri, op) from e

        return with_retries(once, policy=self.retry, what=f"{op} {uri}")

    def get(self, key: str) -> bytes:
        # Reading the body is inside the retried call: a stream cut short is retried whole.
        return self.call("get", self.uri(key),
                         lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def download(self, key: str, fileobj: BinaryIO) -> None:
        """Stream the object into a seekable binary file (rewound and refilled on a retry),
        for objects that need not fit in memory."""
        def copy() -> None:
            fileobj.seek(0)
            fileobj.truncate()
            shutil.copyfileobj(self.client.get_object(Bucket=self.bucket, Key=key)["Body"], fileobj, 1 << 20)

        self.call("get", self.uri(key), copy)

    def head(self, key: str) -> tuple[int, str]:
        """(size, ETag without quotes)."""
        head = self.call("stat", self.uri(key), lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        return int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')

    def put(self, key: str, body: bytes, *, if_absent: bool = False) -> None:
        """One PutObject (atomic); `if_absent` raises `PreconditionFailed` when it exists."""
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        self.call("put", self.uri(key),
                  lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra))

    def put_multipart(self, key: str, body: bytes, part_size: int, *, if_absent: bool = False) -> None:
        """A multipart upload, visible only at Complete and aborted on any failure."""
        uri = self.uri(key)
        upload_id = self.call("put", uri, lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key))["UploadId"]
        try:
            parts = []
            view = memoryview(body)
            for number, start in enumerate(range(0, len(body), part_size), start=1):
                chunk = view[start:start + part_size].tobytes()
                response = self.call("put", uri, lambda: self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk))
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
            extra = {"IfNoneMatch": "*"} if if_absent else {}
            self.call("put", uri, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra))
        except BaseException:
            # Nothing is visible before Complete; aborting frees the stored parts.
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass
            raise

    def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error (as on S3)."""
        try:
            self.call("delete", self.uri(key), lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        except NotFound:
            pass

    def list(self, prefix: str, page_size: int = 1000) -> Iterator[tuple[str, int, str]]:
        """(key, size, ETag) of every object under `prefix`, in key order; each page's
        request is retried on its own, so a long listing survives a flaky page."""
        token: str | None = None
        uri = self.uri(prefix)
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list", uri, lambda: self.client.list_objects_v2(**kwargs))
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
