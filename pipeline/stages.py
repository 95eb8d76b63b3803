"""The work of the bulk jobs as plain functions and classes, testable without Ray.

`pipeline.jobs` is the thin Ray layer: it lists the source, builds Ray Data datasets and
calls what is here inside Ray tasks and actors. Nothing in this module imports Ray.

Stages (the bulk job in docs/architecture.md):

1. `decode_table` (CPU tasks): read the bytes of each listed item, hash them, and either
   note that the store already holds features for these bytes ("exists": no encoder work
   for the same image under another name), or decode it (EXIF orientation, mode -> RGB,
   pixel cap) and resize it to the model's input size right away, so neither the huge
   original nor its bytes travel further. A bad item becomes a row with an error.
2. `EncoderWorker` (actor pool): encodes the decoded images in batches, writes each
   image's features straight to the feature store, returns metadata rows only.
3. `SegmenterWorker` (actor pool): reads stored features, runs panoptic segmentation with
   a vocabulary and/or grounding with text prompts, returns masks as COCO RLE (and writes
   overlay PNGs on request).

Tables passed between stages are `pyarrow.Table`s with the explicit schemas below, so
null handling and binary columns never depend on pandas/numpy conversions.

Error messages are "<stage>: <reason>" with stage one of read / decode / encode / store /
segment; `pipeline.exports` splits them for errors.parquet.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from model.image_io import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, image_size
from model.loading import ModelSpec, prepare_for
from pipeline import defaults

log = logging.getLogger(__name__)

__all__ = [
    "ModelSpec",
    "FeatureFormat",
    "DEFAULT_FEATURE_FORMAT",
    "DecodeOptions",
    "ITEM_SCHEMA",
    "DECODED_SCHEMA",
    "ENCODED_SCHEMA",
    "SEGMENT_INPUT_SCHEMA",
    "SEGMENTED_SCHEMA",
    "MASK_STRUCT",
    "load_predictor",
    "decode_item",
    "decode_table",
    "EncoderWorker",
    "SegmentSpec",
    "segment_features",
    "SegmenterWorker",
    "error_text",
]

DEFAULT_MAX_BYTES = 512 << 20  # a larger object is refused before it is read


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class FeatureFormat:
    """What a store object holds (docs/architecture.md, "The feature store format"; chosen by
    measurement, docs/benchmarks.md).

    stage: "pixel_decoder" (what the decoder consumes) or "backbone" (smaller; the pixel
    decoder runs again on every read). dtype: float16 / bfloat16 / float32 / int8 (per-channel
    quantisation, store format version 2) / int10 (levels, version 3) / axes (mask features
    along the model's mask axes, version 4; pixel-decoder stage only). codec: a
    `store.feature_store.CODECS` name.
    """

    stage: str = "pixel_decoder"
    dtype: str = "float16"
    codec: str = "none"

    def __post_init__(self) -> None:
        from store.feature_store import CODECS, STORE_DTYPES

        if self.stage not in ("pixel_decoder", "backbone"):
            raise ValueError(f"feature stage must be 'pixel_decoder' or 'backbone', got {self.stage!r}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"feature dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        if self.dtype == "axes" and self.stage != "pixel_decoder":
            raise ValueError("feature dtype 'axes' stores mask features along the model's mask axes: "
                             "it needs --feature-stage pixel_decoder")
        if self.codec not in CODECS:
            raise ValueError(f"feature codec must be one of {CODECS}, got {self.codec!r}")
        if self.codec.endswith("zstd"):
            from store.feature_store import _zstd_available

            if not _zstd_available():  # fail at start-up, not as one store error per image
                raise ValueError(f"codec {self.codec!r} needs a pyarrow built with zstd; use 'shuffle+zlib'")


#: The default of `seem encode`: see "Feature store format" in docs/benchmarks.md.
DEFAULT_FEATURE_FORMAT = FeatureFormat(stage=defaults.FEATURE_STAGE, dtype=defaults.FEATURE_DTYPE,
                                       codec=defaults.FEATURE_CODEC)


@dataclass(frozen=True)
class DecodeOptions:
    """Limits and access for the decode stage.

    max_pixels: the decompression-bomb cap, checked on the header before any pixel is
    decoded. max_bytes: larger objects are refused before they are read.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    endpoint_url: str | None = None


# --------------------------------------------------------------------------- schemas
ITEM_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())])

