"""`seem eval --video`: DAVIS measures on held-out Moving Shapes World sequences.

J is the region similarity (IoU; 1 when prediction and truth are both empty), F the
boundary F-measure (DAVIS 2017: boundaries matched within ceil(0.008 x image diagonal)
pixels), both averaged over the frames after the prompted frame 0 (DAVIS leaves the given
first frame out too) and then over sequences; J&F is their mean. An identity switch is a
crossing sequence in which, on some frame where the two are apart (not touching), more of
the predicted mask lies on the look-alike than on the target and that is over half of it.
"""
from __future__ import annotations

import math
import time
from typing import Sequence as Seq

import numpy as np
from scipy import ndimage

from model.predictor import SeemPredictor
from model.types import Prompts
from model.video import TrackerConfig, VideoPredictor

from .moving_shapes import ALL_KINDS, CROSSING_KINDS, DEFAULT_FRAMES, KINDS, Sequence, generate_sequence, video_seeds
from .shapes_world import default_vocabulary

PROMPT_KINDS = ("box", "click", "text")
METHODS = ("per_frame", "track")
METHOD_NAMES = {"per_frame": "authors' (every frame from frame 0's prompt)", "track": "ours (motion + appearance + memory)"}


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure of two H x W bool masks."""
    tolerance = max(1, math.ceil(bound_th * math.hypot(*gt.shape)))
    disk = np.hypot(*np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1]) <= tolerance
    pb, gb = _boundary(pred.astype(bool)), _boundary(gt.astype(bool))
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = (pb & ndimage.binary_dilation(gb, disk)).sum() / n_p
    recall = (gb & ndimage.binary_dilation(pb, disk)).sum() / n_g
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def switched(pred: np.ndarray, target: np.ndarray, lookalike: np.ndarray) -> bool:
    """The mask follows the look-alike: with the two apart (not touching, the target in view),
    more of the mask lies on the look-alike than on the target, and that is over half of it.
    While one hides the other, whose pixels are whose is no evidence of identity."""
    apart = target.any() and not (ndimage.binary_dilation(target, iterations=2) & lookalike).any()
    on_twin = int((pred & lookalike).sum())
    return bool(apart) and on_twin > int((pred & target).sum()) and on_twin > 0.5 * int(pred.sum())


def sequence_prompt(seq: Sequence, kind: str) -> Prompts | None:
    """The frame-0 prompt of one kind for the sequence's target (None: no phrase names it)."""
    if kind == "box":
        return Prompts(spatial=(seq.box(0),))
    if kind == "click":
        return Prompts(spatial=(seq.click(0),))
    if kind == "text":
        return Prompts(text=seq.phrase) if seq.phrase else None
    raise ValueError(f"unknown prompt kind {kind!r} (one of {', '.join(PROMPT_KINDS)})")


def _score_sequence(predictor: SeemPredictor, seq: Sequence, runs: dict[tuple[str, str], Prompts]) -> dict:
    """Every (method, prompt kind) session over one sequence, each frame encoded once."""
    vocab = default_vocabulary()
    sessions = {}
    for (method, kind), prompts in runs.items():
        s = VideoPredictor(predictor, TrackerConfig(method=method)).init_session(vocabulary=vocab)  # type: ignore[arg-type]
        s.add_prompts(0, 1, prompts)
        sessions[(method, kind)] = s
    js = {k: [] for k in runs}
    fs = {k: [] for k in runs}
    swaps = {k: False for k in runs}
    ambiguous = {k: False for k in runs}
    for t, image in enumerate(seq.frames):
        features = predictor.encode([image])[0]
        for key, s in sessions.items():
            answer = s.track(image, features).objects[0]
            mask = answer.mask
            if t == 0:
                ambiguous[key] = answer.ambiguous
                continue
            js[key].append(region_j(mask, seq.target[t]))
            fs[key].append(boundary_f(mask, seq.target[t]))
            if seq.lookalike is not None and switched(mask, seq.target[t], seq.visible[t, seq.lookalike]):
                swaps[key] = True
    return {k: (float(np.mean(js[k])), float(np.mean(fs[k])), swaps[k], ambiguous[k]) for k in runs}


