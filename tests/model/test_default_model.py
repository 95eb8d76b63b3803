"""The shipped seem-tiny, through the predictor API only, on a held-out Shapes World scene.

Checks what a user of the default model sees: the bundled weights load without a download,
and on a scene the training never saw a phrase and a click on an object each give its mask
(IoU >= 0.8 with the ground truth); a click's label names the shape more often than chance;
a region of one scene finds the same kind of object in another.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model import Point, Prompts, ReferringRegion
from model.build import DEFAULT_WEIGHTS
from model.predictor import SeemPredictor
from training.prompt_sampling import inner_distance, iou, sample_box, sample_point
from training.shapes_world import default_vocabulary, generate_scene, split_seeds

# A test-split scene (never generated during training) and its largest thing with a phrase.
SCENE_SEED = split_seeds("test", 12)[6]
IOU_GOAL = 0.8


@pytest.fixture(scope="module")
def shipped():
    assert DEFAULT_WEIGHTS["seem-tiny"].exists(), "model/weights/seem-tiny.safetensors is not in the checkout"
    predictor = SeemPredictor.from_pretrained("seem-tiny")  # the default weights, as every command uses them
    scene = generate_scene(SCENE_SEED)
    return predictor, scene, predictor.encode([scene.image])[0]


def _deepest_point(mask: np.ndarray, positive: bool = True) -> Point:
    """A click on the pixel deepest inside `mask` (the first one when several tie)."""
    y, x = np.unravel_index(int(np.argmax(inner_distance(mask))), mask.shape)
    return Point(float(x), float(y), positive)


def _target(scene):  # noqa: ANN001, ANN202
    things = [t for t in sorted(scene.things, key=lambda t: -t.area) if scene.phrases_for(t.id)]
    assert things, "the scene has no thing with an unambiguous phrase"
    return things[0]


def test_a_phrase_segments_the_object_it_names(shipped) -> None:
    predictor, scene, features = shipped
    thing = _target(scene)
    phrase = scene.phrases_for(thing.id)[0]
    result = predictor.decode(features, Prompts(text=phrase), vocabulary=default_vocabulary())
    mask = result.masks[0]
    assert mask.mask.shape == scene.image.shape[:2]
    score = iou(mask.mask, scene.mask(thing.id))
    assert score >= IOU_GOAL, f"{phrase!r}: IoU {score:.3f}"
    assert mask.label in default_vocabulary().names


def test_a_click_segments_the_object_under_it(shipped) -> None:
    predictor, scene, features = shipped
    thing = _target(scene)
    gt = scene.mask(thing.id)
    # The click simulator's first click: the point deepest inside the object.
    click = _deepest_point(gt)
    result = predictor.decode(features, Prompts(spatial=(click,)), vocabulary=default_vocabulary())
    score = iou(result.masks[0].mask, gt)
    assert score >= IOU_GOAL, f"click at ({click.x:g}, {click.y:g}) on {thing.category}: IoU {score:.3f}"
    assert result.masks[0].label in default_vocabulary().names


# The label of a clicked mask is that of the object query segmenting the same object
# (seem-tiny's `prompted_mask_labels="object_match"`): the shipped v3 names 40 of the 46
# things on these 12 scenes right (v2: 34; v2's spatial queries' own class head, never
# trained, named 21). 8 thing categories, so chance is ~12%. The floor is the level reached
# less a margin.
CLICK_LABEL_REACHED = 0.75


def test_click_labels_name_the_shape_more_often_than_chance(shipped) -> None:
    predictor = shipped[0]
    rng = np.random.default_rng(0)
    right = total = 0
    for seed in split_seeds("test", 12):
        scene = generate_scene(seed)
        features = predictor.encode([scene.image])[0]
        for thing in scene.things:
            click = sample_point(scene.mask(thing.id), rng)
            result = predictor.decode(features, Prompts(spatial=(click,)), vocabulary=default_vocabulary())
            right += result.masks[0].label == thing.category
            total += 1
    print(f"click labels right: {right}/{total}")
    assert right / total >= CLICK_LABEL_REACHED, f"{right}/{total}"


# A box around a thing in one held-out scene, sent as a referring region to another scene
# that has a thing of the same shape: the top mask should be one of those things. The goal
# is 0.75; the floor is what seem-tiny reaches on these pairs less a margin (docs/training.md).
# v3: 33 of 44 (v2: 23 of 44); the floor sits REFERRING_SLACK under the goal (one pair
# flipping on another CPU's floating point must not fail the test).
REFERRING_GOAL, REFERRING_SLACK = 0.75, 0.10


def test_a_region_of_one_scene_finds_the_same_kind_of_object_in_another(shipped) -> None:
    predictor = shipped[0]
    rng = np.random.default_rng(1)
    scenes = [generate_scene(seed) for seed in split_seeds("test", 12)]
    features = predictor.encode([s.image for s in scenes])
    hits = trials = 0
    for i, source in enumerate(scenes):
        for thing in source.things:
            # The next scene (cyclically) that has a thing of the same shape is the target.
            j = next((j % len(scenes) for j in range(i + 1, i + len(scenes))
                      if any(t.category == thing.category for t in scenes[j % len(scenes)].things)), None)
            if j is None:
                continue
            region = ReferringRegion(features[i], (sample_box(source.mask(thing.id), rng),))
            top = predictor.decode(features[j], Prompts(referring=(region,))).masks[0].mask
            same_kind = [scenes[j].mask(t.id) for t in scenes[j].things if t.category == thing.category]
            hits += max(iou(top, gt) for gt in same_kind) >= 0.5
            trials += 1
    print(f"referring regions: {hits}/{trials} found a thing of the same shape (IoU >= 0.5)")
    assert trials >= 30
    assert hits / trials >= REFERRING_GOAL - REFERRING_SLACK, f"{hits}/{trials}, goal {REFERRING_GOAL}"


def test_random_weights_do_not_pass_the_same_check() -> None:
    """The IoU goal above is not met by chance: an untrained seem-tiny misses it."""
    scene = generate_scene(SCENE_SEED)
    predictor = SeemPredictor.from_pretrained("seem-tiny", weights=None)
    features = predictor.encode([scene.image])[0]
    thing = _target(scene)
    result = predictor.decode(features, Prompts(text=scene.phrases_for(thing.id)[0]))
    assert iou(result.masks[0].mask, scene.mask(thing.id)) < IOU_GOAL


def test_a_negative_click_on_a_look_alike_removes_it(shipped) -> None:
    """Two identical large red diamonds (a test-split scene): the shipped decoder answers a
    click on either with both, and a negative click on the other one takes it out — by
    `drop_negated_pieces` (docs/design-notes.md), since the network alone leaves it in."""
    predictor = shipped[0]
    scene = generate_scene(split_seeds("test", 4)[3])
    twins = [t for t in scene.things if t.category == "diamond" and t.attributes.color == "red"]
    assert len(twins) == 2
    features = predictor.encode([scene.image])[0]
    for target, other in (twins, twins[::-1]):
        gt, twin = scene.mask(target.id), scene.mask(other.id)
        click, negative = _deepest_point(gt), _deepest_point(twin, positive=False)
        first = predictor.decode(features, Prompts(spatial=(click,)))
        second = predictor.decode(features, Prompts(spatial=(click, negative)), previous_mask=first.memory)
        assert iou(second.masks[0].mask, gt) >= 0.9, iou(second.masks[0].mask, gt)
        left = (second.masks[0].mask & twin).sum() / twin.sum()
        assert left <= 0.05, f"{left:.1%} of the twin still in the mask"
        # The memory handed back agrees with the mask shown (the twin is out of it too), and a
        # third round with the same clicks keeps the twin out.
        memory = torch.nn.functional.interpolate(second.memory, scale_factor=4, mode="bilinear")[0, 0]
        h, w = features.input_size
        shown = np.asarray(Image.fromarray(twin).resize((w, h), Image.NEAREST))
        assert (memory[:h, :w][torch.from_numpy(shown)] > 0).float().mean() <= 0.05
        third = predictor.decode(features, Prompts(spatial=(click, negative)), previous_mask=second.memory)
        again = (third.masks[0].mask & twin).sum() / twin.sum()
        assert again <= 0.05, f"{again:.1%} of the twin back in the third round's mask"
