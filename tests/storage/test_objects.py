"""ObjectStore contract on both backends: local directory and S3 over HTTP (moto)."""
from __future__ import annotations

import os
import pickle

import pytest

from storage import local
from storage import (TEMP_PREFIX, BucketNotFound, LocalStore, NotFound, S3Store, StorageError, open_store)


@pytest.fixture
def store(object_store):
    """Each backend (tests/s3_server.py's `object_store`)."""
    return object_store


def test_round_trip(store):
    assert not store.exists("a/b.bin")
    assert store.put_atomic("a/b.bin", b"hello") is True
    assert store.exists("a/b.bin")
    assert store.get("a/b.bin") == b"hello"
    assert store.stat("a/b.bin").size == 5
    store.put_atomic("a/b.bin", bytearray(b"hello, again"))
    assert store.get("a/b.bin") == b"hello, again"
    store.put_atomic("a/c/d.bin", memoryview(b"x" * 10))
    store.put_atomic("a.bin", b"")  # empty objects are objects too
    store.put_atomic("ab/e.bin", b"yy")
    assert list(store.list()) == [("a.bin", 0), ("a/b.bin", 12), ("a/c/d.bin", 10), ("ab/e.bin", 2)]
    assert list(store.list("a/")) == [("a/b.bin", 12), ("a/c/d.bin", 10)]
    assert [k for k, _ in store.list("a")] == ["a.bin", "a/b.bin", "a/c/d.bin", "ab/e.bin"]  # string prefix, as S3
    assert list(store.list("zzz/")) == []
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # idempotent
    assert not store.exists("a/b.bin")
    assert [k for k, _ in store.list("a/")] == ["a/c/d.bin"]


def test_missing_key_names_uri(store):
    with pytest.raises(NotFound) as info:
        store.get("nope/x.bin")
    assert isinstance(info.value, KeyError) and isinstance(info.value, FileNotFoundError)
    assert store.uri("nope/x.bin") in str(info.value)
    with pytest.raises(NotFound):
        store.stat("nope/x.bin")


def test_no_overwrite(store):
    assert store.put_atomic("k.bin", b"first", overwrite=False) is True
    version = store.stat("k.bin").version
    assert store.put_atomic("k.bin", b"second", overwrite=False) is False
    assert store.get("k.bin") == b"first"
    assert store.stat("k.bin").version == version


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../x", "a/./b", "a\\b", f"a/{TEMP_PREFIX}x"])
def test_invalid_keys_rejected(tmp_path, key):
    with pytest.raises(ValueError):
        LocalStore(str(tmp_path)).put_atomic(key, b"x")


def test_uris(tmp_path):
    local = open_store(f"file://{tmp_path}/r")
    assert isinstance(local, LocalStore) and local.uri("a/b") == str(tmp_path / "r" / "a" / "b")
    s3 = open_store("s3://bucket/p/q/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and s3.uri("a/b") == "s3://bucket/p/q/a/b"
    assert open_store("s3://bucket").uri("k") == "s3://bucket/k"
    with pytest.raises(ValueError):
        open_store("http://example.com/x")


def test_local_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path))
    store.put_atomic("d/keep.bin", b"old")

    def half_then_fail(fd, data):
        os.write(fd, data[: len(data) // 2])  # some bytes really reach the temp file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local, "write_fully", half_then_fail)
    with pytest.raises(OSError):
        store.put_atomic("d/new.bin", b"x" * 1000)
    with pytest.raises(OSError):
        store.put_atomic("d/keep.bin", b"y" * 1000)
    assert not store.exists("d/new.bin")
    assert store.get("d/keep.bin") == b"old"
    assert list(store.list()) == [("d/keep.bin", 3)]
    assert sorted(os.listdir(tmp_path / "d")) == ["keep.bin"]  # temp file removed too


def test_local_temp_files_never_listed(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put_atomic("d/a.bin", b"a")
    # A crashed writer (kill -9) can leave a temp file behind: it must stay invisible.
    (tmp_path / "d" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"partial")
    assert list(store.list()) == [("d/a.bin", 1)]
    assert list(store.list("d/.seem")) == []
    assert store.remove_stale_temp(max_age_s=3600) == 0  # might be an in-flight write
    old = tmp_path / "d" / f"{TEMP_PREFIX}deadbeef"
    os.utime(old, (1, 1))
    assert store.remove_stale_temp(max_age_s=3600) == 1 and not old.exists()
    assert store.get("d/a.bin") == b"a"


def test_s3_multipart_and_failed_upload(s3_bucket, monkeypatch):
    store = S3Store(s3_bucket.name, "mp", endpoint_url=s3_bucket.endpoint_url, multipart_threshold=6 << 20, part_size=5 << 20)
    body = os.urandom(11 << 20)  # 3 parts: 5 + 5 + 1 MiB
    store.put_atomic("big.bin", body)
    assert store.get("big.bin") == body

    calls = {"n": 0}
    real_upload_part = store.client.upload_part

    def flaky_upload_part(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network dropped mid-upload")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(store.client, "upload_part", flaky_upload_part)
    with pytest.raises(ConnectionError):
        store.put_atomic("broken.bin", body)
    assert not store.exists("broken.bin")
    assert [k for k, _ in store.list()] == ["big.bin"]
    uploads = s3_bucket.client().list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert uploads == []  # aborted, no orphaned parts


def test_s3_pagination(s3_bucket):
    store = S3Store(s3_bucket.name, "", endpoint_url=s3_bucket.endpoint_url, list_page_size=2)
    for i in range(5):
        store.put_atomic(f"p/{i}.bin", bytes([i]))
    assert [k for k, _ in store.list("p/")] == [f"p/{i}.bin" for i in range(5)]


def test_s3_missing_bucket(s3_server):
    store = S3Store("no-such-bucket-here", endpoint_url=s3_server)
    with pytest.raises(BucketNotFound, match="does not exist"):
        store.get("k")
    assert issubclass(BucketNotFound, StorageError) and not issubclass(BucketNotFound, NotFound)


def test_s3_store_pickles_without_client(s3_bucket):
    store = S3Store(s3_bucket.name, "x", endpoint_url=s3_bucket.endpoint_url)
    store.put_atomic("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None and clone.get("k") == b"v"


def test_endpoint_from_environment(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_bucket.endpoint_url)
    store = open_store(s3_bucket.uri("env"))
    store.put_atomic("k", b"v")
    assert store.get("k") == b"v"
