"""The feature store under test, on both backends: a local folder and moto's S3 over HTTP."""
from __future__ import annotations

import pytest

from store import FeatureStore


@pytest.fixture
def fstore(object_store):
    """A feature store on each backend (tests/s3_server.py's `object_store`)."""
    return FeatureStore(object_store.root_uri, backend=object_store)
