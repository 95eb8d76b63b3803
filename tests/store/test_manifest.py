"""Manifest: part files, concurrent writers, de-duplication, done index, compaction."""
from __future__ import annotations

import datetime as dt
import threading

import pyarrow as pa
import pytest

from store import CorruptObject, DoneEntry, Manifest, MANIFEST_SCHEMA, open_store

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def ok(uri, *, t=0, size=10, etag="e1", sha="a" * 64, **kw):
    return {"uri": uri, "size": size, "etag": etag, "sha256": sha, "width": 4, "height": 3,
            "feature_key": f"m/features/aa/{sha}.safetensors", "bytes": 123, "status": "ok",
            "time": T0 + dt.timedelta(seconds=t), **kw}


def err(uri, *, t=0, msg="truncated", **kw):
    return {"uri": uri, "size": 10, "etag": "e1", "status": "error", "error": msg,
            "time": T0 + dt.timedelta(seconds=t), **kw}


@pytest.fixture(params=["local", "s3"])
def manifest(request, tmp_path):
    if request.param == "local":
        return Manifest(open_store(str(tmp_path)), "m")
    bucket = request.getfixturevalue("s3_bucket")
    return Manifest.open(bucket.uri("root"), "m", endpoint_url=bucket.endpoint_url)


def test_empty(manifest):
    table = manifest.read()
    assert table.num_rows == 0 and table.schema == MANIFEST_SCHEMA
    assert manifest.done_index() == {}
    assert manifest.compact() is None


def test_parts_and_schema(manifest):
    key = manifest.write([ok("s3://b/1.jpg"), err("s3://b/2.jpg")], run_id="run-1")
    assert key.startswith("m/manifest/part-run-1-") and key.endswith(".parquet")
    assert manifest.write([], run_id="run-1") is None
    table = manifest.read()
    assert table.schema == MANIFEST_SCHEMA
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert rows["s3://b/1.jpg"]["status"] == "ok" and rows["s3://b/1.jpg"]["run_id"] == "run-1"
    assert rows["s3://b/2.jpg"]["error"] == "truncated" and rows["s3://b/2.jpg"]["sha256"] is None