def evaluate_video(predictor: SeemPredictor, *, sequences: int = 20, split: str = "test", start: int = 0,
                   frames: int = DEFAULT_FRAMES, prompt_kinds: Seq[str] = PROMPT_KINDS, methods: Seq[str] = METHODS,
                   kinds: Seq[str] = KINDS, progress: bool = True) -> dict:
    """{method: {prompt kind: {J, F, JF, sequences, crossing, switch_rate, ambiguous, by_kind}}}
    and "rows": per sequence [method, prompt kind, sequence kind, J, F, switched, ambiguous]
    (ambiguous: the session warned that frame 0's phrase named several instances).

    Sequence i of the split gets kind kinds[i % len(kinds)]: with every kind (the default)
    every 5 sequences hold one of each; `kinds=("crossing",)` scores identity on crossings only."""
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown sequence kinds {bad} (one of {', '.join(ALL_KINDS)})")
    from tqdm import tqdm

    started = time.time()
    per: dict[tuple[str, str], list[tuple[str, float, float, bool, bool]]] = \
        {(m, k): [] for m in methods for k in prompt_kinds}
    seeds = video_seeds(split, sequences, start)  # type: ignore[arg-type]
    for i, seed in enumerate(tqdm(seeds, desc="video eval", disable=not progress, unit="seq")):
        seq = generate_sequence(seed, kinds[(start + i) % len(kinds)], frames=frames)
        runs = {}
        for kind in prompt_kinds:
            prompts = sequence_prompt(seq, kind)
            if prompts is not None:
                runs.update({(m, kind): prompts for m in methods})
        for key, row in _score_sequence(predictor, seq, runs).items():
            per[key].append((seq.kind, *row))
    result: dict = {"seconds": time.time() - started, "frames": frames, "split": split,
                    "rows": [[m, k, *row] for (m, k), rows in per.items() for row in rows]}
    return summarize(result, per)


def summarize(result: dict, per: dict[tuple[str, str], list[tuple[str, float, float, bool, bool]]]) -> dict:
    """Means per method and prompt kind from per-sequence rows (kind, J, F, switched, ambiguous)."""
    for (method, kind), rows in per.items():
        if not rows:
            continue
        crossing = [r for r in rows if r[0] in CROSSING_KINDS]
        result.setdefault(method, {})[kind] = {
            "J": float(np.mean([r[1] for r in rows])), "F": float(np.mean([r[2] for r in rows])),
            "JF": float(np.mean([(r[1] + r[2]) / 2 for r in rows])), "sequences": len(rows),
            "crossing": len(crossing),
            "switch_rate": float(np.mean([r[3] for r in crossing])) if crossing else 0.0,
            "ambiguous": int(sum(r[4] for r in rows)),
            "by_kind": {k: float(np.mean([(r[1] + r[2]) / 2 for r in rows if r[0] == k]))
                        for k in ALL_KINDS if any(r[0] == k for r in rows)},
        }
    return result


def format_video_table(r: dict) -> str:
    lines = [f"{'method':<46} {'prompt':<6} {'J':>6} {'F':>6} {'J&F':>6} {'id switch':>10} {'ambiguous':>9}  J&F by kind"]
    for method in METHODS:
        for kind, v in r.get(method, {}).items():
            kinds = " ".join(f"{k} {100 * x:.1f}" for k, x in v["by_kind"].items())
            lines.append(f"{METHOD_NAMES[method]:<46} {kind:<6} {100 * v['J']:6.1f} {100 * v['F']:6.1f} "
                         f"{100 * v['JF']:6.1f} {v['switch_rate'] * 100:5.0f}% of {v['crossing']:<2} {v['ambiguous']:>9}  {kinds}")
    return "\n".join(lines)
