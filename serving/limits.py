"""Request checks that need neither the image nor the model: configurable limits and ids.

Imports no torch, so the ingress replicas stay small; `serving.prompts` does the checks
that need the image.
"""
from __future__ import annotations

import re
from typing import Sequence

from .config import Limits
from .errors import ApiError
from .schemas import (RLE, MaskPromptModel, PanopticRequest, PolygonPrompt, ReferringPrompt, ScribblePrompt,
                      SegmentRequest, TextPrompt)

__all__ = ["normalize_image_id", "check_limits", "check_vocabulary", "check_rle", "referring_image_ids"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def normalize_image_id(image_id: str) -> str | None:
    """The canonical (lower-case hex sha256) form of an image id, or None when `image_id`
    cannot be one (such an id is simply unknown: 404, not a validation error)."""
    return image_id.lower() if _SHA256.match(image_id) else None


# --------------------------------------------------------------------------- limits
def _points_of(prompt: object) -> int:
    if isinstance(prompt, ScribblePrompt):
        return len(prompt.path)
    if isinstance(prompt, PolygonPrompt):
        return len(prompt.points)
    if isinstance(prompt, ReferringPrompt):
        return _points_of(prompt.region)
    return 0


def check_vocabulary(vocabulary: Sequence[str] | None, limits: Limits) -> None:
    """Vocabulary size, name length and uniqueness (ApiError 422)."""
    if vocabulary is None:
        return
    if len(vocabulary) > limits.max_vocabulary:
        raise ApiError("limit_exceeded", f"vocabulary has {len(vocabulary)} names; the limit is {limits.max_vocabulary}")
    for i, name in enumerate(vocabulary):
        if len(name) > limits.max_text_chars:
            raise ApiError("limit_exceeded",
                           f"vocabulary[{i}] has {len(name)} characters; the limit is {limits.max_text_chars}")
        if not name.strip():
            raise ApiError("validation_error", f"vocabulary[{i}] is blank")
    total = sum(len(name) for name in vocabulary)
    if total > limits.max_vocabulary_chars:
        raise ApiError("limit_exceeded",
                       f"vocabulary has {total} characters in all; the limit is {limits.max_vocabulary_chars}")
    if len(set(vocabulary)) != len(vocabulary):
        raise ApiError("validation_error", "vocabulary has duplicate names")


def _rle_of(prompt: object) -> RLE | None:
    if isinstance(prompt, MaskPromptModel):
        return prompt.rle
    if isinstance(prompt, ReferringPrompt):
        return _rle_of(prompt.region)
    return None


def check_rle(rle: RLE, limits: Limits, what: str) -> None:
    """An RLE's claimed size and counts length within the limits, before anything decodes it
    (the decoder compares the size with the image's, also before decoding)."""
    h, w = rle.size
    if h * w > limits.max_pixels:
        raise ApiError("limit_exceeded", f"{what}: mask size {h} x {w} = {h * w} pixels; "
                                         f"the limit is {limits.max_pixels}")
    if len(rle.counts) > limits.max_rle_chars:
        raise ApiError("limit_exceeded", f"{what}: RLE counts of length {len(rle.counts)}; "
                                         f"the limit is {limits.max_rle_chars}")


def check_limits(request: SegmentRequest | PanopticRequest, limits: Limits) -> None:
    """The configurable limits that need no image: counts and lengths (ApiError 422)."""
    check_vocabulary(request.vocabulary, limits)
    if not isinstance(request, SegmentRequest):
        return
    if len(request.prompts) > limits.max_prompts:
        raise ApiError("limit_exceeded", f"{len(request.prompts)} prompts; the limit is {limits.max_prompts}")
    if request.max_masks > limits.max_masks:
        raise ApiError("limit_exceeded", f"max_masks is {request.max_masks}; the limit is {limits.max_masks}")
    for i, prompt in enumerate(request.prompts):
        n = _points_of(prompt)
        if n > limits.max_points:
            raise ApiError("limit_exceeded", f"prompts[{i}] has {n} points; the limit is {limits.max_points}")
        if isinstance(prompt, TextPrompt) and len(prompt.text) > limits.max_text_chars:
            raise ApiError("limit_exceeded",
                           f"prompts[{i}].text has {len(prompt.text)} characters; the limit is {limits.max_text_chars}")
        rle = _rle_of(prompt)
        if rle is not None:
            check_rle(rle, limits, f"prompts[{i}] ({prompt.type})")
    if request.previous_mask is not None:
        check_rle(request.previous_mask, limits, "previous_mask")


def referring_image_ids(request: SegmentRequest) -> list[str]:
    """Distinct images named by referring prompts, in order (raw ids as sent)."""
    ids: list[str] = []
    for prompt in request.prompts:
        if isinstance(prompt, ReferringPrompt) and prompt.image_id not in ids:
            ids.append(prompt.image_id)
    return ids
