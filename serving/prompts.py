"""A segment request's prompts -> the predictor's types, with HTTP errors.

The conversion and its checks live in `model.prompt_json` (bulk prompt files use them
too); here a problem becomes an `ApiError` (422 `invalid_prompt`) whose message names the
prompt (`prompts[2]`) and says what is wrong.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from model.prompt_json import PromptJsonError, to_prompts as _to_prompts
from model.types import ImageFeatures, Prompts

from .errors import ApiError
from .schemas import SegmentRequest

__all__ = ["to_prompts"]


def to_prompts(request: SegmentRequest, size: tuple[int, int],
               referring: Mapping[str, ImageFeatures]) -> tuple[Prompts, np.ndarray | None]:
    """The request's prompts as one `Prompts` target, plus the previous mask (or None).

    `size` is the target image's (height, width); `referring` maps each referring image id
    (as sent) to that image's features, whose own size bounds its region.
    """
    try:
        return _to_prompts(request.prompts, size, referring, request.previous_mask)
    except PromptJsonError as e:
        raise ApiError("invalid_prompt", str(e)) from None