def test_concurrent_writers(manifest):
    n_threads, per_thread = 8, 25

    def writer(i):
        for j in range(0, per_thread, 5):  # several batches per writer = several parts
            manifest.write([ok(f"/img/{i}/{k}.jpg", t=k) for k in range(j, j + 5)], run_id=f"actor{i}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(manifest.parts()) == n_threads * per_thread // 5
    table = manifest.read()
    assert table.num_rows == n_threads * per_thread
    assert table["uri"].to_pylist() == sorted(table["uri"].to_pylist())


def test_dedupe_rules(manifest):
    manifest.write([err("/a.jpg", t=0), ok("/b.jpg", t=0), ok("/c.jpg", t=5, etag="old")], run_id="r1")
    # re-run: /a now succeeds, /b fails later, /c is an older row (must not win)
    manifest.write([ok("/a.jpg", t=1), err("/b.jpg", t=2), ok("/c.jpg", t=1, etag="older")], run_id="r2")
    # tie on time: ok beats error, whatever the part order
    manifest.write([ok("/d.jpg", t=3)], run_id="r3")
    manifest.write([err("/d.jpg", t=3)], run_id="r4")
    table = manifest.read()
    assert table["uri"].to_pylist() == ["/a.jpg", "/b.jpg", "/c.jpg", "/d.jpg"]
    status = dict(zip(table["uri"].to_pylist(), table["status"].to_pylist()))
    assert status == {"/a.jpg": "ok", "/b.jpg": "error", "/c.jpg": "ok", "/d.jpg": "ok"}
    assert manifest.read(dedupe=False).num_rows == 8
    index = manifest.done_index()
    assert index["/c.jpg"] == DoneEntry(10, "old", "a" * 64, "ok")
    assert index["/c.jpg"].unchanged(10, "old") and not index["/c.jpg"].unchanged(10, "new")
    assert index["/b.jpg"].status == "error" and index["/b.jpg"].sha256 is None


def test_rerun_replaces_rows(manifest):
    rows = [ok(f"/x/{i}.jpg", t=i) for i in range(4)]
    manifest.write(rows, run_id="first")
    # the same run repeated later (e.g. after a kill) writes the same uris again
    manifest.write([dict(r, time=r["time"] + dt.timedelta(hours=1)) for r in rows], run_id="second")
    table = manifest.read()
    assert table.num_rows == 4 and set(table["run_id"].to_pylist()) == {"second"}


def test_compact(manifest):
    for i in range(3):
        manifest.write([ok("/same.jpg", t=i, etag=f"v{i}"), ok(f"/u{i}.jpg")], run_id=f"r{i}")
    before = manifest.read()
    key = manifest.compact()
    assert manifest.parts() == [key]
    after = manifest.read()
    assert after.equals(before)
    assert manifest.read(dedupe=False).num_rows == 4
    assert manifest.done_index()["/same.jpg"].etag == "v2"
    # writes after compaction still merge
    manifest.write([ok("/same.jpg", t=10, etag="v3")], run_id="r9")
    assert manifest.done_index()["/same.jpg"].etag == "v3"


def test_crash_between_compact_write_and_delete(tmp_path):
    """A compaction killed after publishing its part leaves duplicates; reads still dedupe."""
    m = Manifest(open_store(str(tmp_path)), "m")
    m.write([ok("/a.jpg", t=0)], run_id="r1")
    m.write([ok("/a.jpg", t=1, etag="new")], run_id="r2")
    m._write_part(m.read(), "compact")  # the first half of compact()
    assert len(m.parts()) == 3
    assert m.read().num_rows == 1 and m.done_index()["/a.jpg"].etag == "new"


def test_row_validation(manifest):
    with pytest.raises(ValueError, match="status"):
        manifest.write([{"uri": "/a", "status": "maybe"}], run_id="r")
    with pytest.raises(ValueError, match="unknown columns"):
        manifest.write([{"uri": "/a", "status": "ok", "colour": "red"}], run_id="r")
    with pytest.raises(ValueError, match="run id"):
        manifest.write([{"uri": "/a", "status": "ok"}], run_id="bad/run")
    assert manifest.parts() == []


def test_damaged_part_is_quarantined_not_fatal(manifest):
    """One unreadable part must not make every later job fail: it is moved aside (kept
    for inspection) and its rows are gone, so their images count as not done."""
    manifest.write(pa.Table.from_pylist([ok("/a.jpg")]), run_id="r")
    manifest.backend.put_atomic("m/manifest/part-x-1.parquet", b"PAR1 this is not parquet")
    assert manifest.done_index().keys() == {"/a.jpg"}
    assert manifest.quarantined == ["m/manifest/quarantine/part-x-1.parquet"]
    assert manifest.backend.get("m/manifest/quarantine/part-x-1.parquet") == b"PAR1 this is not parquet"
    assert len(manifest.parts()) == 1 and manifest.read().num_rows == 1  # the next reader sees no damage
    with pytest.raises(CorruptObject):
        manifest._read_part("m/manifest/quarantine/part-x-1.parquet")


def test_compacted_parts_are_bounded(manifest):
    manifest.write([ok(f"/{i:02d}.jpg") for i in range(10)], run_id="r1")
    manifest.write([ok(f"/{i:02d}.jpg", t=1, etag="v2") for i in range(5)], run_id="r2")
    before = manifest.read()
    manifest.compact(part_rows=4)
    parts = manifest.parts()
    assert len(parts) == 3  # 10 rows in parts of <= 4, sorted by uri
    assert max(manifest._read_part(k).num_rows for k in parts) == 4
    assert manifest.read().equals(before)


def test_compact_small_leaves_large_parts_alone(manifest):
    big = manifest.write([ok(f"/big/{i:04d}.jpg") for i in range(2000)], run_id="full")
    big_size = dict(manifest.backend.list(manifest.prefix))[big]
    for i in range(3):  # what three incremental runs leave
        manifest.write([ok(f"/new/{i}.jpg", t=1)], run_id=f"inc{i}")
    before = manifest.read()
    folded = manifest.compact_small(small_bytes=big_size)
    parts = manifest.parts()
    assert big in parts and folded in parts and len(parts) == 2
    assert manifest._read_part(folded).num_rows == 3
    assert manifest.read().equals(before)
    assert manifest.compact_small(small_bytes=big_size) is None  # one small part: nothing to fold
