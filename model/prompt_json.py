"""JSON prompts (`model.prompt_schema`) -> the predictor's types (`model.types`), with the
checks that need the image: coordinates inside it, mask sizes equal to it, RLE well-formed.

Pure functions shared by the HTTP API (serving) and bulk prompt files (pipeline). Every
problem is a `PromptJsonError` whose message names the prompt (`prompts[2]`) and says what
is wrong; serving turns it into a 422 `invalid_prompt`, the pipeline into an errors.parquet row.
"""
from __future__ import annotations

import base64
import binascii
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from .prompt_schema import (RLE, AudioPrompt, BoxPrompt, MaskPromptModel, PointPrompt, PolygonPrompt, ReferringPrompt,
                            ScribblePrompt, TextPrompt)
from .rle import decode_mask
from .transforms import PromptError
from .types import (Box, ImageFeatures, MaskPrompt, Point, Polygon, Prompts, ReferringRegion, Scribble,
                    SpatialPrompt)

__all__ = ["PromptJsonError", "audio_bytes", "to_prompts", "to_spatial", "decode_rle"]


class PromptJsonError(PromptError):
    """A prompt that does not fit its image (coordinates, RLE, mask size, blank text)."""


def decode_rle(rle: RLE, size: tuple[int, int], what: str) -> np.ndarray:
    """RLE -> H x W bool mask of exactly `size` (height, width)."""
    try:  # the size is compared before decoding: a small RLE may claim billions of pixels
        return decode_mask(rle.model_dump(), expected_size=size)
    except ValueError as e:
        raise PromptJsonError(f"{what}: {e}") from None


def _check_xy(x: float, y: float, size: tuple[int, int], what: str) -> None:
    h, w = size
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PromptJsonError(f"{what}: coordinates must be finite numbers")
    if not (0 <= x < w and 0 <= y < h):
        raise PromptJsonError(f"{what}: ({x:g}, {y:g}) is outside the image (x in [0, {w}), y in [0, {h}))")


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
            raise PromptJsonError(f"{what}: x1 must be >= x0 and y1 >= y0")
        return Box(float(x0), float(y0), float(x1), float(y1), positive=prompt.positive)
    if isinstance(prompt, ScribblePrompt):
        return Scribble(_check_path(prompt.path, size, what), positive=prompt.positive, width=prompt.width)
    if isinstance(prompt, PolygonPrompt):
        return Polygon(_check_path(prompt.points, size, what), positive=prompt.positive)
    if isinstance(prompt, MaskPromptModel):
        mask = decode_rle(prompt.rle, size, what)
        if not mask.any():
            raise PromptJsonError(f"{what}: the mask is empty")
        return MaskPrompt(mask, positive=prompt.positive)
    raise PromptJsonError(f"{what}: not a spatial prompt")


def to_prompts(prompts: Sequence[object], size: tuple[int, int], referring: Mapping[str, ImageFeatures],
               previous_mask: RLE | None = None) -> tuple[Prompts, np.ndarray | None]:
    """Validated prompt models that together describe one object -> one `Prompts` target,
    plus the previous mask (or None).

    `size` is the target image's (height, width); `referring` maps each referring image id
    (as written) to that image's features, whose own size bounds its region.
    """
    text: str | None = None
    audio: AudioPrompt | None = None
    spatial: list[SpatialPrompt] = []
    regions: list[ReferringRegion] = []
    for i, prompt in enumerate(prompts):
        what = f"prompts[{i}] ({prompt.type})"
        if isinstance(prompt, (TextPrompt, AudioPrompt)) and (text is not None or audio is not None):
            raise PromptJsonError(f"{what}: at most one text or audio prompt per request")
        if isinstance(prompt, AudioPrompt):
            audio = prompt
        elif isinstance(prompt, TextPrompt):
            if not prompt.text.strip():
                raise PromptJsonError(f"{what}: the text is blank")
            text = prompt.text
        elif isinstance(prompt, ReferringPrompt):
            features = referring[prompt.image_id]
            region = to_spatial(prompt.region, tuple(features.original_size), f"{what} region")
            if not region.positive:
                raise PromptJsonError(f"{what}: the region must be positive")
            regions.append(ReferringRegion(features, (region,)))
        else:
            spatial.append(to_spatial(prompt, size, what))
    if (spatial and not any(p.positive for p in spatial) and text is None and audio is None and not regions
            and previous_mask is None):
        # Nothing says what the object is: a first round needs something positive.
        raise PromptJsonError("only negative prompts and no previous_mask: add a positive click, box, "
                              "scribble, text or region")
    previous = None if previous_mask is None else decode_rle(previous_mask, size, "previous_mask")
    heard = {} if audio is None else {"audio": audio_bytes(audio.data), "language": audio.language}
    return Prompts(text=text, spatial=tuple(spatial), referring=tuple(regions), **heard), previous


def audio_bytes(data: str) -> bytes:
    """An audio prompt's base64 `data` -> bytes (PromptJsonError for bad base64)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PromptJsonError("audio prompt: data is not valid base64") from None
