"""Feature store: content-addressed image features + a Parquet manifest (docs/architecture.md, "The feature store format").

Used by both `pipeline` and `serving` (which never import each other), so it is its
own package. Names are imported lazily: `store.backends` and `store.manifest` do not
need torch, and listing/reading tasks should not pay for importing it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # backends
    "ObjectStore": "store.backends",
    "LocalStore": "store.backends",
    "S3Store": "store.backends",
    "ObjectInfo": "store.backends",
    "open_store": "store.backends",
    "s3_client": "store.backends",
    "split_s3_uri": "store.backends",
    "StoreError": "store.backends",
    "ObjectNotFound": "store.backends",
    "CorruptObject": "store.backends",
    # features
    "FeatureStore": "store.feature_store",
    "PutResult": "store.feature_store",
    "serialize_features": "store.feature_store",
    "deserialize_features": "store.feature_store",
    "content_sha256": "store.feature_store",
    "feature_key": "store.feature_store",
    # manifest
    "Manifest": "store.manifest",
    "ManifestRow": "store.manifest",
    "DoneEntry": "store.manifest",
    "MANIFEST_SCHEMA": "store.manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the real names
    from store.backends import (
        CorruptObject,
        LocalStore,
        ObjectInfo,
        ObjectNotFound,
        ObjectStore,
        S3Store,
        StoreError,
        open_store,
        s3_client,
        split_s3_uri,
    )
    from store.feature_store import (
        FeatureStore,
        PutResult,
        content_sha256,
        deserialize_features,
        feature_key,
        serialize_features,
    )
    from store.manifest import MANIFEST_SCHEMA, DoneEntry, Manifest, ManifestRow
