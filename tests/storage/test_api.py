"""Whole objects by URI (local and S3 over HTTP), the error family, and retries.

The failing S3 endpoints are small HTTP servers on 127.0.0.1 that answer as S3 does when
it throttles, fails or refuses (status + XML error body); boto3 talks to them over real
HTTP exactly as to AWS.
"""
from __future__ import annotations

import http.server
import os
import random
import threading
import time
from typing import Iterator

import pytest

import storage
from storage import (AccessDenied, InvalidURI, NotFound, RetryPolicy, StorageError, Throttled, TooLarge, Transient)
from tests.support import free_port

FAST = RetryPolicy(attempts=3, base_delay_s=0.001, max_delay_s=0.002)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket").uri("root")


def test_round_trip_by_uri(root):
    uri = f"{root}/a/b.bin"
    assert not storage.exists(uri)
    assert storage.write_bytes(uri, b"hello") is True
    assert storage.write_bytes(uri, b"other", overwrite=False) is False
    assert storage.read_bytes(uri) == b"hello"
    with storage.open_uri(uri) as f:
        assert f.read() == b"hello"
    info = storage.stat(uri)
    assert info.size == 5 and info.version
    with pytest.raises(TooLarge, match="limit is 4"):
        storage.read_bytes(uri, max_bytes=4)
    storage.delete(uri)
    storage.delete(uri)  # idempotent
    with pytest.raises(NotFound, match="a/b.bin") as missing:
        storage.read_bytes(uri)
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, KeyError)


def test_list_objects_pages_through_a_prefix(s3_bucket):
    for i in range(5):
        storage.write_bytes(s3_bucket.uri(f"p/{i}.bin"), bytes([i]))
    storage.write_bytes(s3_bucket.uri("q/x.bin"), b"x")
    listed = list(storage.list_objects(s3_bucket.uri("p/"), page_size=2))
    assert [i.key for i in listed] == [s3_bucket.uri(f"p/{i}.bin") for i in range(5)]
    assert [i.size for i in listed] == [1] * 5


def test_bad_uris_are_invalid(tmp_path):
    with pytest.raises(InvalidURI, match="scheme"):
        storage.read_bytes("http://example.com/x.png")
    with pytest.raises(InvalidURI, match="no key"):
        storage.read_bytes("s3://bucket")
    with pytest.raises(StorageError, match="directory"):
        storage.read_bytes(str(tmp_path))


def test_backoff_stays_within_its_exponential_ceiling():
    policy = RetryPolicy(attempts=6, base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(0)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole range


class _S3Errors(http.server.BaseHTTPRequestHandler):
    """Answers the first `failures` requests with `status`/`code`, then serves b"hello"."""

    failures = 0
    status, code = 503, "SlowDown"
    seen = 0

    def _answer(self, with_body: bool) -> None:
        type(self).seen += 1
        if type(self).seen <= self.failures:
            body = f"<Error><Code>{self.code}</Code><Message>test</Message></Error>".encode()
            self.send_response(self.status)
        else:
            body = b"hello"
            self.send_response(200)
            self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def failing_s3(monkeypatch) -> Iterator[type[_S3Errors]]:
    handler = type("Handler", (_S3Errors,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_address[1]}")
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_throttling_is_retried_and_counted(failing_s3):
    failing_s3.failures = 2
    before = storage.retry_counts()
    assert storage.read_bytes("s3://b/k.png", retry=FAST) == b"hello"
    after = storage.retry_counts()
    assert after["retries"] - before["retries"] == 2 and after["gave_up"] == before["gave_up"]


@pytest.mark.parametrize("status,code,error", [(503, "SlowDown", Throttled), (500, "InternalError", Transient)])
def test_retries_give_up_with_the_mapped_error(failing_s3, status, code, error):
    failing_s3.failures, failing_s3.status, failing_s3.code = 99, status, code
    before = storage.retry_counts()
    with pytest.raises(error, match="s3://b/k.png"):
        storage.read_bytes("s3://b/k.png", retry=FAST)
    assert failing_s3.seen == FAST.attempts
    assert storage.retry_counts()["gave_up"] == before["gave_up"] + 1


def test_access_denied_is_not_retried(failing_s3):
    failing_s3.failures, failing_s3.status, failing_s3.code = 99, 403, "AccessDenied"
    with pytest.raises(AccessDenied):
        storage.read_bytes("s3://b/k.png", retry=FAST)
    assert failing_s3.seen == 1


def test_unreachable_endpoint_is_transient():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(Transient):
        storage.stat("s3://b/k.png", endpoint_url=endpoint, retry=RetryPolicy(attempts=2, base_delay_s=0.001))


def test_policy_from_environment(monkeypatch):
    monkeypatch.setenv("SEEM_STORAGE_ATTEMPTS", "7")
    monkeypatch.setenv("SEEM_STORAGE_BACKOFF_S", "0.5")
    storage.set_retry_policy(None)
    try:
        assert storage.retry.default_policy() == RetryPolicy(attempts=7, base_delay_s=0.5)
    finally:
        monkeypatch.undo()
        storage.set_retry_policy(None)


def test_retry_budget_in_minutes_ends_the_retries(monkeypatch):
    """Retries go on until the time budget is spent (not after a handful of tries), and
    the budget is set in minutes from the environment."""
    monkeypatch.setenv("SEEM_STORAGE_RETRY_MINUTES", "0.5")
    storage.set_retry_policy(None)
    try:
        assert storage.retry.default_policy().budget_s == 30.0
    finally:
        monkeypatch.undo()
        storage.set_retry_policy(None)
    assert RetryPolicy().budget_s >= 120  # the default waits out an outage of minutes
    calls = []

    def failing() -> None:
        calls.append(time.monotonic())
        raise Transient("503 ServiceUnavailable", "s3://b/k")

    policy = RetryPolicy(base_delay_s=0.02, max_delay_s=0.02, budget_s=0.5)
    before = storage.retry_counts()
    with pytest.raises(Transient):
        storage.with_retries(failing, policy=policy)
    assert 0.4 <= calls[-1] - calls[0] <= 0.5 + 0.3 and len(calls) > 10  # many more than botocore's 5
    assert storage.retry_counts()["gave_up"] == before["gave_up"] + 1


def test_download_streams_into_a_file(root, tmp_path):
    uri = f"{root}/big.bin"
    body = os.urandom(3 << 20)
    storage.write_bytes(uri, body)
    with open(tmp_path / "copy.bin", "w+b") as f:
        f.write(b"stale bytes from an earlier attempt")
        storage.download(uri, f)
    assert (tmp_path / "copy.bin").read_bytes() == body
