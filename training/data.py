"""Training samples: images at the model's input size with panoptic, referring and
interactive targets, from Shapes World (by seed) or a COCO-format dataset.

Every sample goes through the predictor's own pre-processing (shortest-edge resize with
PIL bicubic, prompts rasterised by `PromptRasterizer`), so training sees exactly what
inference sees. A batch holds images of one size: Shapes World batches draw one
(height, width) per batch and render every scene at it, so nothing is padded away.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from model.config import SeemConfig
from model.transforms import PromptRasterizer, padded_size, resize_image, resized_size
from model.types import Point

from . import prompt_sampling as ps
from .shapes_world import CATEGORIES, STUFF_CLASSES, Scene, generate_scene

PROMPT_KINDS = ("point", "box", "stroke", "scribble", "polygon")


@dataclass
class Sample:
    """One training image at model-input size (targets are input-size masks)."""

    image: torch.Tensor  # 3 x h x w float 0..255
    masks: torch.Tensor  # S x h x w bool, panoptic segments (things and stuff)
    labels: torch.Tensor  # S long, category index
    phrases: list[str]  # referring phrases ...
    phrase_targets: list[int]  # ... and the segment index each names
    prompt_targets: list[int]  # segments given a visual prompt
    prompt_pos: torch.Tensor  # T x h x w bool, first-round positive prompt per target
    prompt_neg: torch.Tensor  # T x h x w bool


@dataclass
class Batch:
    samples: list[Sample]
    input_size: tuple[int, int]
    padded: tuple[int, int]
    vocabulary: tuple[str, ...]
    stuff: frozenset[str] = field(default_factory=frozenset)

    def pad(self, masks: torch.Tensor) -> torch.Tensor:
        """... x h x w -> ... x Hp x Wp (zeros below/right, as the image is padded)."""
        h, w = masks.shape[-2:]
        return torch.nn.functional.pad(masks, (0, self.padded[1] - w, 0, self.padded[0] - h))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)) > 127


def sample_prompt(kind: str, mask: np.ndarray, rng: np.random.Generator):
    """A visual prompt of `kind` for an object mask, in that mask's pixels."""
    if kind == "point":
        return ps.sample_point(mask, rng)
    if kind == "box":
        return ps.sample_box(mask, rng, jitter=0.05)
    if kind == "stroke":
        return ps.sample_stroke(mask, rng)
    if kind == "scribble":
        return ps.sample_scribble(mask, rng)
    if kind == "polygon":
        return ps.sample_polygon(mask, rng)
    raise ValueError(f"unknown prompt kind {kind!r}")


def build_sample(image: np.ndarray, segment_masks: list[np.ndarray], labels: list[int],
                 phrases: list[tuple[str, int]], input_size: tuple[int, int], rng: np.random.Generator,
                 max_phrases: int = 2, max_prompts: int = 2, lookalikes: dict[int, int] | None = None) -> Sample:
    """Targets for one image (original pixels) -> a `Sample` at `input_size`.

    lookalikes: segment index -> the index of another segment that looks the same (same
    shape and colour). When given, the visual prompts go to those segments: half of them a
    single click, and half of them with a negative click inside the look-alike, as a user
    separates the one they mean from its twin.
    """
    img = resize_image(image, input_size)
    masks = np.stack([_resize_mask(m, input_size) for m in segment_masks]) if segment_masks else \
        np.zeros((0, *input_size), dtype=bool)
    keep = [i for i in range(len(masks)) if masks[i].sum() >= 4]  # drop segments lost in resizing
    index = {old: new for new, old in enumerate(keep)}
    masks = masks[keep]
    labels_t = torch.tensor([labels[i] for i in keep], dtype=torch.long)
    usable = [(t, index[s]) for t, s in phrases if s in index]
    chosen = rng.permutation(len(usable))[:max_phrases] if usable else []
    phrase_list = [usable[i][0] for i in chosen]
    phrase_targets = [usable[i][1] for i in chosen]
    twins = {index[a]: index[b] for a, b in (lookalikes or {}).items() if a in index and b in index}
    if twins:
        candidates = sorted(twins)
        prompt_targets = [candidates[i] for i in rng.permutation(len(candidates))[:max_prompts]]
    else:
        prompt_targets = list(rng.permutation(len(masks))[:max_prompts]) if len(masks) else []
    raster = PromptRasterizer(input_size, input_size)
    pos = np.zeros((len(prompt_targets), *input_size), dtype=bool)
    neg = np.zeros_like(pos)
    for j, s in enumerate(prompt_targets):
        plain_click = bool(twins) and rng.random() < 0.5  # half the look-alike prompts are a click
        kind = "point" if plain_click else PROMPT_KINDS[int(rng.integers(len(PROMPT_KINDS)))]
        pos[j] = raster.rasterize(sample_prompt(kind, masks[s], rng))
        if twins:
            if rng.random() < 0.5:  # a negative click on the look-alike
                neg[j] = raster.rasterize(ps.sample_point(masks[twins[s]], rng, positive=False))
        elif rng.random() < 0.25:  # sometimes a negative click too, as users give
            neg[j] = raster.rasterize(ps.sample_negative_point(masks[s], rng))
    return Sample(img, torch.from_numpy(masks), labels_t, phrase_list, phrase_targets, prompt_targets,
                  torch.from_numpy(pos), torch.from_numpy(neg))


