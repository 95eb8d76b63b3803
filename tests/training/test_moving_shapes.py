"""Moving Shapes World (the video benchmark) and the DAVIS measures it is scored with."""
from __future__ import annotations

import numpy as np
import pytest

from training.moving_shapes import KINDS, generate_sequence, video_seeds
from training.video_eval import boundary_f, region_j, switched


def test_sequences_are_pure_functions_of_the_seed() -> None:
    seed = video_seeds("test", 1)[0]
    a, b = generate_sequence(seed, "crossing", frames=6), generate_sequence(seed, "crossing", frames=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.visible, b.visible)
    assert not set(video_seeds("test", 50)) & set(video_seeds("val", 50))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_its_difficulty(kind: str) -> None:
    seq = generate_sequence(video_seeds("val", 5)[KINDS.index(kind)], kind, frames=12)
    area = seq.target.reshape(len(seq.frames), -1).sum(1)
    t0 = seq.target[0]
    assert area[0] > 200 and not (t0[0].any() or t0[-1].any() or t0[:, 0].any() or t0[:, -1].any())
    centres = [np.argwhere(m).mean(0) for m in seq.target if m.any()]
    assert np.hypot(*(centres[-1] - centres[0])) > 5 or kind == "exit"  # everything moves
    if kind == "exit":
        assert area[-1] == 0 and area[-3:].sum() == 0  # gone for the last frames
    if kind == "scale":
        assert max(area) / min(area) > 1.4
    if kind == "occlusion":
        assert min(area) < 0.8 * area[0]  # partly hidden on some frame
    if kind == "crossing":
        twin = seq.attributes[seq.lookalike]
        assert (twin.shape, twin.color) == (seq.attributes[0].shape, seq.attributes[0].color)
        near = [np.hypot(*(np.argwhere(seq.target[t]).mean(0) - np.argwhere(seq.visible[t, seq.lookalike]).mean(0)))
                for t in range(12) if seq.target[t].any() and seq.visible[t, seq.lookalike].any()]
        assert min(near) < 2 * seq.attributes[0].radius  # the look-alike does come close


def test_davis_measures() -> None:
    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True
    empty = np.zeros_like(gt)
    assert region_j(gt, gt) == 1.0 and boundary_f(gt, gt) == 1.0
    assert region_j(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0  # gone and said so
    assert region_j(empty, gt) == 0.0 and boundary_f(gt, empty) == 0.0
    shifted = np.roll(gt, 1, axis=1)  # within the 0.008 x diagonal = 2 px boundary tolerance
    assert boundary_f(shifted, gt) == 1.0 and region_j(shifted, gt) == pytest.approx(39 / 41)
    far = np.roll(gt, 10, axis=1)
    assert boundary_f(far, gt) < 0.6
    twin = np.zeros_like(gt)
    twin[70:95, 20:60] = True  # apart from the target
    assert switched(twin, gt, twin) and not switched(gt, gt, twin)
    touching = np.roll(gt, 30, axis=0)  # overlapping: pixels there are no evidence of identity
    assert not switched(touching, gt, touching)
