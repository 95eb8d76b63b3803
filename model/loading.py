"""Which model a process runs, and loading it once: the one loader pipeline/ and serving/ share.

    predictor = load_predictor(ModelSpec("seem-tiny"))

This module imports no torch until a predictor is built, so a process that only needs
the spec (a job's driver, a CPU task) stays light.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .predictor import SeemPredictor
    from .transforms import PreparedImage

__all__ = ["ModelSpec", "load_predictor", "prepare_for"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model name or config file, its weights, device and seed.

    weights: "default" (the shipped weights; random ones with a warning where none ship),
    "random" or None (random initialisation), or a checkpoint path / s3:// URI.
    seed: the random initialisation's seed. Every process that builds the same spec gets
    the same weights and so the same model id (the id hashes the weights), which is what
    lets an encoder and its decoders, or a job's driver and its actors, agree.
    """

    name: str = "seem-tiny"
    weights: str | None = "default"
    device: str | None = None  # None: CUDA when the process sees a GPU, else CPU
    seed: int = 0

    def cache_key(self) -> tuple:
        return (self.name, self.weights, self.device, self.seed)


_predictors: dict[tuple, "SeemPredictor"] = {}
_lock = threading.Lock()


def load_predictor(spec: ModelSpec, *, cached: bool = True) -> "SeemPredictor":
    """A `SeemPredictor` for `spec`, built once per process when `cached`."""
    from .predictor import SeemPredictor

    with _lock:
        predictor = _predictors.get(spec.cache_key()) if cached else None
        if predictor is None:
            weights = None if spec.weights in (None, "random") else spec.weights
            predictor = SeemPredictor.from_pretrained(spec.name, weights=weights, init_seed=spec.seed,
                                                      device=spec.device)
            if cached:
                _predictors[spec.cache_key()] = predictor
    return predictor


@functools.lru_cache(maxsize=8)
def _resize_rule(model_name: str) -> tuple[int | None, int | None]:
    from .build import get_config

    inf = get_config(model_name).inference
    return inf.resize_shortest_edge, inf.resize_max_size


def prepare_for(model_name: str, image: "np.ndarray") -> "PreparedImage":
    """What `SeemPredictor.prepare` gives for model `model_name`, from its config alone (no
    weights): for processes that resize images before handing them to an encoder elsewhere."""
    from .transforms import prepare_image

    return prepare_image(image, *_resize_rule(model_name))
