"""storage: local paths and s3:// objects behind one interface (the bottom package).

Imports nothing of ours; every other package that touches files or buckets goes through
it, and it is the only package that imports boto3/botocore.

- whole objects by URI: `read_bytes`, `download` (into a file), `open_uri`, `write_bytes` (atomic), `stat`,
  `exists`, `delete`, `list_objects` (storage.api)
- stores of keys under a root: `open_store` -> `LocalStore` / `S3Store` (storage.objects)
- one error family: `StorageError` > `NotFound`, `BucketNotFound`, `AccessDenied`,
  `Throttled`, `Transient`, `InvalidURI`, `CorruptObject` (storage.errors)
- retries with exponential backoff and jitter, counted: `RetryPolicy`,
  `set_retry_policy`, `retry_counts` (storage.retry)
- the S3 endpoint: an explicit `endpoint_url`, else AWS_ENDPOINT_URL_S3, else
  AWS_ENDPOINT_URL (`resolve_endpoint_url`)

boto3 is imported only when an s3:// object is first touched.
"""
from __future__ import annotations

from .api import delete, download, exists, list_objects, open_uri, read_bytes, stat, write_bytes
from .errors import (AccessDenied, BucketNotFound, CorruptObject, InvalidURI, NotFound, StorageError, Throttled,
                     TooLarge, Transient)
from .local import TEMP_PREFIX
from .objects import LocalStore, ObjectInfo, ObjectStore, S3Store, check_key, open_store
from .retry import RetryPolicy, reset_retry_counts, retry_counts, set_retry_policy, with_retries
from .uris import is_s3, local_path, resolve_endpoint_url, split_s3_uri

__all__ = [
    "AccessDenied", "BucketNotFound", "CorruptObject", "InvalidURI", "NotFound", "StorageError", "Throttled",
    "Transient", "TooLarge",
    "read_bytes", "download", "open_uri", "write_bytes", "stat", "exists", "delete", "list_objects",
    "ObjectInfo", "ObjectStore", "LocalStore", "S3Store", "open_store", "check_key", "TEMP_PREFIX",
    "RetryPolicy", "with_retries", "retry_counts", "reset_retry_counts", "set_retry_policy",
    "is_s3", "local_path", "split_s3_uri", "resolve_endpoint_url", "s3_client",
]


def s3_client(endpoint_url: str | None = None):  # noqa: ANN201 - a boto3 client
    """A shared boto3 S3 client (imports boto3; see storage.s3)."""
    from .s3 import s3_client as make

    return make(endpoint_url)
