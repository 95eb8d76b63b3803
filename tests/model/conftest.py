"""Shared fixtures of the model tests: small models with random weights, built once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import SeemPredictor, build_model

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "seem-reference"
TINY_FIXTURE = REFERENCE / "tiny"


@pytest.fixture(scope="session")
def tiny_model():
    """seem-tiny's architecture with random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    return build_model("seem-tiny", weights=None)


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model):
    return SeemPredictor(tiny_model, device="cpu")


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A smooth synthetic RGB image with a few blobs (H 180 x W 240)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:240]
    img = np.stack([120 + 60 * np.sin(xx / 30.0), 100 + 50 * np.cos(yy / 25.0), 90 + 0 * xx], -1)
    for _ in range(4):
        cy, cx, r = rng.integers(30, 150), rng.integers(30, 210), rng.integers(12, 30)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)
