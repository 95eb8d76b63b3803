"""Bulk jobs against a throttling, flaky and briefly absent S3 endpoint.

Every S3 call of the job — listing, reading images, the feature store, the manifest —
goes through the fault proxy of tests/s3_faults.py in front of moto. The jobs must end
with every image done in that run (nothing left for a re-run), count the retries they
needed, and leave only whole objects.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.jobs import EncodeOptions, encode_job
from pipeline.stages import DecodeOptions
from store import FeatureStore

from .conftest import write_png

pytestmark = [pytest.mark.timeout(400), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

N_IMAGES = 16


def _upload(bucket, tmp_path: Path) -> None:
    client = bucket.client()
    for i in range(N_IMAGES):
        path = write_png(tmp_path / f"f{i}.png", seed=700 + i)
        client.put_object(Bucket=bucket.name, Key=f"photos/f{i:02d}.png", Body=path.read_bytes())


def _options(endpoint: str) -> EncodeOptions:
    return EncodeOptions(progress=False, batch_size=2, manifest_flush_rows=2, manifest_flush_s=0.5,
                         endpoint_url=endpoint, decode=DecodeOptions(endpoint_url=endpoint))


def _check_all_done(bucket, summary) -> None:
    assert (summary.encoded, summary.failed) == (N_IMAGES, 0), summary
    fstore = FeatureStore(bucket.uri("features"), bucket.endpoint_url)
    rows = fstore.manifest(summary.model_id).read().to_pylist()
    assert len(rows) == N_IMAGES and {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    for r in rows:
        fstore.get(summary.model_id, r["sha256"])  # whole and verified


def test_throttling_and_dropped_connections(ray_address, s3_bucket, s3_faults, tmp_path):
    """A fifth of all requests answered 503 SlowDown or dropped without an answer."""
    _upload(s3_bucket, tmp_path)
    s3_faults.set_faults(slowdown=0.15, drop=0.05)
    summary = encode_job(s3_bucket.uri("photos"), s3_bucket.uri("features"), _options(s3_faults.url))
    s3_faults.set_faults(slowdown=0, drop=0)
    _check_all_done(s3_bucket, summary)
    injected = s3_faults.counts["slowdown"] + s3_faults.counts["drop"]
    assert injected >= 5, s3_faults.counts
    # Every injected fault cost one retry somewhere in the job (driver, decode, encoder).
    assert summary.storage_retries >= injected, (summary.storage_retries, s3_faults.counts)


def test_outage_longer_than_botocore_retries(ray_address, s3_bucket, s3_faults, tmp_path):
    """S3 answers nothing but 503 for 15 s in the middle of the job (botocore's own five
    attempts give up after ~8 s): the job waits it out and finishes every image."""
    _upload(s3_bucket, tmp_path)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = encode_job(s3_bucket.uri("photos"), s3_bucket.uri("features"),
                                            _options(s3_faults.url))
        except Exception as e:
            outcome["error"] = e

    job = threading.Thread(target=run, daemon=True)
    job.start()
    client = s3_bucket.client()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.is_alive():
        if client.list_objects_v2(Bucket=s3_bucket.name, Prefix="features/").get("KeyCount", 0) >= 2:
            break
        time.sleep(0.1)
    assert job.is_alive(), f"the job ended before the outage: {outcome}"
    s3_faults.outage(15)
    job.join(timeout=360)
    assert not job.is_alive()
    assert "error" not in outcome, f"the job failed: {outcome.get('error')!r}"
    assert s3_faults.counts["outage"] > 0
    _check_all_done(s3_bucket, outcome["summary"])
    assert outcome["summary"].storage_retries >= 1


def test_damaged_manifest_part_is_quarantined_and_its_images_redone(ray_address, s3_bucket, s3_faults, tmp_path):
    """One manifest part damaged (a bad disk, a bad copy): later jobs do not abort; the
    part is moved aside and its images are done again from their stored features."""
    _upload(s3_bucket, tmp_path)
    first = encode_job(s3_bucket.uri("photos"), s3_bucket.uri("features"), _options(s3_faults.url))
    client = s3_bucket.client()
    prefix = f"features/{first.model_id}/manifest/"
    parts = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.name, Prefix=prefix)["Contents"])
    fstore = FeatureStore(s3_bucket.uri("features"), s3_bucket.endpoint_url)
    lost = fstore.manifest(first.model_id)._read_part(parts[0][len("features/"):]).num_rows
    client.put_object(Bucket=s3_bucket.name, Key=parts[0], Body=b"PAR1\x00damaged\x00PAR1")

    again = encode_job(s3_bucket.uri("photos"), s3_bucket.uri("features"), _options(s3_faults.url))
    assert again.manifest_quarantined == 1 and again.failed == 0
    assert (again.skipped, again.reused, again.encoded) == (N_IMAGES - lost, lost, 0)  # features were kept
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.name, Prefix=prefix)["Contents"]}
    assert parts[0] not in keys and f"{prefix}quarantine/{parts[0][len(prefix):]}" in keys
    _check_all_done(s3_bucket, first)
    third = encode_job(s3_bucket.uri("photos"), s3_bucket.uri("features"), _options(s3_faults.url))
    assert (third.skipped, third.manifest_quarantined) == (N_IMAGES, 0)