def lookalike_pairs(scene: Scene) -> dict[int, int]:
    """Segment id -> the id of another thing of the same shape and colour (the nearest one
    when there are several); things without a look-alike are left out."""
    out: dict[int, int] = {}
    for t in scene.things:
        a = t.attributes
        same = [u for u in scene.things if u.id != t.id and u.attributes.shape == a.shape
                and u.attributes.color == a.color]
        if same:
            nearest = min(same, key=lambda u: (u.attributes.center[0] - a.center[0]) ** 2
                          + (u.attributes.center[1] - a.center[1]) ** 2)
            out[t.id] = nearest.id
    return out


class ShapesWorldBatches:
    """Endless, deterministic batches of Shapes World scenes.

    Batch i of worker `rank` uses scene seeds derived from (seed, rank, i); each batch
    draws one image size from the generator's range and renders all its scenes at it.

    `lookalike_fraction` of the scenes (0 = none, and then batches are exactly those of
    earlier versions) are drawn from the scenes that hold two things of the same shape and
    colour, and their visual prompts go to those things (`build_sample`'s `lookalikes`):
    about one scene in nine has such a pair, too few for the decoder to learn that a click
    means the thing under it and not every thing that looks like it.
    """

    # Scene draws per look-alike sample before it falls back to an ordinary scene (about
    # 11% of scenes qualify, so 100 draws fail with probability ~1e-5).
    LOOKALIKE_DRAWS = 100

    def __init__(self, cfg: SeemConfig, batch_size: int, seed: int = 0, rank: int = 0,
                 min_side: int = 128, max_side: int = 320, lookalike_fraction: float = 0.0) -> None:
        if not 0.0 <= lookalike_fraction <= 1.0:
            raise ValueError(f"lookalike_fraction must be in [0, 1], got {lookalike_fraction}")
        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.min_side, self.max_side = min_side, max_side
        self.lookalike_fraction = lookalike_fraction

    def batch(self, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.rank, index])
        h, w = (int(x) for x in rng.integers(self.min_side, self.max_side + 1, size=2))
        inf = self.cfg.inference
        input_size = resized_size(h, w, inf.resize_shortest_edge, inf.resize_max_size)
        samples = []
        for j in range(self.batch_size):
            # No draw at all when the fraction is 0, so such runs see the batches they always did.
            want_twins = self.lookalike_fraction > 0 and rng.random() < self.lookalike_fraction
            for _ in range(self.LOOKALIKE_DRAWS if want_twins else 1):
                scene_seed = int(rng.integers(0, 2**40))  # training seeds stay below the val/test ranges
                scene = generate_scene(scene_seed, size=(h, w))
                twins = lookalike_pairs(scene) if want_twins else {}
                if twins or not want_twins:
                    break
            seg_masks = [scene.mask(s.id) for s in scene.segments]
            ids = {s.id: i for i, s in enumerate(scene.segments)}
            samples.append(build_sample(scene.image, seg_masks, [s.category_id for s in scene.segments],
                                        [(t, ids[sid]) for t, sid in scene.phrases], input_size, rng,
                                        lookalikes={ids[a]: ids[b] for a, b in twins.items()}))
        return Batch(samples, input_size, padded_size(input_size, inf.size_divisibility), CATEGORIES,
                     frozenset(STUFF_CLASSES))

    def __iter__(self) -> Iterator[Batch]:
        index = 0
        while True:
            yield self.batch(index)
            index += 1


