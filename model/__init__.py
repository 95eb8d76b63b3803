"""SEEM in PyTorch: the network, its weights, and the predictor API.

    from model import SeemPredictor, Prompts, Point
    predictor = SeemPredictor.from_pretrained("seem-tiny")

This package never imports Ray or an HTTP stack; pipeline/ and serving/ use it through
`SeemPredictor` and the types in `model.types`. Names are imported on first use, so a
command-line tool that only needs `model.cli` does not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_MODEL": ".build", "MODEL_REGISTRY": ".build", "build_model": ".build", "get_config": ".build",
    "CheckpointError": ".checkpoint", "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "SeemConfig": ".config",
    "MaskAxes": ".mask_axes",
    "Draws": ".predictor", "PromptError": ".predictor", "SeemPredictor": ".predictor",
    **{name: ".types" for name in ("Box", "ImageFeatures", "MaskPrompt", "MaskResult", "PanopticResult", "PanopticSegment", "Point",
                                    "Polygon", "Prompts", "ReferringRegion", "Scribble", "Segmentation", "Vocabulary")},
}
__all__ = sorted([*_EXPORTS, "build_predictor"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'model' has no attribute {name!r}")


def build_predictor(name_or_path: str = "seem-tiny", weights: str | None = "default", **kwargs: Any) -> "SeemPredictor":
    """Shortcut for `SeemPredictor.from_pretrained`."""
    from .predictor import SeemPredictor

    return SeemPredictor.from_pretrained(name_or_path, weights=weights, **kwargs)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .build import DEFAULT_MODEL, MODEL_REGISTRY, build_model, get_config  # noqa: F401
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: F401
    from .config import SeemConfig  # noqa: F401
    from .mask_axes import MaskAxes  # noqa: F401
    from .predictor import Draws, PromptError, SeemPredictor  # noqa: F401
    from .types import (Box, ImageFeatures, MaskPrompt, MaskResult, PanopticResult, Point, Polygon,  # noqa: F401
                        Prompts, ReferringRegion, Scribble, Segmentation, Vocabulary)
