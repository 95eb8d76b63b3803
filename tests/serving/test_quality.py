"""Mask quality over HTTP on held-out Shapes World scenes with the trained seem-tiny.

Each prompt type alone, and a phrase + a click together, reach a mean IoU with the ground
truth; a second round with a negative click keeps or improves IoU; a region of one image
finds the same kind of object in another.

The goal is a mean IoU >= 0.8 for every prompt type and a referring hit rate >= 0.75; the
shipped seem-tiny v3 (docs/training.md) meets both. The referring floor is a little under
its goal (see REFERRING_SLACK), so that one trial flipping does not fail the test while a
real regression does.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from numpy.random import default_rng

from model.rle import decode_mask, encode_mask
from training import prompt_sampling as ps
from training.shapes_world import split_seeds

from .conftest import ServingEnv, needs_weights

pytestmark = needs_weights  # a checkout without the shipped weights (e.g. stripped of large files)

SCENES = split_seeds("test", 10)
THINGS_PER_SCENE = 2
IOU_GOAL = 0.8
# v3 on these objects: point 0.918, box 0.888, stroke 0.907, scribble 0.920, polygon 0.909,
# mask 0.917, text 0.894, text + point 0.920 (v2: text alone 0.777, v1 0.46).
# Referring: v3 13 of 17 (v2 with the same matching 11, with the first token route 2), counted
# before the cap of REFERRING_TRIALS pairs was enforced (a `break` left only the inner loop). The
# floor is a little under the goal: one trial flipping on another CPU's floating point
# would take 13/17 under 0.75.
REFERRING_GOAL, REFERRING_SLACK = 0.75, 0.05  # the floor is REFERRING_GOAL - REFERRING_SLACK
REFERRING_TRIALS = 16


def _objects(serving: ServingEnv):
    """(scene, image_id, thing segment) for up to THINGS_PER_SCENE things per held-out scene."""
    for seed in SCENES:
        scene, image_id = serving.scene(seed)
        for thing in sorted(scene.things, key=lambda t: -t.area)[:THINGS_PER_SCENE]:
            yield scene, image_id, thing


def _json(prompt) -> dict:  # noqa: ANN001 - a model.types prompt
    """A model.types prompt as the API's JSON."""
    from model.types import Box, Point, Polygon, Scribble

    if isinstance(prompt, Point):
        return {"type": "point", "xy": [prompt.x, prompt.y], "positive": prompt.positive}
    if isinstance(prompt, Box):
        return {"type": "box", "xyxy": [prompt.x0, prompt.y0, prompt.x1, prompt.y1]}
    if isinstance(prompt, Scribble):
        return {"type": "scribble", "path": [list(p) for p in prompt.path], "positive": prompt.positive}
    if isinstance(prompt, Polygon):
        return {"type": "polygon", "points": [list(p) for p in prompt.points], "positive": prompt.positive}
    raise AssertionError(prompt)


def _best_mask(serving: ServingEnv, body: dict) -> np.ndarray:
    r = serving.post_json("/v1/segment", body)
    assert r.status_code == 200, r.text
    return decode_mask(r.json()["masks"][0]["rle"])


def _prompts_for(kind: str, scene, thing, rng) -> list[dict]:  # noqa: ANN001
    gt = scene.mask(thing.id)
    if kind == "point":
        return [_json(ps.sample_point(gt, rng))]
    if kind == "box":
        return [_json(ps.sample_box(gt, rng))]
    if kind == "stroke":
        return [_json(ps.sample_stroke(gt, rng))]
    if kind == "scribble":
        return [_json(ps.sample_scribble(gt, rng))]
    if kind == "polygon":
        return [_json(ps.sample_polygon(gt, rng))]
    if kind == "mask":
        return [{"type": "mask", "rle": encode_mask(gt)}]
    if kind in ("text", "text+point"):
        phrases = scene.phrases_for(thing.id)
        if not phrases:
            return []
        text = [{"type": "text", "text": phrases[0]}]
        return text + ([_json(ps.sample_point(gt, rng))] if kind == "text+point" else [])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["point", "box", "stroke", "scribble", "polygon", "mask", "text", "text+point"])
