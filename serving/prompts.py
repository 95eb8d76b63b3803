"""JSON prompts (serving.schemas) -> the predictor's types (model.types), with the checks
that need the image: coordinates inside it, mask sizes equal to it, RLE well-formed.

Pure functions, no Ray: the decoder replicas call them, and tests call them directly.
Every problem a client can cause becomes an `ApiError` (422) whose message names the
prompt (`prompts[2]`) and says what is wrong.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from model.rle import decode_mask
from model.types import (Box, ImageFeatures, MaskPrompt, Point, Polygon, Prompts, ReferringRegion, Scribble,
                         SpatialPrompt)

from .errors import ApiError
from .schemas import (RLE, BoxPrompt, MaskPromptModel, PointPrompt, PolygonPrompt, ReferringPrompt, ScribblePrompt,
                      SegmentRequest, TextPrompt)

__all__ = ["to_prompts", "to_spatial", "decode_rle"]


# --------------------------------------------------------------------------- conversion
def decode_rle(rle: RLE, size: tuple[int, int], what: str) -> np.ndarray:
    """RLE -> H x W bool mask of exactly `size` (height, width)."""
    try:
        mask = decode_mask(rle.model_dump())
    except ValueError as e:
        raise ApiError("invalid_prompt", f"{what}: {e}") from None
    if mask.shape != tuple(size):
        raise ApiError("invalid_prompt", f"{what}: mask size {list(mask.shape)} differs from the image's "
                                         f"[height, width] = {list(size)}")
    return mask


def _check_xy(x: float, y: float, size: tuple[int, int], what: str) -> None:
    h, w = size
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ApiError("invalid_prompt", f"{what}: coordinates must be finite numbers")
    if not (0 <= x < w and 0 <= y < h):
        raise ApiError("invalid_prompt",
                       f"{what}: ({x:g}, {y:g}) is outside the image (x in [0, {w}), y in [0, {h}))")


def _check_path(points: Iterable[Sequence[float]], size: tuple[int, int], what: str) -> tuple[tuple[float, float], ...]:
    out = []
    for j, (x, y) in enumerate(points):
        _check_xy(x, y, size, f"{what} point {j}")
        out.append((float(x), float(y)))
    return tuple(out)


def to_spatial(prompt: object, size: tuple[int, int], what: str) -> SpatialPrompt:
    """One spatial prompt of the schema -> model type, checked against `size` (h, w)."""
    if isinstance(prompt, PointPrompt):
        x, y = prompt.xy
        _check_xy(x, y, size, what)
        return Point(float(x), float(y), positive=prompt.positive)
    if isinstance(prompt, BoxPrompt):
        x0, y0, x1, y1 = prompt.xyxy
        _check_xy(x0, y0, size, f"{what} corner (x0, y0)")
        _check_xy(x1, y1, size, f"{what} corner (x1, y1)")
        if x1 < x0 or y1 < y0:
            raise ApiError("invalid_prompt", f"{what}: x1 must be >= x0 and y1 >= y0")
        return Box(float(x0), float(y0), float(x1), float(y1), positive=prompt.positive)
    if isinstance(prompt, ScribblePrompt):
        return Scribble(_check_path(prompt.path, size, what), positive=prompt.positive, width=prompt.width)
    if isinstance(prompt, PolygonPrompt):
        return Polygon(_check_path(prompt.points, size, what), positive=prompt.positive)
    if isinstance(prompt, MaskPromptModel):
        mask = decode_rle(prompt.rle, size, what)
        if not mask.any():
            raise ApiError("invalid_prompt", f"{what}: the mask is empty")
        return MaskPrompt(mask, positive=prompt.positive)
    raise ApiError("invalid_prompt", f"{what}: not a spatial prompt")


def to_prompts(request: SegmentRequest, size: tuple[int, int],
               referring: Mapping[str, ImageFeatures]) -> tuple[Prompts, np.ndarray | None]:
    """The request's prompts as one `Prompts` target, plus the previous mask (or None).

    `size` is the target image's (height, width); `referring` maps each referring image id
    (as sent) to that image's features, whose own size bounds its region.
    """
    text: str | None = None
    spatial: list[SpatialPrompt] = []
    regions: list[ReferringRegion] = []
    for i, prompt in enumerate(request.prompts):
        what = f"prompts[{i}] ({prompt.type})"
        if isinstance(prompt, TextPrompt):
            if text is not None:
                raise ApiError("invalid_prompt", f"{what}: at most one text prompt per request")
            if not prompt.text.strip():
                raise ApiError("invalid_prompt", f"{what}: the text is blank")
            text = prompt.text
        elif isinstance(prompt, ReferringPrompt):
            features = referring[prompt.image_id]
            region = to_spatial(prompt.region, tuple(features.original_size), f"{what} region")
            if not region.positive:
                raise ApiError("invalid_prompt", f"{what}: the region must be positive")
            regions.append(ReferringRegion(features, (region,)))
        else:
            spatial.append(to_spatial(prompt, size, what))
    if (spatial and not any(p.positive for p in spatial) and text is None and not regions
            and request.previous_mask is None):
        # Nothing says what the object is: a first round needs something positive.
        raise ApiError("invalid_prompt", "only negative prompts and no previous_mask: add a positive click, box, "
                                         "scribble, text or region")
    previous = None
    if request.previous_mask is not None:
        previous = decode_rle(request.previous_mask, size, "previous_mask")
    return Prompts(text=text, spatial=tuple(spatial), referring=tuple(regions)), previous