# state: "decoded" (pixels hold the resized image), "exists" (features already stored),
# "error" (error says why).
DECODED_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("pixels", pa.large_binary()),
        ("pixels_h", pa.int32()),
        ("pixels_w", pa.int32()),
        ("feature_key", pa.string()),
        ("bytes", pa.int64()),
        ("storage_retries", pa.int64()),  # see _new_storage_retries
    ]
)

# One row per item after the encoder: what the manifest records, plus `encoded`
# (features computed by this run) for the summary.
ENCODED_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("feature_key", pa.string()),
        ("bytes", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("encoded", pa.bool_()),
        ("storage_retries", pa.int64()),  # see _new_storage_retries
    ]
)

SEGMENT_INPUT_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

MASK_STRUCT = pa.struct(
    [
        ("index", pa.int32()),
        ("source", pa.string()),  # "panoptic" | "text"
        ("prompt", pa.string()),  # the text prompt (null for panoptic)
        ("label", pa.string()),  # the category: vocabulary name, or the text prompt
        ("class_label", pa.string()),  # the best vocabulary class of the mask
        ("category_id", pa.int32()),
        ("score", pa.float64()),
        ("label_score", pa.float64()),
        ("bbox", pa.list_(pa.int32(), 4)),
        ("area", pa.int64()),
        ("rle_counts", pa.string()),
    ]
)

SEGMENTED_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("masks", pa.list_(MASK_STRUCT)),
        ("overlay", pa.string()),
        ("reencoded", pa.bool_()),
    ]
)


def error_text(stage: str, reason: object) -> str:
    """The error message format of the manifest and errors.parquet: "<stage>: <reason>"."""
    text = str(reason).strip() or type(reason).__name__
    return f"{stage}: {text}"


