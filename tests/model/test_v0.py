"""seem-focalt-v0 / seem-focall-v0 (the seem_v0 decoder) through the predictor API, checked
against the v0 reference fixture (tests/fixtures/reference/v0-tiny: reference outputs for a
tiny v0 configuration). `seem parity` checks the decoder itself (test_reference_fixtures.py);
these check that the predictor takes v0's routes: one prompt per pass with every object
query as a spatial query, and a referring region's point features as the prompt."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model import MaskPrompt, Prompts, ReferringRegion, SeemPredictor
from model.build import get_config
from model.checkpoint import load_checkpoint
from model.config import load_config_file
from model.seem import Seem

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "v0-tiny"
ATOL = 2e-4  # seem parity's tolerance


@pytest.fixture(scope="module")
def v0_predictor() -> SeemPredictor:
    cfg = load_config_file(FIXTURE / "config.yaml")
    cfg = cfg.replace(inference=dataclasses.replace(cfg.inference, resize_shortest_edge=None))  # as the fixture
    model = Seem(cfg)
    load_checkpoint(model, FIXTURE / "weights.safetensors")
    return SeemPredictor(model, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.load(FIXTURE / "inputs.npz")["image"]


def case(name: str) -> dict:
    return dict(np.load(FIXTURE / f"{name}.npz"))


def masks_of(d: dict, key: str = "pos_mask") -> tuple[MaskPrompt, ...]:
    return tuple(MaskPrompt(m) for m in d[key] if m.any())


def test_the_v0_models_are_registered_with_the_v0_decoder() -> None:
    v1 = get_config("seem-focalt-v1")
    for name in ("seem-focalt-v0", "seem-focall-v0"):
        cfg = get_config(name)
        assert cfg.decoder.variant == "v0" and cfg.decoder.queries_per_prompt == cfg.decoder.num_queries == 101
    # Same weights layout, other computation: cached v1 features must not be taken for v0's.
    assert get_config("seem-focalt-v0").fingerprint() != v1.fingerprint()
    assert get_config("seem-focalt-v0").replace(decoder=v1.decoder, name=v1.name).fingerprint() == v1.fingerprint()


def test_a_referring_region_takes_the_reference_token_route(v0_predictor, image) -> None:
    """A region on another image segments the target as the reference's refimg route does:
    the mask logits equal the reference's to parity tolerance."""
    d = case("spatial_refimg")
    features, ref_features = v0_predictor.encode([image, d["ref_image"]])
    assert v0_predictor.referring_route == "tokens"
    seg = v0_predictor.decode(features, Prompts(referring=(ReferringRegion(ref_features, masks_of(d)),)))
    assert torch.allclose(seg.memory, torch.from_numpy(d["prev_mask"]), atol=ATOL)
    assert seg.masks[0].mask.shape == image.shape[:2] and seg.masks[0].mask.any()


def test_clicks_and_two_masks_match_the_reference_one_prompt_per_pass(v0_predictor, image) -> None:
    """Positive masks of one target merge into v0's one prompt; several targets decode as
    separate passes, each equal to the reference's pass for that prompt alone."""
    point, two, box = case("spatial_point"), case("spatial_two_masks"), case("spatial_box")
    # The box's 280 pixels are more than the point limits: v0 draws a random subset, so the
    # predictor is seeded as the reference's call was (a single click draws nothing).
    for d, others in ((two, [point]), (box, [])):
        seeded = SeemPredictor(v0_predictor.model, device="cpu", seed=int(d["rng_seed"]), model_id=v0_predictor.model_id)
        features = seeded.encode([image])[0]
        segs = seeded.decode_many(features, [Prompts(spatial=masks_of(x)) for x in [d, *others]])
        for seg, x in zip(segs, [d, *others]):
            assert torch.allclose(seg.memory, torch.from_numpy(x["prev_mask"]), atol=ATOL)
