"""The feature store's object backends: `storage`'s stores under the names store/ uses.

The backends themselves (local directory, S3), their atomic writes and their error
mapping live in the `storage` package; this module adds what is particular to the
feature store (model ids as key segments) and keeps the names `StoreError` and
`ObjectNotFound` that store/ and its callers use.
"""
from __future__ import annotations

import re

from storage import (TEMP_PREFIX, CorruptObject, LocalStore, ObjectInfo, ObjectStore, S3Store, open_store,
                     resolve_endpoint_url, s3_client, split_s3_uri)
from storage import NotFound as ObjectNotFound
from storage import StorageError as StoreError

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

_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_model_id(model_id: str) -> str:
    """Model ids become a key segment: allow only [A-Za-z0-9._-], at most 128 chars."""
    if not isinstance(model_id, str) or not _MODEL_ID_RE.match(model_id) or model_id in (".", ".."):
        raise ValueError(f"invalid model id {model_id!r}: expected [A-Za-z0-9._-], at most 128 characters")
    return model_id
