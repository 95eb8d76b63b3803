"""The feature store under test, on both backends: a local folder and moto's S3 over HTTP."""
from __future__ import annotations

import pytest

from store import FeatureStore


@pytest.fixture(params=["local", "s3"])
def fstore(request, tmp_path):
    if request.param == "local":
        return FeatureStore(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return FeatureStore(bucket.uri("features-root"), endpoint_url=bucket.endpoint_url)
