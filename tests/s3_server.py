"""An S3 endpoint for tests: moto's server on 127.0.0.1, reached over real HTTP.

Registered as a pytest plugin in tests/conftest.py. Code under test talks to it exactly
as it would to AWS or MinIO — through boto3 / pyarrow with an endpoint URL — never
through moto's in-process mocks.

Fixtures:
- `s3_server` (session): the endpoint URL, e.g. "http://127.0.0.1:40123". While it is
  alive, dummy credentials and the endpoint are in the environment (AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3), so subprocesses such
  as Ray workers started afterwards inherit them; the previous values are restored at
  the end of the session. Shared config/credential files are pointed at nothing so a
  developer's real AWS profile can never be used by a test.
- `s3_bucket` (function): a fresh, empty bucket on that server, as an `S3Bucket`.
"""
from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:
    from storage import ObjectStore

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the test S3 server."""

    endpoint_url: str
    name: str

    def uri(self, key: str = "") -> str:
        """`s3://bucket/key`."""
        return f"s3://{self.name}/{key}" if key else f"s3://{self.name}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for processes that must reach the server (e.g. a Ray runtime_env)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self) -> Any:
        """A boto3 client for seeding and inspecting the bucket in tests."""
        return _client(self.endpoint_url)

    def pyarrow_filesystem(self) -> Any:
        """A pyarrow S3FileSystem for this server (paths are "bucket/key")."""
        from pyarrow import fs

        host = self.endpoint_url.split("://", 1)[1]
        return fs.S3FileSystem(
            endpoint_override=host, scheme="http", access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION
        )


@functools.lru_cache(maxsize=None)
def _client(endpoint_url: str) -> Any:
    # Creating a boto3 client costs ~0.1 s here; clients are thread-safe, so share one.
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        nowhere = str(tmp_path_factory.mktemp("aws") / "absent")
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            mp.setenv("AWS_DEFAULT_REGION", REGION)
            mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            mp.setenv("AWS_CONFIG_FILE", nowhere)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no IMDS probe delays
            yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[S3Bucket]:
    bucket = S3Bucket(s3_server, f"test-{uuid.uuid4().hex[:16]}")
    client = bucket.client()
    client.create_bucket(Bucket=bucket.name)
    yield bucket
    # Empty and drop it so a long session does not accumulate objects in memory.
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket.name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=bucket.name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket.name)
    except Exception:
        pass


@pytest.fixture(params=["local", "s3"])
def object_store(request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    """An empty object store on each backend: a local folder, and a prefix of a fresh bucket of
    the moto server (over HTTP)."""
    from storage import open_store

    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(bucket.uri("some/prefix"), endpoint_url=bucket.endpoint_url)
