"""Plain data types of the predictor API: prompts in, features, results out.

Everything here is in *original image pixels* (x right, y down) unless a name says
otherwise; the predictor maps to and from the model's resized/padded input.
These types are what `pipeline/` and `serving/` exchange with `model/`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence, Union

import numpy as np
import torch

from .mask_axes import MaskAxes, change_frame, same_frame

FEATURE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Point:
    """A click. Rasterised as a 3x3 square in model-input pixels (the reference's click)."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (x0, y0) top-left to (x1, y1) bottom-right, inclusive.

    SEEM v1 has no box encoder: a box is the filled rectangle, as in the reference.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    positive: bool = True


@dataclass(frozen=True)
class Scribble:
    """A free-hand stroke: a polyline through `path`, `width` model-input pixels wide."""

    path: tuple[tuple[float, float], ...]
    positive: bool = True
    width: int = 1


@dataclass(frozen=True)
class Polygon:
    """A filled polygon through `points` (at least 3)."""

    points: tuple[tuple[float, float], ...]
    positive: bool = True


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A binary mask (H x W bool, original image size) used as a visual prompt."""

    mask: np.ndarray
    positive: bool = True


SpatialPrompt = Union[Point, Box, Scribble, Polygon, MaskPrompt]


@dataclass(eq=False)
class ReferringRegion:
    """A region of *another* image (the referring image) whose look is the prompt.

    `features` are that image's encoded features; `region` are spatial prompts in that
    image's original pixels. Semantics (ours; the reference's v1 path crashes): the region
    is segmented in its own image and the class embedding of what it shows ranks the target
    image's objects by similarity, so the answer is "the same kind of thing" wherever it is
    (`SeemPredictor._reference_embedding`, docs/design-notes.md).
    """

    features: "ImageFeatures"
    region: tuple[SpatialPrompt, ...]


@dataclass(eq=False)
class Prompts:
    """Everything that describes ONE target object; the parts compose freely.

    - `text`: a referring phrase ("the red circle").
    - `spatial`: clicks, boxes, scribbles, polygons, masks on this image, positive or negative.
    - `referring`: regions of other images.
    - `audio`: a spoken phrase (an audio file's bytes or its path; `language` e.g. "en"),
      transcribed by the predictor's recogniser and then used as `text` (not both).
    Text alone runs the grounding path; any spatial part runs the spatial path (with the
    phrase's tokens visible to the spatial queries when text is given too); referring
    regions alone rank the object queries, and with text or spatial parts re-rank those.
    """

    text: str | None = None
    spatial: tuple[SpatialPrompt, ...] = ()
    referring: tuple[ReferringRegion, ...] = ()
    audio: "bytes | str | os.PathLike[str] | None" = None
    language: str | None = None

    def __post_init__(self) -> None:
        self.spatial = tuple(self.spatial)
        self.referring = tuple(self.referring)
        if self.text is not None and not self.text.strip():
            raise ValueError("text prompt is empty")
        if self.audio is not None and self.text is not None:
            raise ValueError("give text or audio, not both: the audio's transcript is the text prompt")
        if isinstance(self.audio, (bytes, bytearray)) and not self.audio:
            raise ValueError("audio prompt is empty")

    @property
    def is_empty(self) -> bool:
        return self.text is None and self.audio is None and not self.spatial and not self.referring

    @property
    def has_visual(self) -> bool:
        return bool(self.spatial) or bool(self.referring)


# --------------------------------------------------------------------------- features
FeatureStage = Literal["pixel_decoder", "backbone"]
#: Tensors of the object queries' final round (class and mask embeddings, Q x D and Q x C),
#: which pixel-decoder features may carry: the 101-query pass never sees prompts, so it is
#: computed once when the image is encoded (`SeemPredictor.encode`), like the maps.
OBJECT_PASS_TENSORS = ("object_class_emb", "object_mask_emb")


@dataclass(eq=False)
class ImageFeatures:
    """Encoded features of ONE image plus the geometry needed to map back to it.

    `tensors` are unbatched (C x H x W each):
      stage "pixel_decoder": `mask_features` (stride 4), `ms0`, `ms1`, `ms2` (strides 32, 16, 8)
      stage "backbone":      `res2` .. `res5` (the pixel decoder is run on use)
    and, at stage "pixel_decoder", optionally the object queries' pass (`OBJECT_PASS_TENSORS`:
    `object_class_emb` Q x D, `object_mask_emb` Q x C); without it the predictor computes
    the pass on first use (older store objects, `encode(object_pass=False)`).
    Sizes are (height, width). `input_size` is the resized image fed to the network,
    `padded_size` that size padded to the model's size divisibility.
    `mask_axes`: when set, `mask_features` and `object_mask_emb` hold components along these
    axes instead of channels (store format 4 keeps them so; model.mask_axes says why the
    predictor reads them as they are); `in_frame` moves them between frames.
    """

    model_id: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    tensors: dict[str, torch.Tensor]
    stage: FeatureStage = "pixel_decoder"
    mask_axes: MaskAxes | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ImageFeatures":
        return dataclasses.replace(self, tensors={k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()})

    def in_frame(self, axes: MaskAxes | None) -> "ImageFeatures":
        """These features with `mask_features` and `object_mask_emb` along `axes` (None:
        channels); the other maps are not in the mask space and stay as they are."""
        if same_frame(axes, self.mask_axes):
            return self
        if self.stage != "pixel_decoder":
            raise ValueError("only pixel-decoder features have mask features to rotate")
        tensors = dict(self.tensors)
        mf = tensors["mask_features"]
        channels = mf if self.mask_axes is None else self.mask_axes.channels_of(mf.to(torch.float32))
        tensors["mask_features"] = (channels if axes is None else axes.components(channels.to(torch.float32))).to(mf.dtype)
        if OBJECT_PASS_TENSORS[1] in tensors:
            emb = tensors[OBJECT_PASS_TENSORS[1]]
            tensors[OBJECT_PASS_TENSORS[1]] = change_frame(emb.to(torch.float32), self.mask_axes, axes).to(emb.dtype)
        return dataclasses.replace(self, tensors=tensors, mask_axes=axes)

    @property
    def has_object_pass(self) -> bool:
        """Whether these features carry the object queries' pass (see `OBJECT_PASS_TENSORS`)."""
        return all(name in self.tensors for name in OBJECT_PASS_TENSORS)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors.values())).dtype

    def metadata(self) -> dict[str, str]:
        """String metadata for serialisation (safetensors metadata is str -> str)."""
        return {
            "format_version": str(FEATURE_FORMAT_VERSION),
            "model_id": self.model_id,
            "stage": self.stage,
            "original_size": json.dumps(list(self.original_size)),
            "input_size": json.dumps(list(self.input_size)),
            "padded_size": json.dumps(list(self.padded_size)),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> "ImageFeatures":
        version = int(metadata.get("format_version", "0"))
        if version != FEATURE_FORMAT_VERSION:
            raise ValueError(f"unsupported feature format version {version} (expected {FEATURE_FORMAT_VERSION})")
        stage = metadata["stage"]
        if stage not in ("pixel_decoder", "backbone"):
            raise ValueError(f"unknown feature stage {stage!r}")
        return cls(
            model_id=metadata["model_id"],
            original_size=tuple(json.loads(metadata["original_size"])),
            input_size=tuple(json.loads(metadata["input_size"])),
            padded_size=tuple(json.loads(metadata["padded_size"])),
            tensors=dict(tensors),
            stage=stage,  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- results
@dataclass(eq=False)
class MaskResult:
    """One output mask in original image pixels.

    `score` ranks masks of one request (grounding similarity, spatial selection logit,
    or panoptic confidence); `label` is the best vocabulary class of the mask's query
    with `label_score` its softmax probability.
    """

    mask: np.ndarray
    score: float
    label: str | None = None
    label_score: float | None = None
    category_id: int | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, width, height) of the mask; zeros for an empty mask."""
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


@dataclass(eq=False)
class Segmentation:
    """The answer to one target: masks best first, and the memory for the next round.

    `memory` is the chosen mask's logits at stride 4 of the padded input; pass it back as
    `previous_mask` for an exact next round (a boolean mask in original pixels works too).
    """

    masks: list[MaskResult]
    memory: torch.Tensor | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    transcript: str | None = None  # what was heard, for an audio prompt


@dataclass(eq=False)
class PanopticSegment(MaskResult):
    """One panoptic segment: a thing instance, or all of one stuff class.

    A `MaskResult` (mask, score, label, category_id; area and bbox as properties) plus its
    id in the segment map and whether it is a thing. `label_score` is its class confidence,
    the same as `score`.
    """

    id: int = 0
    isthing: bool = True

    def rle(self) -> dict:
        """The mask as COCO RLE (`model.rle.encode_mask`)."""
        from .rle import encode_mask

        return encode_mask(self.mask)


@dataclass(eq=False)
class PanopticResult:
    """Panoptic segmentation: `segment_map` (H x W int32, 0 = void, ids from 1) + segments."""

    segment_map: np.ndarray
    segments: list[PanopticSegment]
    timings_ms: dict[str, float] = field(default_factory=dict)
    semantic: np.ndarray | None = None  # K x H x W soft semantic map, when asked for

    @property
    def masks(self) -> list[MaskResult]:
        """The segments as masks (each segment is a `MaskResult`)."""
        return list(self.segments)


@dataclass(frozen=True)
class Vocabulary:
    """Class names for open-vocabulary labels; `stuff` names merge into one segment each."""

    names: tuple[str, ...]
    stuff: frozenset[str] = frozenset()

    @classmethod
    def of(cls, value: "Vocabulary | Sequence[str] | None", default: "Vocabulary") -> "Vocabulary":
        if value is None:
            return default
        if isinstance(value, Vocabulary):
            return value
        names = tuple(str(v) for v in value)
        if not names:
            raise ValueError("vocabulary is empty")
        if len(set(names)) != len(names):
            raise ValueError("vocabulary has duplicate names")
        return cls(names=names, stuff=frozenset(n for n in names if n in default.stuff))

    @classmethod
    def resolve(cls, names: "Sequence[str] | None", stuff: "Iterable[str] | None", default: "Vocabulary") -> "Vocabulary":
        """The one rule for which names are stuff: `stuff` when given, else the names that
        `default` (the model's vocabulary) knows as stuff. No names: the default's."""
        vocab = cls.of(None if names is None else list(names), default)
        return vocab if stuff is None else cls(names=vocab.names, stuff=frozenset(stuff))

    @property
    def stuff_names(self) -> tuple[str, ...]:
        """The stuff names, in vocabulary order."""
        return tuple(n for n in self.names if n in self.stuff)

    def is_thing(self, index: int) -> bool:
        return self.names[index] not in self.stuff
