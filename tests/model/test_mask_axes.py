"""Mask features kept along other axes (model/mask_axes.py, store format 4): every prompt type
decodes the same masks from rotated features as from the channels, without rotating them back."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model import Box, MaskPrompt, Point, Prompts, ReferringRegion, Scribble, SeemPredictor
from model.config import load_config_file
from model.mask_axes import MaskAxes, axes_from_embeddings, change_frame
from model.seem import Seem

V0_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "v0-tiny"


def random_axes(channels: int, seed: int) -> MaskAxes:
    """A random rotation: any orthonormal frame must give the same masks."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))
    return MaskAxes(q.to(torch.float32).contiguous(), torch.linspace(1.0, 0.0, channels))


def assert_same_segmentation(a, b) -> None:
    assert len(a.masks) == len(b.masks)
    for x, y in zip(a.masks, b.masks):
        # Rounding differs in the last bits, so a pixel whose logit is ~0 may flip.
        assert (x.mask != y.mask).mean() < 1e-3
        assert x.score == pytest.approx(y.score, rel=1e-3, abs=1e-4)
        assert x.label == y.label
    if a.memory is not None:
        torch.testing.assert_close(a.memory, b.memory, atol=2e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def frames(tiny_predictor, photo):
    features = tiny_predictor.encode([photo])[0]
    axes = random_axes(features.tensors["mask_features"].shape[0], seed=1)
    return features, features.in_frame(axes), axes


PROMPTS = {
    "click": Prompts(spatial=(Point(120, 80),)),
    "click + negative": Prompts(spatial=(Point(120, 80), Point(60, 40, positive=False))),
    "negative only": Prompts(spatial=(Point(60, 40, positive=False),)),  # no positive points: the empty mean
    "box": Prompts(spatial=(Box(30, 20, 150, 140),)),
    "scribble": Prompts(spatial=(Scribble(((40, 40), (80, 60), (120, 70))),)),
    "phrase": Prompts(text="the circle"),
    "click + phrase": Prompts(text="the circle", spatial=(Point(120, 80),)),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_every_prompt_type_reads_rotated_features_as_the_channels(tiny_predictor, frames, kind) -> None:
    channels, rotated, axes = frames
    assert rotated.mask_axes is axes
    assert not torch.allclose(rotated.tensors["mask_features"], channels.tensors["mask_features"], atol=1e-2)
    want = tiny_predictor.decode(channels, PROMPTS[kind], max_masks=3)
    got = tiny_predictor.decode(rotated, PROMPTS[kind], max_masks=3)
    assert_same_segmentation(want, got)


def test_a_memory_round_and_a_mask_prompt_on_rotated_features(tiny_predictor, frames, photo) -> None:
    channels, rotated, _ = frames
    first = tiny_predictor.decode(channels, PROMPTS["click"])
    second = Prompts(spatial=(Point(100, 100),))
    assert_same_segmentation(tiny_predictor.decode(channels, second, previous_mask=first.memory),
                             tiny_predictor.decode(rotated, second, previous_mask=first.memory))
    mask = np.zeros(photo.shape[:2], bool)
    mask[50:120, 60:160] = True
    prompt = Prompts(spatial=(MaskPrompt(mask),))
    assert_same_segmentation(tiny_predictor.decode(channels, prompt), tiny_predictor.decode(rotated, prompt))


def test_panoptic_and_instances_with_a_stored_or_a_computed_object_pass(tiny_predictor, frames) -> None:
    channels, rotated, _ = frames
    assert rotated.has_object_pass  # its object_mask_emb was moved into the frame with the features
    without_pass = dataclasses.replace(
        rotated, tensors={k: v for k, v in rotated.tensors.items() if not k.startswith("object_")})
    want = tiny_predictor.panoptic(channels)
    for features in (rotated, without_pass):
        got = tiny_predictor.panoptic(features)
        assert [s.label for s in got.segments] == [s.label for s in want.segments]
        assert (got.segment_map != want.segment_map).mean() < 1e-3
    want_inst = tiny_predictor.instances(channels)
    got_inst = tiny_predictor.instances(without_pass)
    assert [m.label for m in got_inst] == [m.label for m in want_inst]


def test_a_referring_region_on_an_image_in_another_frame(tiny_predictor, frames, photo) -> None:
    channels, rotated, _ = frames
    other = tiny_predictor.encode([photo[::-1].copy()])[0]
    region = (Box(40, 60, 140, 160),)
    want = tiny_predictor.decode(channels, Prompts(referring=(ReferringRegion(other, region),)), max_masks=2)
    other_rotated = other.in_frame(random_axes(other.tensors["mask_features"].shape[0], seed=2))
    for target, ref in ((rotated, other), (channels, other_rotated), (rotated, other_rotated)):
        got = tiny_predictor.decode(target, Prompts(referring=(ReferringRegion(ref, region),)), max_masks=2)
        assert_same_segmentation(want, got)


def test_v0_token_route_joins_a_region_of_another_frame() -> None:
    """v0 feeds a referring region's point features to the target's decoder as tokens; their
    mean features must land in the target's frame (`change_frame`)."""
    cfg = load_config_file(V0_FIXTURE / "config.yaml")
    predictor = SeemPredictor(Seem(cfg).eval(), device="cpu")
    image = np.load(V0_FIXTURE / "inputs.npz")["image"]
    target = predictor.encode([image])[0]
    ref = predictor.encode([image[:, ::-1].copy()])[0]
    c = target.tensors["mask_features"].shape[0]
    prompts = lambda r: Prompts(spatial=(Point(40, 40),), referring=(ReferringRegion(r, (Box(10, 10, 50, 50),)),))
    want = predictor.decode(target, prompts(ref))
    got = predictor.decode(target.in_frame(random_axes(c, 3)), prompts(ref.in_frame(random_axes(c, 4))))
    assert_same_segmentation(want, got)


def test_frames_round_trip_and_vectors_change_frames(frames) -> None:
    channels, rotated, axes = frames
    back = rotated.in_frame(None)
    assert back.mask_axes is None
    torch.testing.assert_close(back.tensors["mask_features"], channels.tensors["mask_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back.tensors["object_mask_emb"], channels.tensors["object_mask_emb"], atol=1e-4, rtol=1e-4)
    assert rotated.in_frame(axes) is rotated
    v = torch.randn(5, axes.channels)
    other = random_axes(axes.channels, 9)
    torch.testing.assert_close(change_frame(change_frame(v, None, axes), axes, other), other.in_frame(v), atol=1e-5, rtol=1e-5)


def test_axes_from_embeddings_orders_by_use_and_fixes_signs() -> None:
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([5.0, 0.1, 2.0, 0.5])
    emb = torch.randn(400, 4, generator=g) * scales
    axes = axes_from_embeddings(emb)
    assert axes.weights.tolist() == sorted(axes.weights.tolist(), reverse=True)
    assert int(axes.axes[:, 0].abs().argmax()) == 0 and int(axes.axes[:, 1].abs().argmax()) == 2  # most used first
    peaks = axes.axes.gather(0, axes.axes.abs().argmax(0)[None])
    assert bool((peaks > 0).all())
    assert axes_from_embeddings(-emb).id == axes.id  # the sign of an axis does not depend on the data's
    with pytest.raises(ValueError, match="orthonormal"):
        MaskAxes(torch.ones(4, 4), torch.ones(4))


def test_the_predictor_measures_its_mask_axes_once(tiny_predictor) -> None:
    axes = tiny_predictor.mask_axes()
    assert tiny_predictor.mask_axes() is axes
    c = tiny_predictor.cfg.decoder.mask_dim
    assert axes.axes.shape == (c, c) and float(axes.weights[0]) > float(axes.weights[-1]) >= 0
    # The mask embeddings are far from isotropic: the top quarter of the axes holds most of their energy.
    assert float(axes.weights[: c // 4].sum() / axes.weights.sum()) > 0.5
