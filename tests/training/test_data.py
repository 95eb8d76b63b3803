"""Training batches from Shapes World: determinism and the look-alike scenes."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from model.build import get_config
from training.data import Batch, ShapesWorldBatches, lookalike_pairs
from training.shapes_world import generate_scene, split_seeds


def _fingerprint(batch: Batch) -> str:
    h = hashlib.sha256()
    for s in batch.samples:
        for t in (s.image, s.masks, s.labels, s.prompt_pos, s.prompt_neg):
            h.update(t.numpy().tobytes())
        h.update(repr((s.phrases, s.phrase_targets, [int(x) for x in s.prompt_targets])).encode())
    return h.hexdigest()[:16]


def test_batches_without_lookalikes_are_the_ones_earlier_runs_saw() -> None:
    # Recorded before look-alike scenes existed: a run resumed from a v1-v3 checkpoint, or
    # started with their command, sees the same scenes and prompts.
    data = ShapesWorldBatches(get_config("seem-tiny"), 4, seed=7)
    assert [_fingerprint(data.batch(i)) for i in range(3)] == [
        "7fd3535a73e77040", "242b42cb84d58da8", "d5359a052a59c8e7"]


def test_lookalike_pairs_name_things_of_the_same_shape_and_colour() -> None:
    found = 0
    for seed in split_seeds("val", 60):
        scene = generate_scene(seed)
        pairs = lookalike_pairs(scene)
        keys = [(t.attributes.shape, t.attributes.color) for t in scene.things]
        # Exactly the things that share shape and colour with another thing are listed.
        assert sorted(pairs) == sorted(t.id for t, k in zip(scene.things, keys) if keys.count(k) > 1)
        for a, b in pairs.items():
            ta, tb = scene.segment(a).attributes, scene.segment(b).attributes
            assert a != b and (ta.shape, ta.color) == (tb.shape, tb.color)
        found += bool(pairs)
    assert found >= 2, "too few look-alike scenes among 60 to test anything"


def test_lookalike_batches_prompt_one_twin_and_click_the_other_negative() -> None:
    data = ShapesWorldBatches(get_config("seem-tiny"), 8, seed=3, lookalike_fraction=1.0)
    with_negative = 0
    prompts = 0
    for index in range(2):
        for s in data.batch(index).samples:
            assert s.prompt_targets, "a look-alike scene without visual prompts"
            image = s.image.permute(1, 2, 0).numpy()
            for j, t in enumerate(s.prompt_targets):
                prompts += 1
                target = s.masks[t].numpy()
                twins = [k for k in range(len(s.masks)) if k != t and s.labels[k] == s.labels[t]
                         and np.abs(image[s.masks[k].numpy()].mean(0) - image[target].mean(0)).max() < 30]
                assert twins, "prompted thing has no thing of the same class and colour"
                pos, neg = s.prompt_pos[j].numpy(), s.prompt_neg[j].numpy()
                assert (pos & target).any(), "the positive prompt misses the prompted thing"  # a box covers background too
                if neg.any():
                    with_negative += 1
                    assert any((neg & s.masks[k].numpy()).sum() >= 0.9 * neg.sum() for k in twins), \
                        "the negative click is not on the look-alike"
    # About half the prompts carry a negative click on the twin.
    assert 0.2 * prompts <= with_negative <= 0.8 * prompts, (with_negative, prompts)


def test_lookalike_fraction_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="lookalike_fraction"):
        ShapesWorldBatches(get_config("seem-tiny"), 2, lookalike_fraction=1.5)
