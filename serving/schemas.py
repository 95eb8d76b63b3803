"""Request and response models of the HTTP API (DESIGN §7): the OpenAPI contract.

Coordinates are pixels of the original image (x right, y down); masks are COCO compressed
RLE (`{"size": [h, w], "counts": "..."}`). Prompt objects are told apart by `"type"`.

Limits that are configuration (prompt counts, points, vocabulary size, max_masks) are not
part of the schema; the ingress checks them against `serving.config.Limits` (422
`limit_exceeded`), so one schema serves every deployment.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "RLE", "TextPrompt", "PointPrompt", "BoxPrompt", "ScribblePrompt", "PolygonPrompt", "MaskPromptModel",
    "ReferringPrompt", "SpatialRegion", "Prompt", "ImageUriRequest", "SegmentRequest", "PanopticRequest",
    "ImageResponse", "RLEOut", "MaskOut", "SegmentResponse", "PanopticSegment", "PanopticResponse",
    "HealthResponse", "ErrorDetail", "ErrorResponse",
]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
XY = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2, description="[x, y] in original image pixels")]
ImageId = Annotated[str, Field(min_length=1, max_length=128,
                               description="sha256 (hex) of the image bytes, as returned by POST /v1/images")]
ImageUri = Annotated[str, Field(min_length=1, max_length=2048,
                                description="s3://, file:// or absolute path under an allowed prefix")]
VocabName = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    # Unknown fields are an error: a misspelt "positve" must not silently mean the default.
    model_config = ConfigDict(extra="forbid")


class RLE(_Model):
    """COCO RLE: compressed (`counts` a string) or uncompressed (`counts` a list of runs)."""

    size: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2, description="[height, width]")]
    counts: Union[str, list[Annotated[int, Field(ge=0)]]]


# --------------------------------------------------------------------------- prompts
class TextPrompt(_Model):
    """A referring phrase ("the red circle"). At most one per request."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1)]


class PointPrompt(_Model):
    """A click; positive (on the object) or negative (not the object)."""

    type: Literal["point"]
    xy: XY
    positive: bool = True


class BoxPrompt(_Model):
    """A box from (x0, y0) to (x1, y1), inclusive pixel corners."""

    type: Literal["box"]
    xyxy: Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1]")]
    positive: bool = True


class ScribblePrompt(_Model):
    """A free-hand stroke through `path`; `width` in model-input pixels."""

    type: Literal["scribble"]
    path: Annotated[list[XY], Field(min_length=1)]
    positive: bool = True
    width: Annotated[int, Field(ge=1, le=64)] = 1


class PolygonPrompt(_Model):
    """A filled polygon through `points` (at least 3)."""

    type: Literal["polygon"]
    points: Annotated[list[XY], Field(min_length=3)]
    positive: bool = True


class MaskPromptModel(_Model):
    """A binary mask of the image's size as a prompt."""

    type: Literal["mask"]
    rle: RLE
    positive: bool = True


SpatialRegion = Annotated[
    Union[PointPrompt, BoxPrompt, ScribblePrompt, PolygonPrompt, MaskPromptModel],
    Field(discriminator="type"),
]


class ReferringPrompt(_Model):
    """A region of another (already uploaded) image: find the same kind of thing here."""

    type: Literal["referring"]
    image_id: ImageId
    region: SpatialRegion = Field(description="a spatial prompt in that image's own pixels")


Prompt = Annotated[
    Union[TextPrompt, PointPrompt, BoxPrompt, ScribblePrompt, PolygonPrompt, MaskPromptModel, ReferringPrompt],
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- requests
class _ImageRef(_Model):
    image_id: ImageId | None = None
    image_uri: ImageUri | None = None

    @model_validator(mode="after")
    def _one_image(self) -> "_ImageRef":
        if (self.image_id is None) == (self.image_uri is None):
            raise ValueError("give exactly one of image_id and image_uri")
        return self


class ImageUriRequest(_Model):
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
    max_masks: Annotated[int, Field(ge=1)] = 1


class PanopticRequest(_ImageRef):
    """POST /v1/panoptic: every segment of the image, labelled from `vocabulary`."""

    vocabulary: Annotated[list[VocabName], Field(min_length=1)] | None = None
    png: bool = Field(False, description="also return the segment map as a COCO panoptic PNG (base64)")


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
