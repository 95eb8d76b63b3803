"""The JSON form of prompts: one schema for the HTTP API and for bulk prompt files.

Coordinates are pixels of the original image (x right, y down); masks are COCO RLE
(`{"size": [h, w], "counts": ...}`). Prompt objects are told apart by `"type"`. The HTTP
API publishes these models in its OpenAPI document; `seem segment --prompts` validates each
line of a prompts file with the same models, so both take exactly the same prompts.

Imports no torch (the HTTP ingress validates requests with it); `model.prompt_json` turns
validated prompts into the predictor's types.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

__all__ = [
    "RLE", "TextPrompt", "PointPrompt", "BoxPrompt", "ScribblePrompt", "PolygonPrompt", "MaskPromptModel",
    "ReferringPrompt", "AudioPrompt", "SpatialRegion", "Prompt", "ImageId", "PromptSchemaError", "validation_message",
    "parse_prompt_list",
]

# Strict numbers: JSON true/false are not coordinates or sizes (lax mode would read them as 1 and 0).
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
XY = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2, description="[x, y] in original image pixels")]
ImageId = Annotated[str, Field(min_length=1, max_length=128,
                               description="sha256 (hex) of the image bytes, as returned by POST /v1/images")]


class StrictModel(BaseModel):
    # Unknown fields are an error: a misspelt "positve" must not silently mean the default.
    model_config = ConfigDict(extra="forbid")


class RLE(StrictModel):
    """COCO RLE: compressed (`counts` a string) or uncompressed (`counts` a list of runs)."""

    size: Annotated[list[Annotated[int, Field(strict=True, ge=1)]],
                    Field(min_length=2, max_length=2, description="[height, width]")]
    counts: Union[str, list[Annotated[int, Field(strict=True, ge=0)]]]


class TextPrompt(StrictModel):
    """A referring phrase ("the red circle"). At most one per request."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1)]


class PointPrompt(StrictModel):
    """A click; positive (on the object) or negative (not the object)."""

    type: Literal["point"]
    xy: XY
    positive: StrictBool = True


class BoxPrompt(StrictModel):
    """A box from (x0, y0) to (x1, y1), inclusive pixel corners."""

    type: Literal["box"]
    xyxy: Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1]")]
    positive: StrictBool = True


class ScribblePrompt(StrictModel):
    """A free-hand stroke through `path`; `width` in model-input pixels."""

    type: Literal["scribble"]
    path: Annotated[list[XY], Field(min_length=1)]
    positive: StrictBool = True
    width: Annotated[int, Field(strict=True, ge=1, le=64)] = 1


class PolygonPrompt(StrictModel):
    """A filled polygon through `points` (at least 3)."""

    type: Literal["polygon"]
    points: Annotated[list[XY], Field(min_length=3)]
    positive: StrictBool = True


class MaskPromptModel(StrictModel):
    """A binary mask of the image's size as a prompt."""

    type: Literal["mask"]
    rle: RLE
    positive: StrictBool = True


SpatialRegion = Annotated[
    Union[PointPrompt, BoxPrompt, ScribblePrompt, PolygonPrompt, MaskPromptModel],
    Field(discriminator="type"),
]


class ReferringPrompt(StrictModel):
    """A region of another (already uploaded) image: find the same kind of thing here."""

    type: Literal["referring"]
    image_id: ImageId
    region: SpatialRegion = Field(description="a spatial prompt in that image's own pixels")


class AudioPrompt(StrictModel):
    """A spoken phrase: an audio file (WAV, FLAC, OGG, WebM, MP3, ...) as base64. It is
    transcribed and then counts as the request's text prompt (at most one of the two)."""

    type: Literal["audio"]
    data: Annotated[str, Field(min_length=1, description="base64 of the audio file's bytes")]
    language: Annotated[str, Field(min_length=2, max_length=16)] | None = Field(
        None, description="ISO language code of the speech, e.g. \"en\" (default: the recogniser's)")


Prompt = Annotated[
    Union[TextPrompt, PointPrompt, BoxPrompt, ScribblePrompt, PolygonPrompt, MaskPromptModel, ReferringPrompt,
          AudioPrompt],
    Field(discriminator="type"),
]


class PromptSchemaError(ValueError):
    """JSON prompts that do not fit the schema; the message names the field."""


def validation_message(error: ValidationError, prefix: str = "", shown: int = 3) -> str:
    """A pydantic error as one line: `loc: what` for the first few problems."""
    parts = []
    for item in error.errors(include_url=False)[:shown]:
        loc = ".".join(str(p) for p in (prefix, *item.get("loc", ())) if p != "") or "body"
        parts.append(f"{loc}: {item.get('msg')}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


_PROMPT_LIST = TypeAdapter(Annotated[list[Prompt], Field(min_length=1)])


def parse_prompt_list(data: Any, where: str = "prompts") -> list[Any]:
    """A JSON list of prompt objects (as `json.loads` returns it) -> validated prompt models.

    Raises `PromptSchemaError` naming the field (`prompts.1.point.xy: ...`)."""
    try:
        return _PROMPT_LIST.validate_python(data)
    except ValidationError as e:
        raise PromptSchemaError(validation_message(e, where)) from None
