"""SEEM in PyTorch: the network, its weights, and the predictor API.

    from model import SeemPredictor, Prompts, Point
    predictor = SeemPredictor.from_pretrained("seem-tiny")

This package never imports Ray or an HTTP stack; pipeline/ and serving/ use it through
`SeemPredictor` and the types in `model.types`.
"""
from .build import DEFAULT_MODEL, MODEL_REGISTRY, build_model, get_config
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import SeemConfig
from .predictor import Draws, PromptError, SeemPredictor
from .types import (Box, ImageFeatures, MaskPrompt, MaskResult, PanopticResult, Point, Polygon, Prompts,
                    ReferringRegion, Scribble, Segmentation, Vocabulary)


def build_predictor(name_or_path: str = DEFAULT_MODEL, weights: str | None = "default", **kwargs) -> SeemPredictor:
    """Shortcut for `SeemPredictor.from_pretrained`."""
    return SeemPredictor.from_pretrained(name_or_path, weights=weights, **kwargs)


__all__ = [
    "DEFAULT_MODEL", "MODEL_REGISTRY", "build_model", "build_predictor", "get_config", "load_checkpoint",
    "save_checkpoint", "CheckpointError", "SeemConfig", "SeemPredictor", "Draws", "PromptError",
    "Box", "ImageFeatures", "MaskPrompt", "MaskResult", "PanopticResult", "Point", "Polygon", "Prompts",
    "ReferringRegion", "Scribble", "Segmentation", "Vocabulary",
]
