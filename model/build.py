"""Named model configurations and builders.

`build_model("seem-focalt-v1")` gives the architecture of the official Focal-T v1
checkpoint (random weights until `load_checkpoint`); `build_model("seem-tiny")` the
project's own small model with its shipped weights; any config file (ours, or the
reference's YAML such as the fixtures' `config.yaml`) works too.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .coco_classes import COCO_PANOPTIC_CLASSES, COCO_STUFF_CLASSES
from .config import (DecoderConfig, DeformPixelDecoderConfig, FocalConfig, InferenceConfig, PixelDecoderConfig,
                     SeemConfig, TextConfig, ViTConfig, load_config_file)
from .shapes_classes import SHAPES_CATEGORIES, SHAPES_STUFF_CLASSES
from .seem import Seem

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The official v1 models: values from the reference's configs/seem/focal{t,l}_unicl_lang_v1.yaml,
# with the demo's resize (shortest edge 512) and object-mask threshold 0.8.
_COCO = dict(default_vocabulary=COCO_PANOPTIC_CLASSES, default_stuff=COCO_STUFF_CLASSES)
SEEM_FOCALT_V1 = SeemConfig(
    name="seem-focalt-v1",
    backbone=FocalConfig(variant="focal_dw", embed_dim=96, depths=(2, 2, 6, 2),
                         focal_levels=(3, 3, 3, 3), focal_windows=(3, 3, 3, 3)),
    **_COCO,
)
SEEM_FOCALL_V1 = SeemConfig(
    name="seem-focall-v1",
    backbone=FocalConfig(variant="focal", embed_dim=192, depths=(2, 2, 18, 2),
                         focal_levels=(4, 4, 4, 4), focal_windows=(3, 3, 3, 3)),
    **_COCO,
)

# The v0 models: the same configs (configs/seem/focal{t,l}_unicl_lang_v0.yaml differ from v1's in
# the model and decoder names only) with the seem_v0 decoder (model/decoder_v0.py).
_V0_DECODER = DecoderConfig(variant="v0", queries_per_prompt=DecoderConfig().num_queries)
SEEM_FOCALT_V0 = SEEM_FOCALT_V1.replace(name="seem-focalt-v0", decoder=_V0_DECODER)
SEEM_FOCALL_V0 = SEEM_FOCALL_V1.replace(name="seem-focall-v0", decoder=_V0_DECODER)

# SAM ViT-B v1 (configs/seem/samvitb_unicl_lang_v1.yaml): the ViT-B image encoder and the
# deformable pixel decoder in front of the same decoder. Its absolute positions fit one
# 1024 x 1024 input, so every image is padded to that square (SIZE_DIVISIBILITY 1024), after
# the config's test resize (shortest edge 1000, longest at most 1024).
SEEM_SAMVITB_V1 = SeemConfig(
    name="seem-samvitb-v1",
    backbone=ViTConfig(),
    pixel_decoder=DeformPixelDecoderConfig(conv_dim=512, mask_dim=512, transformer_layers=6, nheads=8),
    inference=InferenceConfig(size_divisibility=1024, resize_shortest_edge=1000, resize_max_size=1024),
    **_COCO,
)


def seem_tiny_config() -> SeemConfig:
    """seem-tiny: the same architecture with small dims, trained by the project on Shapes World."""
    return SeemConfig(
        name="seem-tiny",
        backbone=FocalConfig(variant="focal_dw", embed_dim=32, depths=(1, 1, 2, 1), focal_levels=(2, 2, 2, 2),
                             focal_windows=(3, 3, 3, 3), drop_path_rate=0.0),
        pixel_decoder=PixelDecoderConfig(conv_dim=64, mask_dim=64, num_groups=16, transformer_layers=1, nheads=4,
                                         dim_feedforward=256),
        text=TextConfig(width=64, heads=4, layers=2),
        decoder=DecoderConfig(hidden_dim=64, num_queries=24, nheads=4, dim_feedforward=256, num_layers=6,
                              mask_dim=64, dim_proj=64, spatial_memories=8, max_spatial_len=(128, 128, 128, 128)),
        # object_mask_threshold chosen for the shipped v3 weights on 80 validation-split scenes
        # (`seem eval --split val --seed 0 --images 80 --panoptic-thresholds ...`): PQ 0.916 from
        # 0.1 to 0.3, 0.915 at 0.4, 0.914 at 0.5 and 0.6 (docs/training.md).
        # Its spatial and grounding queries were trained without a class term, so a prompted
        # mask takes the label of the object query that segments the same object; a click on
        # one of two look-alike things can segment both, and a negative click on the other
        # then removes it (docs/design-notes.md).
        inference=InferenceConfig(resize_shortest_edge=256, resize_max_size=512, object_mask_threshold=0.3,
                                  prompted_mask_labels="object_match", drop_negated_pieces=True),
        default_vocabulary=SHAPES_CATEGORIES,
        default_stuff=tuple(sorted(SHAPES_STUFF_CLASSES)),
    )


MODEL_REGISTRY = {
    "seem-focalt-v1": lambda: SEEM_FOCALT_V1,
    "seem-focall-v1": lambda: SEEM_FOCALL_V1,
    "seem-samvitb-v1": lambda: SEEM_SAMVITB_V1,
    "seem-focalt-v0": lambda: SEEM_FOCALT_V0,
    "seem-focall-v0": lambda: SEEM_FOCALL_V0,
    "seem-tiny": seem_tiny_config,
}
DEFAULT_MODEL = "seem-tiny"
DEFAULT_WEIGHTS = {"seem-tiny": WEIGHTS_DIR / "seem-tiny.safetensors"}


def get_config(name_or_path: str | Path | SeemConfig) -> SeemConfig:
    """A registered name, a config file path, or a config object."""
    if isinstance(name_or_path, SeemConfig):
        return name_or_path
    key = str(name_or_path)
    if key in MODEL_REGISTRY:
        return MODEL_REGISTRY[key]()
    path = Path(key)
    if path.is_file():
        return load_config_file(path)
    raise ValueError(f"unknown model {key!r}: expected one of {sorted(MODEL_REGISTRY)} or a config file")


def build_model(name_or_path: str | Path | SeemConfig = DEFAULT_MODEL, weights: str | Path | None = "default",
                init_seed: int = 0) -> Seem:
    """Builds the network. `weights`: "default" (the shipped weights of a registered model,
    if any), None (random initialisation from `init_seed`), or a checkpoint path / s3:// URI."""
    cfg = get_config(name_or_path)
    # Random initialisation is seeded (without touching the caller's RNG state), so random
    # weights and their model id are the same in every process of a job.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = Seem(cfg)
    if weights == "default":
        weights = DEFAULT_WEIGHTS.get(cfg.name)
        if weights is not None and not Path(weights).is_file():
            log.warning("default weights for %s not found at %s; using random weights", cfg.name, weights)
            weights = None
    if weights is not None:
        load_checkpoint(model, weights)
    model.eval()
    return model
