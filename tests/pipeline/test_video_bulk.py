"""Bulk video on Ray Data from a moto S3 bucket: a killed run, re-run, gives every frame of
every video exactly once; broken and missing videos are recorded and nothing else is lost."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

from model.video_io import OverlayWriter
from pipeline.video_jobs import VideoJobOptions, video_job, video_key
from training.moving_shapes import generate_sequence, video_seeds

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
FRAMES = 5


def _mp4_bytes(frames) -> bytes:
    buf = io.BytesIO()
    with OverlayWriter(buf, 10.0, frames.shape[1:3]) as w:
        for f in frames:
            w.write(f)
    return buf.getvalue()


def _setup(bucket, tmp_path: Path) -> tuple[list[str], Path]:
    client = bucket.client()
    names, lines = [], []
    for i, seed in enumerate(video_seeds("test", 3, start=950)):
        seq = generate_sequence(seed, "motion", frames=FRAMES, size=(96, 128))
        client.put_object(Bucket=bucket.name, Key=f"videos/v{i}.mp4", Body=_mp4_bytes(seq.frames))
        box = seq.box(0)
        names.append(f"v{i}.mp4")
        lines.append({"video": f"v{i}.mp4", "frame": 0, "object_id": 1,
                      "prompts": [{"type": "box", "xyxy": [box.x0, box.y0, box.x1, box.y1]}]})
    client.put_object(Bucket=bucket.name, Key="videos/broken.mp4", Body=b"\x00\x00\x00\x18ftypmp42" + b"junk" * 200)
    lines += [{"video": "broken.mp4", "prompts": [{"type": "point", "xy": [5, 5]}]},
              {"video": "missing.mp4", "prompts": [{"type": "point", "xy": [5, 5]}]}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return names, prompts


def _done_keys(bucket) -> list[str]:
    listed = bucket.client().list_objects_v2(Bucket=bucket.name, Prefix="out/videos/")
    return [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith("/done.json")]


def _kill_after_first_video(cmd: list[str], bucket) -> int:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not _done_keys(bucket):
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended ({proc.returncode}) before the kill could land"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return len(_done_keys(bucket))


def test_bulk_videos_killed_then_rerun_every_frame_once(ray_address, s3_bucket, tmp_path: Path) -> None:
    names, prompts = _setup(s3_bucket, tmp_path)
    src, out = s3_bucket.uri("videos/"), s3_bucket.uri("out")
    cmd = [sys.executable, "-c", "import sys, seem_cli; sys.exit(seem_cli.main())", "video", src, "--out", out,
           "--prompts", str(prompts), "--address", ray_address, "--endpoint-url", s3_bucket.endpoint_url,
           "--no-progress"]
    finished_before = _kill_after_first_video(cmd, s3_bucket)
    assert 1 <= finished_before < 3  # killed part-way

    options = VideoJobOptions(endpoint_url=s3_bucket.endpoint_url, progress=False)
    again = video_job(src, str(prompts), out, options)
    assert (again.skipped, again.done, again.failed) == (finished_before, 3 - finished_before, 2)
    client = s3_bucket.client()
    for name in names:
        prefix = f"out/videos/{video_key(src + name)}"
        body = client.get_object(Bucket=s3_bucket.name, Key=f"{prefix}/masks.parquet")["Body"].read()
        rows = pq.read_table(io.BytesIO(body)).to_pylist()
        assert sorted((r["frame_index"], r["object_id"]) for r in rows) == [(t, 1) for t in range(FRAMES)]
        overlay = client.get_object(Bucket=s3_bucket.name, Key=f"{prefix}/overlay.mp4")["Body"].read()
        with av.open(io.BytesIO(overlay)) as c:
            assert sum(1 for _ in c.decode(video=0)) == FRAMES
    errors = pq.read_table(io.BytesIO(client.get_object(Bucket=s3_bucket.name, Key="out/errors.parquet")["Body"].read()))
    reasons = dict(zip(errors["uri"].to_pylist(), errors["stage"].to_pylist()))
    assert reasons == {src + "broken.mp4": "decode", src + "missing.mp4": "read"}
    videos = pq.read_table(io.BytesIO(client.get_object(Bucket=s3_bucket.name, Key="out/videos.parquet")["Body"].read()))
    assert sorted(videos["uri"].to_pylist()) == [src + n for n in names] and set(videos["frames"].to_pylist()) == {FRAMES}

    third = video_job(src, str(prompts), out, options)
    assert (third.done, third.skipped) == (0, 3)  # a re-run redoes nothing
