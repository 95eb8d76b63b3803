"""`seem eval`: the paper's tables on held-out Shapes World scenes, through the predictor API.

- generic: PQ (panoptic quality, things + stuff, IoU > 0.5 matches per category) and mIoU
  (per-class IoU of the semantic map, accumulated over the images);
- referring: cIoU (cumulative intersection over cumulative union of every phrase) and mIoU;
- interactive: NoC85 / NoC90, the mean number of clicks to reach 85% / 90% IoU (at most
  20; the first click inside the object, the next ones from the reference's simulator on
  the previous answer, with the previous mask as memory);
- 1-IoU per prompt type (point, stroke, scribble, polygon, box): IoU after one prompt;
- composition: IoU of text alone vs text + one click, on objects that have a phrase.
Scenes come from the test split (seeds offset into a range training never draws from);
the validation split is for choices such as the panoptic threshold.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from model.predictor import SeemPredictor
from model.types import Point, Prompts

from . import prompt_sampling as ps
from .data import PROMPT_KINDS, sample_prompt
from .prompt_sampling import iou
from .shapes_world import CATEGORIES, Scene, default_vocabulary, generate_scene, split_seeds

MAX_CLICKS = 20


@dataclass
class PanopticAccumulator:
    """PQ per category from matched segments; per-class intersection/union for mIoU."""

    num_classes: int
    iou_sum: np.ndarray = field(init=False)
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    inter: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = self.num_classes
        self.iou_sum, self.tp, self.fp, self.fn = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
        self.inter, self.union = np.zeros(k), np.zeros(k)

    def add_panoptic(self, gt: list[tuple[int, np.ndarray]], pred: list[tuple[int, np.ndarray]]) -> None:
        """gt / pred: (category, mask) per segment; a match needs the same category and IoU > 0.5."""
        matched_pred = set()
        for c, g in gt:
            best, best_j = 0.0, None
            for j, (pc, p) in enumerate(pred):
                if pc != c or j in matched_pred:
                    continue
                v = iou(g, p)
                if v > best:
                    best, best_j = v, j
            if best > 0.5:
                matched_pred.add(best_j)
                self.tp[c] += 1
                self.iou_sum[c] += best
            else:
                self.fn[c] += 1
        for j, (pc, _) in enumerate(pred):
            if j not in matched_pred:
                self.fp[pc] += 1

    def add_semantic(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """H x W class maps (-1 = no prediction)."""
        for c in range(self.num_classes):
            g, p = gt == c, pred == c
            self.inter[c] += np.logical_and(g, p).sum()
            self.union[c] += np.logical_or(g, p).sum()

    def pq(self) -> tuple[float, float, float]:
        present = (self.tp + self.fp + self.fn) > 0
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        pq = np.where(present, self.iou_sum / np.maximum(denom, 1e-9), 0.0)
        sq = np.where(self.tp > 0, self.iou_sum / np.maximum(self.tp, 1), 0.0)
        rq = np.where(present, self.tp / np.maximum(denom, 1e-9), 0.0)
        return float(pq[present].mean()), float(sq[present].mean()), float(rq[present].mean())

    def miou(self) -> float:
        present = self.union > 0
        return float((self.inter[present] / self.union[present]).mean())


def clicks_to_reach(predictor: SeemPredictor, features, gt: np.ndarray, rng: np.random.Generator,
                    vocabulary, targets: tuple[float, ...] = (0.85, 0.9)) -> dict[float, int]:
    """Number of clicks until IoU >= each target (MAX_CLICKS when never reached)."""
    clicks = [ps.sample_point(gt, rng)]
    clicked = ps.click_square(clicks[0], gt.shape)
    reached: dict[float, int] = {}
    memory = None
    for n in range(1, MAX_CLICKS + 1):
        seg = predictor.decode(features, Prompts(spatial=tuple(clicks)), previous_mask=memory, vocabulary=vocabulary)
        pred = seg.masks[0].mask
        memory = seg.memory
        score = iou(gt, pred)
        for t in targets:
            if t not in reached and score >= t:
                reached[t] = n
        if len(reached) == len(targets) or n == MAX_CLICKS:
            break
        nxt = ps.next_click(gt, pred, clicked)
        if nxt is None:
            break
        clicks.append(nxt)
        clicked |= ps.click_square(nxt, gt.shape)
    return {t: reached.get(t, MAX_CLICKS) for t in targets}


def _scenes(split: str, images: int, seed: int, progress: bool, desc: str) -> Iterator[Scene]:
    """The split's scenes from offset `seed`, with a progress bar on stderr if asked."""
    seeds = split_seeds(split, images, start=seed)
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc=desc, unit="img", file=sys.stderr)
    for scene_seed in seeds:
        yield generate_scene(scene_seed)


def _gt_segments(scene: Scene) -> list[tuple[int, np.ndarray]]:
    """(category, mask) per ground-truth segment, as PanopticAccumulator takes them."""
    return [(s.category_id, scene.mask(s.id)) for s in scene.segments]


def _panoptic_segments(pan) -> list[tuple[int, np.ndarray]]:  # noqa: ANN001 - a PanopticResult
    """(category, mask) per predicted segment."""
    return [(seg.category_id, seg.mask) for seg in pan.segments]


def panoptic_threshold_sweep(predictor: SeemPredictor, thresholds: Sequence[float], *, split: str = "val",
                             seed: int = 0, images: int = 80, progress: bool = True) -> dict[float, dict[str, float]]:
    """PQ / SQ / RQ at each `object_mask_threshold`, on the same scenes (one encode per scene).

    How a checkpoint's panoptic threshold is chosen: on the validation split, never on the
    test scenes the eval table reports.
    """
    vocab = default_vocabulary()
    accs = {t: PanopticAccumulator(len(CATEGORIES)) for t in thresholds}
    for scene in _scenes(split, images, seed, progress, f"panoptic sweep ({split})"):
        features = predictor.encode([scene.image])[0]
        gt_segments = _gt_segments(scene)
        for t, acc in accs.items():
            acc.add_panoptic(gt_segments, _panoptic_segments(predictor.panoptic(features, vocab, object_mask_threshold=t)))
    return {t: dict(zip(("pq", "sq", "rq"), acc.pq())) for t, acc in accs.items()}


