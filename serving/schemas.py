"""Request and response models of the HTTP API (docs/api.md): the OpenAPI contract.

Coordinates are pixels of the original image (x right, y down); masks are COCO compressed
RLE (`{"size": [h, w], "counts": "..."}`). Prompt objects are told apart by `"type"`.

Limits that are configuration (prompt counts, points, vocabulary size, max_masks) are not
part of the schema; the ingress checks them against `serving.config.Limits` (422
`limit_exceeded`), so one schema serves every deployment.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, StrictBool, model_validator

# The prompt models are shared with bulk prompt files (seem segment --prompts); re-exported here
# because they are part of this API's contract.
from model.prompt_schema import (RLE, AudioPrompt, BoxPrompt, ImageId, MaskPromptModel, PointPrompt, PolygonPrompt, Prompt,
                                 ReferringPrompt, ScribblePrompt, SpatialRegion, StrictModel, TextPrompt)

__all__ = [
    "RLE", "TextPrompt", "PointPrompt", "BoxPrompt", "ScribblePrompt", "PolygonPrompt", "MaskPromptModel",
    "ReferringPrompt", "AudioPrompt", "SpatialRegion", "Prompt", "ImageUriRequest", "SegmentRequest", "PanopticRequest",
    "ImageResponse", "RLEOut", "MaskOut", "SegmentResponse", "PanopticSegment", "PanopticResponse",
    "HealthResponse", "ErrorDetail", "ErrorResponse",
]

ImageUri = Annotated[str, Field(min_length=1, max_length=2048,
                                description="s3://, file:// or absolute path under an allowed prefix")]
VocabName = Annotated[str, Field(min_length=1)]


# --------------------------------------------------------------------------- requests
class _ImageRef(StrictModel):
    image_id: ImageId | None = None
    image_uri: ImageUri | None = None

    @model_validator(mode="after")
    def _one_image(self) -> "_ImageRef":
        if (self.image_id is None) == (self.image_uri is None):
            raise ValueError("give exactly one of image_id and image_uri")
        return self


class ImageUriRequest(StrictModel):
    """POST /v1/images with JSON: encode the image stored at `uri`."""

    uri: ImageUri


class SegmentRequest(_ImageRef):
    """POST /v1/segment: prompts that together describe one object.

    Multi-round use is stateless: send the last answer's mask back as `previous_mask`
    together with all clicks so far.
    """

    prompts: Annotated[list[Prompt], Field(min_length=1)]
    previous_mask: RLE | None = None
    vocabulary: Annotated[list[VocabName], Field(min_length=1)] | None = Field(
        None, description="names to label masks with (default: the model's vocabulary)")
    max_masks: Annotated[int, Field(strict=True, ge=1)] = 1


class PanopticRequest(_ImageRef):
    """POST /v1/panoptic: every segment of the image, labelled from `vocabulary`."""

    vocabulary: Annotated[list[VocabName], Field(min_length=1)] | None = None
    png: StrictBool = Field(False, description="also return the segment map as a COCO panoptic PNG (base64)")


# --------------------------------------------------------------------------- responses
class ImageResponse(BaseModel):
    """The uploaded image's id and size (the size the API's coordinates refer to)."""

    image_id: str = Field(description="sha256 of the image bytes")
    width: int
    height: int
    cached: bool = Field(description="features were already cached or stored (no encoder work)")


class RLEOut(BaseModel):
    """COCO compressed RLE (column-major runs), as pycocotools writes it."""

    size: list[int] = Field(description="[height, width]")
    counts: str


class MaskOut(BaseModel):
    """One mask in original image pixels; `label` is its best vocabulary class."""

    rle: RLEOut
    bbox: list[int] = Field(description="COCO [x, y, width, height]")
    area: int
    score: float
    label: str | None
    label_score: float | None


class SegmentResponse(BaseModel):
    """Masks for the prompted object; send `masks[0].rle` back as the next round's previous_mask."""

    masks: list[MaskOut] = Field(description="best first")
    transcripts: list[str] | None = Field(None, description="what was heard in each audio prompt, in order")
    timings_ms: dict[str, float]


class PanopticSegment(BaseModel):
    """One panoptic segment (a thing instance, or all of one stuff class)."""

    id: int = Field(description="value of this segment in the PNG's id map (R + 256 G + 256^2 B)")
    label: str
    category_id: int = Field(description="index of the label in the vocabulary")
    isthing: bool
    score: float
    area: int
    bbox: list[int]
    rle: RLEOut


class PanopticResponse(BaseModel):
    """Every segment of the image, labelled."""

    segments: list[PanopticSegment]
    png: str | None = Field(None, description="base64 PNG of the segment map, when asked")
    timings_ms: dict[str, float]


class HealthResponse(BaseModel):
    """The ingress is up."""

    status: Literal["ok"]


class ErrorDetail(BaseModel):
    """A stable machine-readable `code` and a message for people."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: `{"error": {"code", "message"}}`."""

    error: ErrorDetail
