"""What a decoder replica does with one request, as plain functions over a predictor.

The Ray layer (serving.app) only finds features and batches requests; answering a
request — prompt conversion, decode, RLE, the response body — happens here and is
tested without Ray.
"""
from __future__ import annotations

import base64
import contextvars
import io
import math
import time
from typing import Any, Mapping

import numpy as np

from model import PromptError, SeemPredictor
from model.rle import encode_mask
from model.types import ImageFeatures, MaskResult

from .errors import ApiError
from .prompts import to_prompts
from .schemas import PanopticRequest, SegmentRequest

__all__ = ["warm_up", "segment", "panoptic", "mask_json", "FEATURE_LOADS"]

#: Set by a decoder around its feature lookup; the multiplexed loader appends where a load
#: came from ("store", "encoder"). The loader is awaited in the caller's task, so the caller
#: sees whether *its* lookup missed. (Here, not in serving.app: Serve pickles deployment
#: classes by value, and a ContextVar cannot be pickled.)
FEATURE_LOADS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("seem_feature_loads", default=None)


def warm_up(predictor: SeemPredictor, *, decode: bool = True) -> None:
    """One encode (and decodes) of a synthetic image, so the first client request of a new
    replica does not pay for lazy initialisation (~1 s on CPU)."""
    from model.types import Point, Prompts

    image = np.zeros((64, 96, 3), np.uint8)
    image[16:48, 24:72] = (200, 40, 40)
    features = predictor.encode([image])[0]
    if decode:
        predictor.decode(features, Prompts(spatial=(Point(40.0, 30.0),)))
        predictor.decode(features, Prompts(text="red"))
        predictor.panoptic(features)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/Infinity; a non-finite score (untrained weights) becomes 0."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else 0.0


def mask_json(result: MaskResult) -> dict[str, Any]:
    """One `MaskResult` as the API's mask object (COCO RLE, bbox, area, score, label)."""
    return {
        "rle": encode_mask(result.mask),
        "bbox": [int(v) for v in result.bbox],
        "area": int(result.area),
        "score": _finite(result.score),
        "label": result.label,
        "label_score": _finite(result.label_score),
    }


def segment(predictor: SeemPredictor, features: ImageFeatures, request: SegmentRequest,
            referring: Mapping[str, ImageFeatures]) -> dict[str, Any]:
    """Answer one /v1/segment request on cached features (a SegmentResponse body)."""
    started = time.perf_counter()
    prompts, previous = to_prompts(request, tuple(features.original_size), referring)
    try:
        result = predictor.decode(features, prompts, previous_mask=previous, vocabulary=request.vocabulary,
                                  max_masks=request.max_masks)
    except PromptError as e:  # what the rasteriser or the predictor found wrong with the prompts
        raise ApiError("invalid_prompt", str(e)) from None
    decoded = time.perf_counter()
    masks = [mask_json(m) for m in result.masks[:request.max_masks]]
    done = time.perf_counter()
    return {
        "masks": masks,
        "timings_ms": {
            "decode": (decoded - started) * 1000,
            "rle": (done - decoded) * 1000,
        },
    }


def _png_base64(segment_map: np.ndarray) -> str:
    """COCO panoptic PNG encoding of an id map: id = R + 256 G + 256^2 B."""
    from PIL import Image

    ids = segment_map.astype(np.uint32)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def panoptic(predictor: SeemPredictor, features: ImageFeatures, request: PanopticRequest) -> dict[str, Any]:
    """Answer one /v1/panoptic request (a PanopticResponse body)."""
    started = time.perf_counter()
    result = predictor.panoptic(features, request.vocabulary)
    decoded = time.perf_counter()
    segments = [{
        "id": seg.id,
        "label": seg.label,
        "category_id": seg.category_id,
        "isthing": seg.isthing,
        "score": _finite(seg.score),
        "area": seg.area,
        "bbox": list(seg.bbox),
        "rle": seg.rle(),
    } for seg in result.segments]
    body: dict[str, Any] = {"segments": segments, "png": None}
    if request.png:
        body["png"] = _png_base64(result.segment_map)
    body["timings_ms"] = {"decode": (decoded - started) * 1000, "rle": (time.perf_counter() - decoded) * 1000}
    return body