def _exception_reason(exc: BaseException) -> str:
    # ImageDecodeError / StorageError messages are written for humans; anything else
    # (a bug, an OOM) keeps its type so the errors table says what happened.
    from storage import StorageError

    if isinstance(exc, (ImageDecodeError, StorageError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- model
def load_predictor(spec: ModelSpec, *, encode_batch_size: int = 4, torch_threads: int | None = None) -> Any:
    """The process's `SeemPredictor` for `spec` (`model.loading.load_predictor`), with this
    worker's batch size and torch thread count."""
    from model.loading import load_predictor as load

    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    predictor = load(spec)
    predictor.encode_batch_size = max(1, int(encode_batch_size))
    return predictor


# --------------------------------------------------------------------------- decode stage
def _read_source(uri: str, size: int | None, options: DecodeOptions, reader: Callable[[str], bytes] | None,
                 row: dict[str, Any]) -> bytes | None:
    """The item's bytes, or None with the read error in `row` (over the size cap, unreadable)."""
    from pipeline.sources import read_bytes

    if size is not None and size > options.max_bytes:
        row["error"] = error_text("read", f"object too large: {size} bytes > cap {options.max_bytes}")
        return None
    try:
        return reader(uri) if reader else read_bytes(uri, endpoint_url=options.endpoint_url)
    except Exception as e:  # one unreadable object must not stop the job
        row["error"] = error_text("read", _exception_reason(e))
        return None


def decode_item(
    uri: str,
    size: int | None,
    etag: str | None,
    *,
    model_name: str,
    model_id: str,
    store: Any,
    options: DecodeOptions,
    reader: Callable[[str], bytes] | None = None,
) -> dict[str, Any]:
    """Read, hash and decode one source item; one `DECODED_SCHEMA` row (never raises)."""
    row: dict[str, Any] = {"uri": uri, "size": size, "etag": etag, "state": "error"}
    data = _read_source(uri, size, options, reader, row)
    if data is None:
        return row
    row["size"] = len(data)  # the bytes actually hashed (a listing can be stale)
    sha = hashlib.sha256(data).hexdigest()
    row["sha256"] = sha
    key = store.key(model_id, sha)
    try:
        info = store.backend.stat(key)
    except KeyError:  # ObjectNotFound: encode below
        info = None
    except Exception as e:
        row["error"] = error_text("store", _exception_reason(e))
        return row
    try:
        if info is not None:
            # Same bytes already encoded (under this or another name): header only.
            width, height = image_size(data)
            row.update(state="exists", width=width, height=height, feature_key=key, bytes=info.size)
            return row
        image = decode_image(data, max_pixels=options.max_pixels)
        del data  # the encoded bytes are no longer needed; free them before resizing
        height, width = image.shape[:2]
        pixels = prepare_for(model_name, image).pixels
        del image  # only the model-sized copy travels on
    except ImageDecodeError as e:
        row["error"] = error_text("decode", e)
        return row
    except Exception as e:
        row["error"] = error_text("decode", _exception_reason(e))
        return row
    row.update(state="decoded", width=width, height=height, pixels=pixels.tobytes(),
               pixels_h=pixels.shape[0], pixels_w=pixels.shape[1])
    return row


def decode_table(
    items: pa.Table,
    *,
    model_name: str,
    model_id: str,
    store_uri: str,
    store_endpoint_url: str | None,
    options: DecodeOptions,
) -> pa.Table:
    """`decode_item` over a table of `ITEM_SCHEMA` rows (a Ray Data batch)."""
    store = _feature_store(store_uri, store_endpoint_url)
    rows = [
        decode_item(r["uri"], r["size"], r["etag"], model_name=model_name, model_id=model_id, store=store, options=options)
        for r in items.select(["uri", "size", "etag"]).to_pylist()
    ]
    if rows:
        rows[0]["storage_retries"] = _new_storage_retries()
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


_retries_reported = 0
_retries_lock = threading.Lock()


def _new_storage_retries() -> int:
    """Storage retries this process made since the last call. Workers put the number on
    the first row of each table they return (a `storage_retries` column), so the driver
    can total the job's retries across every node."""
    global _retries_reported
    from storage import retry_counts

    with _retries_lock:
        now = retry_counts()["retries"]
        new, _retries_reported = now - _retries_reported, now
        return new


@functools.lru_cache(maxsize=8)
def _feature_store(root_uri: str, endpoint_url: str | None) -> Any:
    # One FeatureStore (and S3 client) per process and store, reused across batches.
    from store.feature_store import FeatureStore

    return FeatureStore(root_uri, endpoint_url)


# --------------------------------------------------------------------------- encoder stage
class EncoderWorker:
    """Encodes decoded images and writes their features to the store (one per actor).

    Loads the predictor once. Each call takes a `DECODED_SCHEMA` table (or, with
    `decode_options`, raw `ITEM_SCHEMA` rows it decodes itself) and returns
    `ENCODED_SCHEMA` rows: metadata only, never tensors.
    """

    def __init__(
        self,
        *,
        model: ModelSpec,
        model_id: str,
        store_uri: str,
        store_endpoint_url: str | None = None,
        feature_format: FeatureFormat = DEFAULT_FEATURE_FORMAT,
        batch_size: int = 8,
        torch_threads: int | None = None,
        decode_options: DecodeOptions | None = None,
    ) -> None:
        self.predictor = load_predictor(model, encode_batch_size=batch_size, torch_threads=torch_threads)
        if self.predictor.model_id != model_id:
            # The driver decided what to skip for `model_id`; features of another model
            # must never be filed under it (e.g. the weights file changed meanwhile).
            raise RuntimeError(f"worker built model {self.predictor.model_id}, the job is for {model_id}")
        self.model = model
        self.model_id = model_id
        self.store = _feature_store(store_uri, store_endpoint_url)
        self.store_uri, self.store_endpoint_url = store_uri, store_endpoint_url
        self.format = feature_format
        self.decode_options = decode_options

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.decode_options is not None:  # decoding inside the actor (see jobs.EncodeOptions)
            batch = decode_table(batch, model_name=self.model.name, model_id=self.model_id, store_uri=self.store_uri,
                                 store_endpoint_url=self.store_endpoint_url, options=self.decode_options)
        rows = batch.to_pylist()
        out: list[dict[str, Any]] = []
        # Identical bytes in one batch are encoded once (the later rows reuse the object).
        first: dict[str, dict[str, Any]] = {}
        for r in rows:
            if r["state"] == "decoded" and r["sha256"] in first:
                r["state"] = "same"
            elif r["state"] == "decoded":
                first[r["sha256"]] = r
        results = self._encode_and_store(list(first.values()))
        for r in rows:
            if r["state"] == "same":
                key, nbytes, _, error = results[id(first[r["sha256"]])]
                if error is None:
                    r.update(state="exists", feature_key=key, bytes=nbytes)
                else:
                    r.update(state="error", error=error)
            base = {k: r.get(k) for k in ("uri", "size", "etag", "sha256", "width", "height")}
            if r["state"] == "exists":
                out.append({**base, "feature_key": r["feature_key"], "bytes": r["bytes"], "status": "ok", "encoded": False})
            elif r["state"] == "error":
                out.append({**base, "status": "error", "error": r["error"], "encoded": False})
            else:
                key, nbytes, written, error = results[id(r)]
                if error is None:
                    out.append({**base, "feature_key": key, "bytes": nbytes, "status": "ok", "encoded": True})
                else:
                    out.append({**base, "status": "error", "error": error, "encoded": False})
        if out:
            out[0]["storage_retries"] = _new_storage_retries() + sum(r.get("storage_retries") or 0 for r in rows)
        return pa.Table.from_pylist(out, schema=ENCODED_SCHEMA)

    def _encode_and_store(self, rows: list[dict[str, Any]]) -> dict[int, tuple]:
        """id(row) -> (key, bytes, written, error) for every decoded row."""
        results: dict[int, tuple] = {}
        if not rows:
            return results
        from model.transforms import PreparedImage

        # Resized in the decode task (`prepare_for`); the geometry goes with the pixels.
        images = [PreparedImage(np.frombuffer(r["pixels"], np.uint8).reshape(r["pixels_h"], r["pixels_w"], 3),
                                (int(r["height"]), int(r["width"]))) for r in rows]
        try:
            features = self.predictor.encode(images, stage=self.format.stage)
        except Exception as e:
            if len(rows) == 1:
                results[id(rows[0])] = (None, None, False, error_text("encode", _exception_reason(e)))
                return results
            # One bad image must not fail its batch: retry one by one to find it.
            log.warning("batch encode failed (%s); encoding %d images one by one", e, len(rows))
            for r in rows:
                results.update(self._encode_and_store([r]))
            return results
        for r, f in zip(rows, features):
            try:
                put = self.store.put_info(f, r["sha256"], dtype=self.format.dtype, compress=self.format.codec,
                                          mask_axes=self.predictor.mask_axes)
                results[id(r)] = (put.key, put.size, put.written, None)
            except Exception as e:
                results[id(r)] = (None, None, False, error_text("store", _exception_reason(e)))
        return results


# --------------------------------------------------------------------------- segment stage
@dataclass(frozen=True)
class SegmentSpec:
    """What to segment each image into.

    vocabulary: names for panoptic segmentation (None: the model's default vocabulary),
    or `panoptic=False` for text prompts only. texts: grounding phrases, each giving its
    best mask per image. categories: COCO category id of every label (vocabulary names,
    then text prompts), decided once by the driver so all workers agree.
    """

    vocabulary: tuple[str, ...] | None = None
    stuff: tuple[str, ...] | None = None
    texts: tuple[str, ...] = ()
    panoptic: bool = True
    categories: dict[str, int] = field(default_factory=dict)
    overlays: bool = False
    out_uri: str | None = None
    out_endpoint_url: str | None = None
    score_digits: int = 6


def _vocabulary(predictor: Any, spec: SegmentSpec) -> Any:
    from model.types import Vocabulary

    return Vocabulary.resolve(spec.vocabulary, spec.stuff, predictor.default_vocabulary)


def segment_features(predictor: Any, features: Any, spec: SegmentSpec) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Masks of one image: (MASK_STRUCT row, H x W bool mask) pairs in a stable order
    (panoptic segments as the predictor orders them, then text prompts as given).
    Empty masks are dropped."""
    from model.rle import encode_mask
    from model.types import Prompts

    vocab = _vocabulary(predictor, spec)
    found: list[tuple[str, str | None, str, Any]] = []  # (source, prompt, label, MaskResult)
    if spec.panoptic:
        for m in predictor.panoptic(features, vocab).masks:
            found.append(("panoptic", None, m.label, m))
    if spec.texts:
        segs = predictor.decode_many(features, [Prompts(text=t) for t in spec.texts], vocabulary=vocab, max_masks=1)
        for text, seg in zip(spec.texts, segs):
            if seg.masks:
                found.append(("text", text, text, seg.masks[0]))
    out = []
    r = spec.score_digits
    for source, prompt, label, m in found:
        mask = np.asarray(m.mask, dtype=bool)
        area = int(mask.sum())
        if area == 0:
            continue
        row = {
            "index": len(out),
            "source": source,
            "prompt": prompt,
            "label": label,
            "class_label": m.label,
            "category_id": spec.categories.get(label),
            # Rounded so that tiny float differences between runs cannot change outputs.
            "score": round(float(m.score), r),
            "label_score": None if m.label_score is None else round(float(m.label_score), r),
            "bbox": list(m.bbox),
            "area": area,
            "rle_counts": encode_mask(mask)["counts"],
        }
        out.append((row, mask))
    return out


def overlay_name(uri: str, sha256: str) -> str:
    """File name of an image's overlay: its stem plus a content hash (unique, stable)."""
    stem = os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"
    return f"{safe}-{sha256[:10]}.png"


class SegmenterWorker:
    """Segments images from their stored features (one per actor).

    Each call takes `SEGMENT_INPUT_SCHEMA` rows and returns `SEGMENTED_SCHEMA` rows. When
    an image's features are missing or fail verification (deleted, damaged), the worker
    encodes the image again from its source and replaces the object, so a damaged store
    heals instead of failing the image.
    """

    def __init__(
        self,
        *,
        model: ModelSpec,
        model_id: str,
        store_uri: str,
        store_endpoint_url: str | None = None,
        feature_format: FeatureFormat = DEFAULT_FEATURE_FORMAT,
        segment: SegmentSpec = SegmentSpec(),
        decode_options: DecodeOptions = DecodeOptions(),
        torch_threads: int | None = None,
    ) -> None:
        self.predictor = load_predictor(model, torch_threads=torch_threads)
        if self.predictor.model_id != model_id:
            raise RuntimeError(f"worker built model {self.predictor.model_id}, the job is for {model_id}")
        self.model = model
        self.model_id = model_id
        self.store = _feature_store(store_uri, store_endpoint_url)
        self.format = feature_format
        self.spec = segment
        self.decode_options = decode_options
        self.out = None
        if segment.overlays:
            from storage import open_store

            if not segment.out_uri:
                raise ValueError("overlays need an output location")
            self.out = open_store(segment.out_uri, endpoint_url=segment.out_endpoint_url)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.segment_one(r) for r in batch.to_pylist()], schema=SEGMENTED_SCHEMA)

    def segment_one(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in ("image_id", "uri", "sha256", "width", "height")}
        out.update(status="ok", masks=[], reencoded=False)
        try:
            features, out["reencoded"] = self._features(row)
        except Exception as e:
            out.update(status="error", error=_stage_error(e, "store"))
            return out
        try:
            found = segment_features(self.predictor, features, self.spec)
        except Exception as e:
            out.update(status="error", error=error_text("segment", _exception_reason(e)))
            return out
        out["masks"] = [m for m, _ in found]
        if self.out is not None:
            try:
                out["overlay"] = self._write_overlay(row, found)
            except Exception as e:
                out.update(status="error", error=_stage_error(e, "overlay"))
        return out

    def _features(self, row: dict[str, Any]) -> tuple[Any, bool]:
        from storage import CorruptObject
        from storage import NotFound as ObjectNotFound

        try:
            return self.store.get(self.model_id, row["sha256"]), False
        except (ObjectNotFound, CorruptObject) as e:
            log.warning("features of %s unusable (%s); encoding it again", row["uri"], e)
        image = self._source_image(row)
        features = self.predictor.encode([image], stage=self.format.stage)[0]
        self.store.delete(self.model_id, row["sha256"])
        self.store.put(features, row["sha256"], dtype=self.format.dtype, compress=self.format.codec,
                       mask_axes=self.predictor.mask_axes)
        # Segment from what a later reader will get (the stored dtype), not the fp32 copy.
        return self.store.get(self.model_id, row["sha256"]), True

    def _source_image(self, row: dict[str, Any]) -> np.ndarray:
        from pipeline.sources import read_bytes

        try:
            data = read_bytes(row["uri"], endpoint_url=self.decode_options.endpoint_url)
        except Exception as e:
            raise _StageError("read", _exception_reason(e)) from e
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise _StageError("read", "the source object changed during the job (its sha256 differs); run again")
        try:
            return decode_image(data, max_pixels=self.decode_options.max_pixels)
        except ImageDecodeError as e:
            raise _StageError("decode", str(e)) from e

    def _write_overlay(self, row: dict[str, Any], found: list[tuple[dict[str, Any], np.ndarray]]) -> str:
        from pipeline.exports import render_overlay

        image = self._source_image(row)
        png = render_overlay(image, [m for _, m in found], [r["label"] for r, _ in found])
        name = f"overlays/{overlay_name(row['uri'], row['sha256'])}"
        self.out.put_atomic(name, png)
        return name


class _StageError(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage


def _stage_error(exc: BaseException, default_stage: str) -> str:
    if isinstance(exc, _StageError):
        return error_text(exc.stage, exc)
    return error_text(default_stage, _exception_reason(exc))