def evaluate(predictor: SeemPredictor, seed: int = 12345, images: int = 200, progress: bool = True,
             split: str = "test") -> dict[str, float]:
    vocab = default_vocabulary()
    tally = _Tally(PanopticAccumulator(len(CATEGORIES)))
    started = time.time()
    for scene in _scenes(split, images, seed, progress, "eval"):
        rng = np.random.default_rng([seed, scene.seed])
        features = predictor.encode([scene.image])[0]
        tally.add_generic(predictor, features, scene, vocab)
        tally.add_referring(predictor, features, scene, vocab)
        tally.add_interactive(predictor, features, scene, vocab, rng)
    return tally.result(images, time.time() - started)


@dataclass
class _Tally:
    """What `evaluate` sums over scenes, one method per task."""

    acc: PanopticAccumulator
    ref_inter: float = 0.0
    ref_union: float = 0.0
    ref_ious: list[float] = field(default_factory=list)
    noc: dict[float, list[int]] = field(default_factory=lambda: {0.85: [], 0.9: []})
    one: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in PROMPT_KINDS})
    text_alone: list[float] = field(default_factory=list)
    text_click: list[float] = field(default_factory=list)

    def add_generic(self, predictor: SeemPredictor, features, scene: Scene, vocab) -> None:
        """Panoptic and semantic segmentation of the scene."""
        pan = predictor.panoptic(features, vocab, semantic=True)
        gt_segments = _gt_segments(scene)
        self.acc.add_panoptic(gt_segments, _panoptic_segments(pan))
        gt_sem = np.full(scene.segment_map.shape, -1)
        for c, m in gt_segments:
            gt_sem[m] = c
        self.acc.add_semantic(gt_sem, pan.semantic.argmax(0))

    def add_referring(self, predictor: SeemPredictor, features, scene: Scene, vocab) -> None:
        """Every phrase of the scene alone."""
        for text, seg_id in scene.phrases:
            gt = scene.mask(seg_id)
            pred = predictor.decode(features, Prompts(text=text), vocabulary=vocab).masks[0].mask
            self.ref_inter += np.logical_and(gt, pred).sum()
            self.ref_union += np.logical_or(gt, pred).sum()
            self.ref_ious.append(iou(gt, pred))

    def add_interactive(self, predictor: SeemPredictor, features, scene: Scene, vocab, rng) -> None:
        """Every thing: clicks to reach 85/90% IoU, one prompt of each kind, its phrase with and
        without a click."""
        phrase_of = {sid: t for t, sid in scene.phrases}
        for s in scene.things:
            gt = scene.mask(s.id)
            reached = clicks_to_reach(predictor, features, gt, rng, vocab)
            for t in self.noc:
                self.noc[t].append(reached[t])
            for kind in PROMPT_KINDS:
                prompt = sample_prompt(kind, gt, rng)
                pred = predictor.decode(features, Prompts(spatial=(prompt,)), vocabulary=vocab).masks[0].mask
                self.one[kind].append(iou(gt, pred))
            if s.id in phrase_of:
                text = phrase_of[s.id]
                alone = predictor.decode(features, Prompts(text=text), vocabulary=vocab).masks[0].mask
                click: Point = ps.sample_point(gt, rng)
                both = predictor.decode(features, Prompts(text=text, spatial=(click,)), vocabulary=vocab).masks[0].mask
                self.text_alone.append(iou(gt, alone))
                self.text_click.append(iou(gt, both))

    def result(self, images: int, seconds: float) -> dict[str, float]:
        pq, sq, rq = self.acc.pq()
        return {
            "pq": pq, "sq": sq, "rq": rq, "miou": self.acc.miou(),
            "ciou": float(self.ref_inter / max(self.ref_union, 1.0)),
            "referring_miou": float(np.mean(self.ref_ious)) if self.ref_ious else 0.0,
            "noc85": float(np.mean(self.noc[0.85])), "noc90": float(np.mean(self.noc[0.9])),
            **{f"iou1_{k}": float(np.mean(v)) for k, v in self.one.items()},
            "text_iou": float(np.mean(self.text_alone)) if self.text_alone else 0.0,
            "text_click_iou": float(np.mean(self.text_click)) if self.text_click else 0.0,
            "images": images, "phrases": len(self.ref_ious), "objects": len(self.noc[0.9]),
            "seconds": seconds,
        }


def format_table(r: dict[str, float]) -> str:
    rows = [
        ("Generic", f"PQ {100 * r['pq']:.1f} (SQ {100 * r['sq']:.1f}, RQ {100 * r['rq']:.1f})   mIoU {100 * r['miou']:.1f}"),
        ("Referring", f"cIoU {100 * r['ciou']:.1f}   mIoU {100 * r['referring_miou']:.1f}   ({r['phrases']} phrases)"),
        ("Interactive", f"NoC85 {r['noc85']:.2f}   NoC90 {r['noc90']:.2f}   ({r['objects']} objects)"),
        ("1-IoU", "   ".join(f"{k} {100 * r[f'iou1_{k}']:.1f}" for k in PROMPT_KINDS)),
        ("Composed", f"text {100 * r['text_iou']:.1f}   text + click {100 * r['text_click_iou']:.1f}"),
    ]
    return "\n".join(f"{name:<12} {value}" for name, value in rows)
