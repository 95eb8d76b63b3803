"""Bulk video on Ray Data: many videos, each followed from its prompts, resumable.

    seem video s3://bucket/videos/ --out s3://bucket/out --prompts prompts.jsonl

The prompts file has one JSON object per line: {"video": URI (or a path relative to SRC),
"frame": N, "object_id": K, "prompts": [...]}; several lines for one video are several
objects. Videos are the unit of work: Ray Data shards them over `VideoWorker` actors, each
streams its video's frames through the encoder (the GPU when the actor has one) and the
video session, and publishes the video's outputs under OUT/videos/<key>/ (masks.parquet,
overlay.mp4, png/ with --png), then `done.json` last. A re-run skips every video whose
done.json names the same object version (size + ETag/mtime) and the same prompts, so it
redoes nothing; a killed run loses only the videos in flight. Videos that cannot be read
or prompted are recorded in OUT/errors.parquet (uri, stage, reason) and the job goes on;
OUT/videos.parquet lists every finished video (uri, key, frames, objects, warnings: e.g. a
phrase that named several instances on its prompted frame).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from .exports import ERRORS_SCHEMA, _parquet_bytes, errors_table
from .video import VideoInputError, parse_objects

__all__ = ["VideoJobOptions", "VideoJobSummary", "video_job", "read_prompt_lines"]

log = logging.getLogger(__name__)
VIDEOS_SCHEMA = pa.schema([("uri", pa.string()), ("key", pa.string()), ("frames", pa.int64()),
                           ("objects", pa.int64()), ("warnings", pa.list_(pa.string()))])


@dataclass(frozen=True)
class VideoJobOptions:
    model: str = "seem-tiny"
    weights: str | None = "default"
    endpoint_url: str | None = None
    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 0.5
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs
    torch_threads: int | None = None
    png: bool = False
    progress: bool | None = None


@dataclass
class VideoJobSummary:
    videos: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (uri, what the session warned of)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        rate = f"{self.done / self.seconds:.2f} videos/s, {self.frames / self.seconds:.1f} frames/s" \
            if self.seconds > 0 and self.done else "nothing to do"
        lines = [f"seem video (bulk): {self.videos} videos: {self.done} done, {self.skipped} already done, "
                 f"{self.failed} failed ({rate})"]
        lines += [f"  error {uri}: {reason}" for uri, reason in self.errors[:10]]
        lines += [f"  warning {uri}: {text}" for uri, text in self.warnings[:10]]
        return lines


def video_key(uri: str) -> str:
    """A readable, unique folder name for a video URI: its file name plus a short hash."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:80] or "video"
    return f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"


def _resolve(src: str, video: str) -> str:
    if "://" in video or video.startswith("/"):
        return video
    return src.rstrip("/") + "/" + video


def read_prompt_lines(text: str, src: str, where: str) -> tuple[dict[str, list[dict]], list[tuple[str, str]]]:
    """JSON lines -> {video uri: [object dicts]} and (line, reason) errors for bad lines."""
    videos: dict[str, list[dict]] = {}
    errors = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("video"), str) or not item["video"]:
                raise VideoInputError("each line needs a \"video\" URI")
            parse_objects([item], f"{where} line {n}")  # checked here, converted in the actor
        except (json.JSONDecodeError, VideoInputError) as e:
            errors.append((f"{where}:{n}", f"prompts: {e}"))
            continue
        item.setdefault("object_id", len(videos.get(_resolve(src, item["video"]), [])) + 1)
        videos.setdefault(_resolve(src, item["video"]), []).append(item)
    return videos, errors


def _fingerprint(version: str, objects: list[dict]) -> str:
    return hashlib.sha256(json.dumps([version, objects], sort_keys=True).encode()).hexdigest()


