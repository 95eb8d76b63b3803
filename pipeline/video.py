"""`seem video`: one video (file, folder of frames, s3:// object) -> masks.parquet + overlay.mp4.

Outputs (OUT a folder or s3://bucket/prefix, each file published atomically):
- masks.parquet: one row per frame and object from the object's prompted frame on:
  frame_index, object_id, rle {size [h, w], counts: COCO compressed RLE} (as the image
  pipeline stores masks), score, label, bbox [x, y, w, h], area. A frame where the object
  is gone has an empty mask, score 0 and area 0.
- overlay.mp4: H.264 yuv420p at the source's size and frame rate, masks drawn in.
- png/NNNNN.png with --png: DAVIS-style palette PNGs (pixel value = object id).

Objects come from prompts: `VideoObject(object_id, frame, prompts)` where `prompts` are the
shared JSON prompt models (model.prompt_schema, as the HTTP API takes them), or masks.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.prompt_json import to_prompts
from model.prompt_schema import MaskPromptModel, PromptSchemaError, parse_prompt_list
from model.types import MaskPrompt, Prompts
from model.video_io import FrameSource, OverlayWriter, VideoDecodeError, is_video_name, open_frames, write_palette_png

__all__ = ["VIDEO_MASKS_SCHEMA", "VideoObject", "VideoSummary", "parse_objects", "segment_video", "open_source",
           "VideoInputError"]

VIDEO_MASKS_SCHEMA = pa.schema([
    ("frame_index", pa.int32()),
    ("object_id", pa.int32()),
    ("rle", pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])),
    ("score", pa.float64()),
    ("label", pa.string()),
    ("bbox", pa.list_(pa.int32(), 4)),
    ("area", pa.int64()),
])


class VideoInputError(ValueError):
    """A prompts file or prompt flag that cannot describe objects (the message says why)."""


@dataclass
class VideoObject:
    """One object to follow: its id, the frame its prompts are on, and the prompts (schema
    models; `mask` is a boolean mask given directly, e.g. from --mask PNG)."""

    object_id: int
    frame: int
    prompts: list[Any] = field(default_factory=list)
    mask: np.ndarray | None = None

    def to_prompts(self, size: tuple[int, int]) -> Prompts:
        """The model's `Prompts`, checked against the frame size (h, w)."""
        prompts, _ = to_prompts(self.prompts, size, {}) if self.prompts else (Prompts(), None)
        if self.mask is not None:
            if self.mask.shape != tuple(size):
                raise VideoInputError(f"object {self.object_id}: the mask is {self.mask.shape[1]}x{self.mask.shape[0]}, "
                                      f"the video is {size[1]}x{size[0]}")
            if not self.mask.any():
                raise VideoInputError(f"object {self.object_id}: the mask is empty")
            prompts = Prompts(text=prompts.text, spatial=(*prompts.spatial, MaskPrompt(self.mask)))
        if prompts.is_empty:
            raise VideoInputError(f"object {self.object_id}: no prompt")
        return prompts


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VideoInputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_objects(data: Any, where: str = "prompts file") -> list[VideoObject]:
    """JSON objects -> `VideoObject`s. Accepted: a list of objects, or {"objects": [...]},
    each {"object_id": 1, "frame": 0, "prompts": [{"type": "box", "xyxy": [...]}, ...]}.
    Object ids must be unique."""
    if isinstance(data, dict) and "objects" in data:
        data = data["objects"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise VideoInputError(f"{where}: expected a non-empty list of objects")
    objects = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise VideoInputError(f"{where}: objects[{i}] is not an object")
        unknown = set(item) - {"object_id", "frame", "prompts", "video"}
        if unknown:
            raise VideoInputError(f"{where}: objects[{i}] has unknown keys {sorted(unknown)}")
        object_id = _int(item.get("object_id", i + 1), f"{where}: objects[{i}].object_id", 1)
        frame = _int(item.get("frame", 0), f"{where}: objects[{i}].frame", 0)
        try:
            prompts = parse_prompt_list(item.get("prompts"), f"objects[{i}].prompts")
        except PromptSchemaError as e:
            raise VideoInputError(f"{where}: {e}") from None
        objects.append(VideoObject(object_id, frame, prompts))
    ids = [o.object_id for o in objects]
    if len(set(ids)) != len(ids):
        raise VideoInputError(f"{where}: object ids must be unique, got {ids}")
    return objects


def mask_prompt_model(mask: np.ndarray) -> MaskPromptModel:
    from model.rle import encode_mask

    return MaskPromptModel(type="mask", rle=encode_mask(mask))


# --------------------------------------------------------------------------- sources
@contextmanager
def open_source(src: str, *, endpoint_url: str | None = None, fps: float | None = None) -> Iterator[FrameSource]:
    """Frames of a local video / folder of frames, of an s3:// folder of frames (read frame
    by frame), or of an s3:// video (spooled to a temporary file first: decoders seek, and
    the object need not fit in memory)."""
    if not src.startswith("s3://") or not is_video_name(src):
        yield open_frames(src, fps=fps, endpoint_url=endpoint_url)
        return
    import storage

    suffix = os.path.splitext(storage.split_s3_uri(src)[1])[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        storage.download(src, tmp, endpoint_url=endpoint_url)
        tmp.flush()
        yield open_frames(tmp.name, name=src, fps=fps)


# --------------------------------------------------------------------------- one video
@dataclass
class VideoSummary:
    source: str
    frames: int
    objects: int
    seconds: float
    files: dict[str, str]
    timings_ms: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # e.g. a phrase that named several instances

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        enc, dec = self.timings_ms.get("encode", 0.0), self.timings_ms.get("decode", 0.0)
        return [f"seem video: {self.frames} frames, {self.objects} objects in {self.seconds:.1f} s "
                f"({self.frames_per_s:.2f} frames/s; encode {enc:.0f} ms, decode {dec:.0f} ms per frame)",
                *(f"  {name}: {uri}" for name, uri in self.files.items())]


def _rows(frame: Any, rows: dict[str, list]) -> None:  # a model.video.VideoFrame
    from model.rle import encode_mask

    for obj in frame.objects:
        h, w = obj.mask.shape
        rows["frame_index"].append(frame.index)
        rows["object_id"].append(obj.object_id)
        rows["rle"].append({"size": [h, w], "counts": encode_mask(obj.mask)["counts"]})
        rows["score"].append(float(obj.score))
        rows["label"].append(obj.label)
        rows["bbox"].append(list(obj.bbox))
        rows["area"].append(int(obj.area))


def _overlay(frame: Any) -> np.ndarray:
    from pipeline.exports import palette

    image = frame.image.astype(np.float32)
    colors = palette(max([o.object_id for o in frame.objects], default=0) + 1)
    for obj in frame.objects:
        if obj.present:
            color = np.array(colors[obj.object_id], np.float32)
            image[obj.mask] = image[obj.mask] * 0.5 + color * 0.5
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _index_map(frame: Any) -> np.ndarray:
    out = np.zeros(frame.image.shape[:2], np.uint8)
    for obj in frame.objects:
        out[obj.mask] = obj.object_id
    return out


def segment_video(predictor: Any, source: FrameSource, objects: Sequence[VideoObject], out: Any, *,
                  png: bool = False, progress: bool | None = None, vocabulary: Sequence[str] | None = None,
                  tracker: Any = None) -> VideoSummary:
    """Follow `objects` through `source` and publish the outputs to `out` (an ObjectStore)."""
    from model.video import VideoPredictor

    from .progress import Progress

    started = time.perf_counter()
    session = VideoPredictor(predictor, tracker).init_session(source, vocabulary=vocabulary)
    for obj in objects:
        if source.num_frames is not None and obj.frame >= source.num_frames:
            raise VideoInputError(f"object {obj.object_id}: the video ended at frame {source.num_frames - 1}, "
                                  f"before the prompted frame {obj.frame}")
        if obj.object_id > 255 and png:
            raise VideoInputError(f"object id {obj.object_id}: palette PNGs hold ids 1..255")
        session.add_prompts(obj.frame, obj.object_id, obj.to_prompts(source.size))
    rows: dict[str, list] = {f.name: [] for f in VIDEO_MASKS_SCHEMA}
    totals = {"encode": 0.0, "decode": 0.0}
    warnings: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, Progress(source.num_frames or 0, "video", enabled=progress,
                                                         unit="frame") as bar:
        overlay_path = os.path.join(tmp, "overlay.mp4")
        with OverlayWriter(overlay_path, source.fps, source.size) as writer:
            for frame in session.propagate():
                warnings += frame.warnings
                _rows(frame, rows)
                writer.write(_overlay(frame))
                if png:
                    buf = io.BytesIO()
                    write_palette_png(buf, _index_map(frame))
                    out.put_atomic(f"png/{frame.index:05d}.png", buf.getvalue())
                for k in totals:
                    totals[k] += frame.timings_ms[k]
                bar.update(1, fps=f"{bar.count / max(time.perf_counter() - started, 1e-9):.2f}")
        frames = writer.frames
        table = pa.Table.from_pydict(rows, schema=VIDEO_MASKS_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        out.put_atomic("masks.parquet", sink.getvalue().to_pybytes())
        with open(overlay_path, "rb") as f:
            out.put_atomic("overlay.mp4", f.read())
    files = {"masks.parquet": out.uri("masks.parquet"), "overlay.mp4": out.uri("overlay.mp4")}
    if png:
        files["png"] = out.uri("png")
    per_frame = {k: v / max(frames, 1) for k, v in totals.items()}
    return VideoSummary(source.name, frames, len(objects), time.perf_counter() - started, files, per_frame, warnings)


def load_objects_file(path: str) -> list[VideoObject]:
    """A --prompts FILE.json: JSON (a list or {"objects": [...]}) or JSON lines, one object each."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise VideoInputError(f"cannot read prompts file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise VideoInputError(f"{path}: neither JSON nor JSON lines ({e})") from None
    return parse_objects(data, path)


__all__ += ["load_objects_file", "mask_prompt_model", "VideoDecodeError"]