def test_each_prompt_type_reaches_the_iou_goal(serving: ServingEnv, kind: str) -> None:
    rng = default_rng(1234)
    ious = []
    for scene, image_id, thing in _objects(serving):
        prompts = _prompts_for(kind, scene, thing, rng)
        if not prompts:  # a thing without an unambiguous phrase
            continue
        pred = _best_mask(serving, {"image_id": image_id, "prompts": prompts})
        ious.append(ps.iou(pred, scene.mask(thing.id)))
    assert len(ious) >= 8, f"too few {kind} cases"
    print(f"{kind}: mean IoU {np.mean(ious):.3f} over {len(ious)} objects")
    assert np.mean(ious) >= IOU_GOAL, f"{kind}: mean IoU {np.mean(ious):.3f} < {IOU_GOAL}"


# A spill a user can click into: the false positives reach this far (pixels) from their edge.
VISIBLE_SPILL_DEPTH = 5.0


def test_second_round_with_a_negative_click_keeps_or_improves_iou(serving: ServingEnv) -> None:
    rng = default_rng(99)
    first, second, spilled = [], [], []
    for scene, image_id, thing in _objects(serving):
        gt = scene.mask(thing.id)
        click = _json(ps.sample_point(gt, rng))
        pred1 = _best_mask(serving, {"image_id": image_id, "prompts": [click]})
        fp = pred1 & ~gt
        depth = 0.0
        if fp.any():  # as the click simulator does: the deepest point of the false positives
            dist = ps.inner_distance(fp)
            depth = float(dist.max())
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            negative = {"type": "point", "xy": [float(x), float(y)], "positive": False}
        else:  # nothing to remove: a negative click on the background must not hurt
            negative = _json(ps.sample_negative_point(gt, rng))
        pred2 = _best_mask(serving, {"image_id": image_id, "prompts": [click, negative],
                                     "previous_mask": encode_mask(pred1)})
        first.append(ps.iou(pred1, gt))
        second.append(ps.iou(pred2, gt))
        if depth >= VISIBLE_SPILL_DEPTH:
            spilled.append((thing.category, first[-1], second[-1]))
    print(f"round 1 mean IoU {np.mean(first):.3f}, round 2 {np.mean(second):.3f}; visible spills {spilled}")
    # The second round keeps or improves IoU, and where the first mask visibly spills out, the
    # negative click there fixes that object. The spills are one test scene with two
    # identical red diamonds: a click on either segments both (v2 and v3 alike), and v3's
    # network ignores the negative click on the other; seem-tiny's `drop_negated_pieces`
    # removes the piece the negative click is on (v3: 0.545 -> 0.982, 0.448 -> 0.982; mean
    # 0.918 -> 0.962; without it 0.918 -> 0.912). Negative clicks in 1-3 px slivers along
    # near-perfect masks (not a correction a user makes) still cost a little.
    assert np.mean(second) >= np.mean(first)
    assert spilled, "no first-round mask spilled out on these objects: the test shows nothing"
    assert all(b > a for _, a, b in spilled), spilled


def test_referring_region_finds_the_same_kind_of_object_in_another_image(serving: ServingEnv) -> None:
    rng = default_rng(5)
    by_category: dict[str, list] = defaultdict(list)
    for seed in SCENES:
        scene, image_id = serving.scene(seed)
        for thing in scene.things:
            by_category[thing.category].append((scene, image_id, thing))
    # Pairs of one kind from two scenes, at most REFERRING_TRIALS of them in all.
    pairs = [(category, src, dst) for category, items in sorted(by_category.items())
             for src, dst in zip(items, items[1:]) if src[0].seed != dst[0].seed][:REFERRING_TRIALS]
    hits, trials = 0, 0
    for category, (src, src_id, src_thing), (dst, dst_id, _) in pairs:
        region = _json(ps.sample_box(src.mask(src_thing.id), rng))
        pred = _best_mask(serving, {"image_id": dst_id, "prompts": [
            {"type": "referring", "image_id": src_id, "region": region}]})
        same_kind = [t for t in dst.things if t.category == category]
        trials += 1
        hits += max(ps.iou(pred, dst.mask(t.id)) for t in same_kind) >= 0.5
    assert trials >= 8
    print(f"referring: {hits}/{trials} found an object of the same kind (IoU >= 0.5)")
    assert hits / trials >= REFERRING_GOAL - REFERRING_SLACK, f"{hits}/{trials}; the goal is {REFERRING_GOAL}"