class VideoWorker:
    """A Ray Data actor: one predictor, whole videos in, one result row per video out."""

    def __init__(self, out_uri: str, options: VideoJobOptions) -> None:
        from pipeline.stages import ModelSpec, load_predictor

        self.options = options
        self.out_uri = out_uri
        threads = options.torch_threads or max(1, int(options.cpus_per_actor))
        self.predictor = load_predictor(ModelSpec(name=options.model, weights=options.weights), torch_threads=threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [self._one(dict(zip(batch, values))) for values in zip(*batch.values())]
        return {k: [r[k] for r in rows] for k in ("uri", "key", "frames", "objects", "error", "warnings")}

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        from model.transforms import PromptError
        from model.video_io import VideoDecodeError
        from pipeline.video import open_source, segment_video
        from store.backends import StoreError, open_store

        objects_json = json.loads(row["objects"])
        result = {"uri": row["uri"], "key": row["key"], "frames": 0, "objects": len(objects_json), "error": None,
                  "warnings": "[]"}  # JSON: ragged lists do not travel well in numpy batches
        out = open_store(f"{self.out_uri.rstrip('/')}/videos/{row['key']}", endpoint_url=self.options.endpoint_url)
        try:
            objects = parse_objects(objects_json, row["uri"])
            with open_source(row["uri"], endpoint_url=self.options.endpoint_url) as source:
                summary = segment_video(self.predictor, source, objects, out, png=self.options.png, progress=False)
        except (VideoDecodeError, FileNotFoundError) as e:
            result["error"] = f"decode: {e}"
        except (VideoInputError, PromptError) as e:
            result["error"] = f"prompts: {e}"
        except (StoreError, OSError) as e:
            result["error"] = f"read: {e}"
        else:
            result["frames"] = summary.frames
            result["warnings"] = json.dumps(summary.warnings)
            done = {"uri": row["uri"], "fingerprint": row["fingerprint"], "frames": summary.frames,
                    "objects": len(objects), "warnings": summary.warnings}
            out.put_atomic("done.json", json.dumps(done).encode())  # last: the video counts as done
        return result


def _pending(videos: dict[str, list[dict]], out: Any, endpoint_url: str | None,
             summary: VideoJobSummary) -> list[dict[str, Any]]:
    """The videos still to do (version or prompts changed, or never finished)."""
    from pipeline.sources import SourceError, stat_uri
    from store.backends import ObjectNotFound

    todo = []
    for uri, objects in sorted(videos.items()):
        try:
            item = stat_uri(uri, endpoint_url=endpoint_url)
        except SourceError as e:
            summary.failed += 1
            summary.errors.append((uri, f"read: {e}"))
            continue
        key = video_key(uri)
        fingerprint = _fingerprint(f"{item.size}:{item.etag_or_mtime}", objects)
        try:
            done = json.loads(out.get(f"videos/{key}/done.json"))
        except ObjectNotFound:
            done = {}
        if done.get("fingerprint") == fingerprint:
            summary.skipped += 1
            continue
        todo.append({"uri": uri, "key": key, "objects": json.dumps(objects), "fingerprint": fingerprint})
    return todo


def _run(todo: list[dict[str, Any]], out_uri: str, options: VideoJobOptions) -> Iterator[dict[str, Any]]:
    import ray
    import ray.data

    from .jobs import _configure_ray_data

    _configure_ray_data()
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    results = ds.map_batches(VideoWorker, fn_constructor_args=(out_uri, options), batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=max(1, options.actors)),
                             num_cpus=options.cpus_per_actor, num_gpus=gpus, batch_format="numpy")
    yield from results.iter_rows()


def video_job(src: str, prompts_file: str, out_uri: str, options: VideoJobOptions | None = None) -> VideoJobSummary:
    """Follow every prompted video of `prompts_file` (paths relative to `src`); see the module doc."""
    from pipeline.sources import read_bytes
    from store.backends import open_store

    from .jobs import init_ray
    from .progress import Progress

    options = options or VideoJobOptions()
    started = time.perf_counter()
    summary = VideoJobSummary()
    text = read_bytes(prompts_file, endpoint_url=options.endpoint_url).decode("utf-8")
    videos, bad_lines = read_prompt_lines(text, src, prompts_file)
    summary.errors += bad_lines
    summary.videos = len(videos)
    out = open_store(out_uri, endpoint_url=options.endpoint_url)
    todo = _pending(videos, out, options.endpoint_url, summary)
    if todo:
        started_ray = init_ray(options.address)
        try:
            with Progress(len(todo), "videos", enabled=options.progress, unit="video") as bar:
                for row in _run(todo, out_uri, options):
                    if row["error"]:
                        summary.failed += 1
                        summary.errors.append((row["uri"], row["error"]))
                    else:
                        summary.done += 1
                        summary.frames += int(row["frames"])
                        summary.warnings += [(row["uri"], w) for w in json.loads(str(row["warnings"]))]
                    bar.update(1, frames=summary.frames)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    _write_tables(out, videos, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _write_tables(out: Any, videos: dict[str, list[dict]], summary: VideoJobSummary) -> None:
    """errors.parquet of this run; videos.parquet of every video finished by any run."""
    from store.backends import ObjectNotFound

    finished: dict[str, list] = {"uri": [], "key": [], "frames": [], "objects": [], "warnings": []}
    for uri in sorted(videos):
        try:
            done = json.loads(out.get(f"videos/{video_key(uri)}/done.json"))
        except ObjectNotFound:
            continue
        for k, v in (("uri", uri), ("key", video_key(uri)), ("frames", done["frames"]), ("objects", done["objects"]),
                     ("warnings", done.get("warnings", []))):  # done.json of before warnings: none
            finished[k].append(v)
    out.put_atomic("videos.parquet", _parquet_bytes(pa.Table.from_pydict(finished, schema=VIDEOS_SCHEMA)))
    table = errors_table(summary.errors) if summary.errors else ERRORS_SCHEMA.empty_table()
    out.put_atomic("errors.parquet", _parquet_bytes(table))
