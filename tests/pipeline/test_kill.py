"""Jobs killed mid-way, then re-run: every image exactly once, no partial object readable.

Two kinds of death: an encoder actor process SIGKILLed while the job runs (Ray restarts
it and retries its batch), and the driver process SIGKILLed (the job dies with it; its
actors are reaped by Ray). Each run records finished images in the manifest after every
image here (`manifest_flush_rows=1`) so the kill lands between recorded images.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from pipeline.jobs import EncodeOptions, SegmentOptions, encode_job, segment_job
from store import FeatureStore
from store.backends import TEMP_PREFIX

from tests.support import descendants

from .conftest import write_png

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 16  # in two folders; the kill lands after the first recorded image either way


def _source(root: Path) -> Path:
    for i in range(N_IMAGES):
        write_png(root / f"{i // 10}" / f"img{i:03d}.png", seed=1000 + i, size=(200, 260))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _wait_for_parts(manifest_dir: Path, proc_alive, timeout: float = 120.0) -> bool:
    """Until the first manifest part lands while the job still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive():
            return False
        if manifest_dir.is_dir() and any(p.name.startswith("part-") for p in manifest_dir.iterdir()):
            return True
        time.sleep(0.02)
    return False


def _check_exactly_once(store: Path, src: Path, model_id: str) -> None:
    fstore = FeatureStore(str(store))
    manifest = fstore.manifest(model_id)
    table = manifest.read()
    uris = table["uri"].to_pylist()
    expected = sorted(str(p) for p in src.rglob("*") if p.is_file())
    assert sorted(uris) == expected and len(set(uris)) == len(uris)  # every item exactly once
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert rows[str(src / "broken.jpg")]["status"] == "error"
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == N_IMAGES
    for r in ok:  # every recorded object verifies (checksum, framing, image hash, model id)
        f = fstore.get(model_id, r["sha256"])
        assert f.original_size == (r["height"], r["width"])
    # Every published object verifies, also ones whose rows were lost with the kill, and
    # nothing but whole objects is visible (temporary files are never listed).
    objects = [k for k, _ in fstore.backend.list(f"{model_id}/features/")]
    assert sorted(k.rsplit("/", 1)[1].split(".")[0] for k in objects) == sorted(r["sha256"] for r in ok)
    assert not any(TEMP_PREFIX in k for k in objects)


def _encoder_processes() -> list[int]:
    """This test session's encoder actor processes (Ray titles them after the UDF)."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"EncoderWorker" in cmdline:
            found.append(pid)
    return found


def test_encoder_actor_killed_then_rerun(ray_address, tmp_path):
    src, store = _source(tmp_path / "src"), tmp_path / "store"
    opts = EncodeOptions(progress=False, batch_size=1, manifest_flush_rows=1, decode_in="actor")
    from pipeline.stages import ModelSpec, load_predictor

    model_id = load_predictor(ModelSpec()).model_id
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = encode_job(str(src), str(store), opts)
        except Exception as e:  # the job may fail or survive the kill: both are fine
            outcome["error"] = e

    job = threading.Thread(target=run, daemon=True)
    job.start()
    assert _wait_for_parts(store / model_id / "manifest", job.is_alive), "job ended before the kill could land"
    victims = _encoder_processes()
    assert victims, "no encoder actor process found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    job.join(timeout=240)
    assert not job.is_alive()
    first = outcome.get("summary")
    if first is not None:  # Ray restarted the actor and retried its batch
        assert first.encoded + first.reused == N_IMAGES and first.failed == 1
    assert time.monotonic() > killed_at

    again = encode_job(str(src), str(store), opts)
    # Recorded images are skipped; ones encoded but not recorded are reused, not recomputed
    # twice, except the batch the kill interrupted.
    assert again.skipped + again.encoded + again.reused + again.failed == N_IMAGES + 1
    _check_exactly_once(store, src, model_id)
    third = encode_job(str(src), str(store), opts)
    assert third.encoded == 0 and third.skipped == N_IMAGES + 1


def test_driver_killed_then_rerun(ray_address, tmp_path):
    src, store, out = _source(tmp_path / "src"), tmp_path / "store", tmp_path / "out"
    from pipeline.stages import ModelSpec, load_predictor

    model_id = load_predictor(ModelSpec()).model_id
    cmd = [sys.executable, "-c", "import sys, seem_cli; sys.exit(seem_cli.main())", "encode", str(src),
           "--store", str(store), "--address", ray_address, "--batch-size", "1", "--manifest-flush-rows", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        landed = _wait_for_parts(store / model_id / "manifest", lambda: proc.poll() is None)
        assert landed, f"driver exited ({proc.poll()}) before the kill could land"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    recorded = FeatureStore(str(store)).manifest(model_id).read().num_rows
    assert 0 < recorded < N_IMAGES + 1  # killed part-way

    summary = segment_job(str(src), str(out), str(store), SegmentOptions(texts=("circle",)),
                          EncodeOptions(progress=False, batch_size=4))
    assert summary.encode.skipped == recorded
    _check_exactly_once(store, src, model_id)
    coco = COCO(str(out / "annotations.json"))
    names = [i["file_name"] for i in coco.loadImgs(coco.getImgIds())]
    assert sorted(names) == sorted(str(p) for p in src.rglob("*.png")) and len(set(names)) == len(names)