class CocoBatches:
    """Batches from a COCO-format dataset (panoptic or instances JSON + images): the
    same `seem train` fine-tunes on a user's data.

    Referring phrases come from a non-standard per-annotation "phrases" list when present
    (Shapes World's export has it); otherwise the category name of a category with a
    single instance in the image serves as its phrase.
    """

    def __init__(self, cfg: SeemConfig, annotations: str | Path, images: str | Path | None, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        from pycocotools import mask as mask_utils  # noqa: F401 - fail early when missing

        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.annotations = Path(annotations)
        data = json.loads(self.annotations.read_text())
        self.panoptic = "segments_info" in (data.get("annotations") or [{}])[0]
        self.images_dir = Path(images) if images else self.annotations.parent
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.vocabulary = tuple(c["name"] for c in cats)
        self.stuff = frozenset(c["name"] for c in cats if not c.get("isthing", 1))
        self.cat_index = {c["id"]: i for i, c in enumerate(cats)}
        self.images = {im["id"]: im for im in data["images"]}
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        ids = sorted(by_image)
        self.image_ids = ids[rank::world_size]
        self.by_image = by_image

    def _load(self, image_id: int) -> tuple[np.ndarray, list[np.ndarray], list[int], list[tuple[str, int]]]:
        from pycocotools import mask as mask_utils

        info = self.images[image_id]
        image = np.asarray(Image.open(self.images_dir / info["file_name"]).convert("RGB"))
        h, w = image.shape[:2]
        masks, labels, phrases = [], [], []
        if self.panoptic:
            ann = self.by_image[image_id][0]
            png = np.asarray(Image.open(self.annotations.parent / "panoptic" / ann["file_name"]).convert("RGB"))
            ids = png[..., 0].astype(np.int64) + 256 * png[..., 1] + 65536 * png[..., 2].astype(np.int64)
            segments = ann["segments_info"]
            for seg in segments:
                masks.append(ids == seg["id"])
                labels.append(self.cat_index[seg["category_id"]])
                for text in seg.get("phrases", []):
                    phrases.append((text, len(masks) - 1))
        else:
            for ann in self.by_image[image_id]:
                seg = ann["segmentation"]
                if isinstance(seg, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                elif isinstance(seg["counts"], list):
                    rle = mask_utils.frPyObjects(seg, h, w)
                else:
                    rle = seg
                masks.append(mask_utils.decode(rle).astype(bool))
                labels.append(self.cat_index[ann["category_id"]])
                for text in ann.get("phrases", []):
                    phrases.append((text, len(masks) - 1))
        if not phrases:
            counts = np.bincount(labels, minlength=len(self.vocabulary)) if labels else []
            phrases = [(self.vocabulary[l], i) for i, l in enumerate(labels) if counts[l] == 1]
        return image, masks, labels, phrases

    def batch(self, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, index])
        order = rng.permutation(len(self.image_ids))
        first = self.image_ids[order[0]]
        inf = self.cfg.inference
        loaded = [self._load(first)]
        size = loaded[0][0].shape[:2]
        # A batch holds one input size: take further images of the same size when there are any.
        for k in order[1:]:
            if len(loaded) == self.batch_size:
                break
            image_id = self.image_ids[k]
            info = self.images[image_id]
            if (info["height"], info["width"]) == tuple(size):
                loaded.append(self._load(image_id))
        input_size = resized_size(size[0], size[1], inf.resize_shortest_edge, inf.resize_max_size)
        samples = [build_sample(img, masks, labels, phrases, input_size, rng) for img, masks, labels, phrases in loaded]
        return Batch(samples, input_size, padded_size(input_size, inf.size_divisibility), self.vocabulary, self.stuff)

    def __iter__(self) -> Iterator[Batch]:
        index = 0
        while True:
            yield self.batch(index)
            index += 1


def simulate_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, bool] | None:
    """The reference's next click (input pixels) as a 3x3 prompt mask and its polarity."""
    point = ps.next_click(gt, pred, clicked)
    if point is None:
        return None
    raster = PromptRasterizer(input_size, input_size)
    return raster.rasterize(Point(point.x, point.y)), point.positive
