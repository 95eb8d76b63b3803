"""Typed configuration of SEEM v1 and its reader for the reference's YAML format.

One dataclass per network part; `SeemConfig` gathers them with the inference settings.
Hyper-parameters of the named models live in `model/build.py`; this module only knows how
to represent them, read a config file (ours or the reference's) and hash them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class FocalConfig:
    """Focal modulation backbone.

    `variant` "focal_dw" is SEEM's Focal-T v1 block (depthwise 3x3 convs before the
    modulation and before the MLP, post-LN after each residual); "focal" is the plain
    FocalNet block used by Focal-L (post-LN inside each branch, no depthwise convs).
    """

    variant: str = "focal_dw"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    focal_levels: tuple[int, ...] = (3, 3, 3, 3)
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)
    mlp_ratio: float = 4.0
    patch_size: int = 4
    use_conv_embed: bool = True
    patch_norm: bool = True
    use_postln: bool = True
    use_postln_in_modulation: bool = False
    use_layerscale: bool = True
    scaling_modulator: bool = True
    drop_path_rate: float = 0.3

    def __post_init__(self) -> None:
        if self.variant not in ("focal_dw", "focal"):
            raise ValueError(f"unknown Focal variant {self.variant!r} (expected 'focal_dw' or 'focal')")
        if not (len(self.depths) == len(self.focal_levels) == len(self.focal_windows) == 4):
            raise ValueError("Focal backbone needs 4 stages (depths, focal_levels, focal_windows)")

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class ViTConfig:
    """SAM's ViT image encoder as SEEM's `vit` backbone builds it.

    Patch embedding, absolute positions sized for `img_size` (so the padded input must be
    exactly `img_size` square), blocks with decomposed relative positions that attend
    within `window_size` windows except at `global_attn_indexes`, and a SimpleFPN neck
    that turns the stride-16 tokens into res2..res5 (strides 4, 8, 16, 32) with
    `neck_out_dims` channels. `variant` is the discriminator in config files.
    """

    variant: str = "vit"
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_out_dims: tuple[int, ...] = (128, 256, 512, 1024)

    def __post_init__(self) -> None:
        if self.variant != "vit":
            raise ValueError(f"ViTConfig.variant must be 'vit', not {self.variant!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        if len(self.neck_out_dims) != 4:
            raise ValueError("neck_out_dims needs 4 channel counts (res2..res5)")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(f"global_attn_indexes {self.global_attn_indexes} outside 0..{self.depth - 1}")

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return self.neck_out_dims


# The reference's `MODEL.BACKBONE.VIT.SIZE` presets (its backbone hard-codes them by name).
VIT_SIZES: dict[str, dict[str, Any]] = {
    "base": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Transformer-encoder FPN: a transformer on res5, then a top-down FPN to stride 4."""

    conv_dim: int = 512
    mask_dim: int = 512
    num_groups: int = 32  # GroupNorm groups ("GN")
    transformer_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 2048
    pre_norm: bool = False


@dataclass(frozen=True)
class DeformPixelDecoderConfig:
    """Multi-scale deformable-attention pixel decoder (`transformer_encoder_deform`).

    A deformable transformer encoder over res3..res5 jointly, then one FPN step to res2
    (stride 4); `mask_features` is a 1x1 conv. `kind` is the discriminator in config files.
    """

    kind: str = "deform"
    conv_dim: int = 512
    mask_dim: int = 512
    num_groups: int = 32  # GroupNorm groups ("GN"; the input projections hard-code 32 in the reference)
    transformer_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 1024  # the reference fixes 1024 for the deformable encoder
    num_points: int = 4  # sampling points per head and level
    transformer_levels: int = 3  # res3, res4, res5

    def __post_init__(self) -> None:
        if self.kind != "deform":
            raise ValueError(f"DeformPixelDecoderConfig.kind must be 'deform', not {self.kind!r}")
        if self.transformer_levels != 3:
            raise ValueError("the deformable pixel decoder is implemented for res3..res5 (3 levels)")
        if self.conv_dim % self.nheads:
            raise ValueError(f"conv_dim ({self.conv_dim}) must be divisible by nheads ({self.nheads})")


@dataclass(frozen=True)
class TextConfig:
    """CLIP-like causal text transformer."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class DecoderConfig:
    """The SEEM decoder: `seem_v1` (variant "v1") or `seem_v0` (variant "v0", model/decoder_v0.py).

    v0 turns every object query into a spatial query of its one prompt, so there
    `queries_per_prompt` is `num_queries` (the reference's QUERY_NUMBER is unused by v0).
    """

    hidden_dim: int = 512
    num_queries: int = 101
    nheads: int = 8
    dim_feedforward: int = 2048
    num_layers: int = 9  # the reference's DEC_LAYERS minus one (the learnable-query round)
    pre_norm: bool = False
    mask_dim: int = 512
    dim_proj: int = 512
    spatial_memories: int = 32
    queries_per_prompt: int = 3
    max_spatial_len: tuple[int, ...] = (512, 512, 512, 512)
    num_feature_levels: int = 3
    variant: str = "v1"

    def __post_init__(self) -> None:
        if self.variant not in ("v1", "v0"):
            raise ValueError(f"decoder variant must be 'v1' or 'v0', not {self.variant!r}")
        if self.variant == "v0" and self.queries_per_prompt != self.num_queries:
            raise ValueError(f"the v0 decoder's queries_per_prompt is num_queries ({self.num_queries}), "
                             f"not {self.queries_per_prompt}")
        if self.dim_proj != self.hidden_dim:
            # Grounding tokens (projected text space) are concatenated with the queries.
            raise ValueError(f"dim_proj ({self.dim_proj}) must equal hidden_dim ({self.hidden_dim})")


@dataclass(frozen=True)
class InferenceConfig:
    """Pre- and post-processing, as the reference's demo and evaluation do them."""

    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    resize_shortest_edge: int | None = 512  # None: feed the image at its own size
    resize_max_size: int | None = None
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    detections_per_image: int = 100
    grounding_temperature_max: float = 100.0  # the reference clamps exp(logit_scale) for grounding
    # Where a prompted (clicked, grounded) mask's label comes from: "query", its own query's
    # class embedding (the reference); "object_match", the object query whose mask is the same
    # object — for models whose prompted queries never had a class loss (seem-tiny).
    prompted_mask_labels: str = "query"
    # A connected piece of a prompted mask that a negative prompt touches and no positive
    # prompt does is dropped (and cleared from the memory for the next round): the user said
    # "not this" about a piece that nothing they asked for is part of. Off = the network's
    # mask as it is (the reference); seem-tiny turns it on because its decoder can answer a
    # click with every thing that looks the same and then ignore a negative click on one.
    drop_negated_pieces: bool = False

    def __post_init__(self) -> None:
        if self.prompted_mask_labels not in ("query", "object_match"):
            raise ValueError(f"prompted_mask_labels must be 'query' or 'object_match', not {self.prompted_mask_labels!r}")


@dataclass(frozen=True)
class SeemConfig:
    """A whole SEEM v1 model."""

    name: str = "custom"
    backbone: FocalConfig | ViTConfig = field(default_factory=FocalConfig)
    pixel_decoder: PixelDecoderConfig | DeformPixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Names used by panoptic inference when the caller gives no vocabulary.
    default_vocabulary: tuple[str, ...] = ()
    default_stuff: tuple[str, ...] = ()

    def replace(self, **changes: Any) -> "SeemConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SeemConfig":
        def part(kind: type, values: dict[str, Any] | None) -> Any:
            values = dict(values or {})
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
            for f in dataclasses.fields(kind):
                if f.name in values and isinstance(values[f.name], list):
                    values[f.name] = tuple(values[f.name])
            return kind(**values)

        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(
            name=data.get("name", "custom"),
            backbone=part(ViTConfig if (data.get("backbone") or {}).get("variant") == "vit" else FocalConfig,
                          data.get("backbone")),
            pixel_decoder=part(DeformPixelDecoderConfig if (data.get("pixel_decoder") or {}).get("kind") == "deform"
                               else PixelDecoderConfig, data.get("pixel_decoder")),
            text=part(TextConfig, data.get("text")),
            decoder=part(DecoderConfig, data.get("decoder")),
            inference=part(InferenceConfig, data.get("inference")),
            default_vocabulary=tuple(data.get("default_vocabulary", ())),
            default_stuff=tuple(data.get("default_stuff", ())),
        )

    def fingerprint(self) -> str:
        """Stable hash of everything that changes what the model computes."""
        data = self.to_dict()
        if data["decoder"]["variant"] == "v1":
            # The field came after v1 model ids were stored: v1 configs hash as before.
            del data["decoder"]["variant"]
        payload = json.dumps(data, sort_keys=True, default=list).encode()
        return hashlib.sha256(payload).hexdigest()


def from_reference_yaml(data: dict[str, Any], name: str = "custom") -> SeemConfig:
    """Reads the reference's resolved YAML (e.g. the fixtures' config.yaml).

    Only what changes the computation is read. The demo resize (shortest edge 512) is
    not part of the reference's model config; fixtures feed images at their own size,
    so the caller decides `inference.resize_shortest_edge` (a ViT model is capped at its
    `img_size`, the only input size its absolute positions fit).
    """
    model = data["MODEL"]
    if model.get("NAME") not in ("seem_model_v1", "seem_model_v0", "seem_model_demo"):
        raise ValueError(f"unsupported model {model.get('NAME')!r}: only SEEM v1 (and v0/demo weights) are supported")
    text = model["TEXT"]
    backbone = _backbone_from_yaml(model["BACKBONE"])
    return SeemConfig(
        name=name,
        backbone=backbone,
        pixel_decoder=_pixel_decoder_from_yaml(model["ENCODER"], model["DECODER"]),
        text=TextConfig(
            context_length=int(text["CONTEXT_LENGTH"]),
            width=int(text["WIDTH"]),
            heads=int(text["HEADS"]),
            layers=int(text["LAYERS"]),
        ),
        decoder=_decoder_from_yaml(data),
        inference=_inference_from_yaml(data, backbone),
    )


def _decoder_from_yaml(data: dict[str, Any]) -> DecoderConfig:
    model = data["MODEL"]
    dec = model["DECODER"]
    arch = data.get("ATTENTION_ARCH", {})
    # seem_v0 has its own decoder semantics; the demo decoder (seem_demo) is read as v1.
    v0 = dec.get("NAME") == "seem_v0"
    num_queries = int(dec["NUM_OBJECT_QUERIES"])
    return DecoderConfig(
        hidden_dim=int(dec["HIDDEN_DIM"]),
        num_queries=num_queries,
        nheads=int(dec["NHEADS"]),
        dim_feedforward=int(dec["DIM_FEEDFORWARD"]),
        num_layers=int(dec["DEC_LAYERS"]) - 1,
        pre_norm=bool(dec.get("PRE_NORM", False)),
        mask_dim=int(model["ENCODER"]["MASK_DIM"]),
        dim_proj=int(model["DIM_PROJ"]),
        spatial_memories=int(arch.get("SPATIAL_MEMORIES", 32)),
        queries_per_prompt=num_queries if v0 else int(arch.get("QUERY_NUMBER", 3)),
        max_spatial_len=tuple(dec.get("MAX_SPATIAL_LEN", (512, 512, 512, 512))),
        variant="v0" if v0 else "v1",
    )


def _inference_from_yaml(data: dict[str, Any], backbone: FocalConfig | ViTConfig) -> InferenceConfig:
    dec = data["MODEL"]["DECODER"]
    test = dec.get("TEST", {})
    inp = data.get("INPUT", {})
    is_vit = isinstance(backbone, ViTConfig)
    return InferenceConfig(
        pixel_mean=tuple(inp.get("PIXEL_MEAN", (123.675, 116.28, 103.53))),
        pixel_std=tuple(inp.get("PIXEL_STD", (58.395, 57.12, 57.375))),
        size_divisibility=int(dec.get("SIZE_DIVISIBILITY", 32)),
        resize_shortest_edge=min(512, backbone.img_size) if is_vit else 512,
        resize_max_size=backbone.img_size if is_vit else None,
        object_mask_threshold=float(test.get("OBJECT_MASK_THRESHOLD", 0.8)),
        overlap_threshold=float(test.get("OVERLAP_THRESHOLD", 0.8)),
        detections_per_image=int(data.get("TEST", {}).get("DETECTIONS_PER_IMAGE", 100)),
    )


def _backbone_from_yaml(backbone: dict[str, Any]) -> FocalConfig | ViTConfig:
    if backbone["NAME"] == "vit":
        return _vit_from_yaml(backbone.get("VIT", {}))
    if backbone["NAME"] not in ("focal_dw", "focal"):
        raise ValueError(f"unsupported backbone {backbone['NAME']!r}: the Focal backbones and 'vit' are implemented")
    focal = backbone["FOCAL"]
    return FocalConfig(
        variant=backbone["NAME"],
        embed_dim=int(focal["EMBED_DIM"]),
        depths=tuple(focal["DEPTHS"]),
        focal_levels=tuple(focal["FOCAL_LEVELS"]),
        focal_windows=tuple(focal["FOCAL_WINDOWS"]),
        mlp_ratio=float(focal.get("MLP_RATIO", 4.0)),
        patch_size=int(focal.get("PATCH_SIZE", 4)),
        use_conv_embed=bool(focal.get("USE_CONV_EMBED", False)),
        patch_norm=bool(focal.get("PATCH_NORM", True)),
        use_postln=bool(focal.get("USE_POSTLN", False)),
        use_postln_in_modulation=bool(focal.get("USE_POSTLN_IN_MODULATION", False)),
        use_layerscale=bool(focal.get("USE_LAYERSCALE", False)),
        scaling_modulator=bool(focal.get("SCALING_MODULATOR", False)),
        drop_path_rate=float(focal.get("DROP_PATH_RATE", 0.0)),
    )


# Keys a config may add under MODEL.BACKBONE.VIT to describe a ViT other than the reference's
# named sizes (the project's tiny parity fixtures do; the reference reads only SIZE).
_VIT_OVERRIDES = {"IMG_SIZE": "img_size", "PATCH_SIZE": "patch_size", "EMBED_DIM": "embed_dim", "DEPTH": "depth",
                  "NUM_HEADS": "num_heads", "WINDOW_SIZE": "window_size",
                  "GLOBAL_ATTN_INDEXES": "global_attn_indexes", "NECK_OUT_DIMS": "neck_out_dims"}


def _vit_from_yaml(vit: dict[str, Any]) -> ViTConfig:
    size = vit.get("SIZE", "base")
    if size not in VIT_SIZES:
        raise ValueError(f"unsupported ViT size {size!r}: expected one of {sorted(VIT_SIZES)}")
    values: dict[str, Any] = dict(VIT_SIZES[size])
    for key, field_name in _VIT_OVERRIDES.items():
        if key in vit:
            value = vit[key]
            values[field_name] = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)
    return ViTConfig(**values)


def _pixel_decoder_from_yaml(encoder: dict[str, Any], dec: dict[str, Any]) -> PixelDecoderConfig | DeformPixelDecoderConfig:
    if encoder["NAME"] == "transformer_encoder_deform":
        levels = encoder.get("DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", ["res3", "res4", "res5"])
        if list(levels) != ["res3", "res4", "res5"] or int(encoder.get("COMMON_STRIDE", 4)) != 4:
            raise ValueError("the deformable pixel decoder is implemented for res3..res5 with common stride 4")
        return DeformPixelDecoderConfig(
            conv_dim=int(encoder["CONVS_DIM"]),
            mask_dim=int(encoder["MASK_DIM"]),
            transformer_layers=int(encoder["TRANSFORMER_ENC_LAYERS"]),
            nheads=int(dec["NHEADS"]),
        )
    if encoder["NAME"] != "transformer_encoder_fpn":
        raise ValueError(f"unsupported pixel decoder {encoder['NAME']!r}")
    return PixelDecoderConfig(
        conv_dim=int(encoder["CONVS_DIM"]),
        mask_dim=int(encoder["MASK_DIM"]),
        transformer_layers=int(encoder["TRANSFORMER_ENC_LAYERS"]),
        nheads=int(dec["NHEADS"]),
        dim_feedforward=int(dec["DIM_FEEDFORWARD"]),
        pre_norm=bool(dec.get("PRE_NORM", False)),
    )


def load_config_file(path: str | Path) -> SeemConfig:
    """A config file: ours (the keys of `SeemConfig`) or the reference's resolved YAML/JSON."""
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping")
    if "MODEL" in data:
        return from_reference_yaml(data, name=path.stem)
    return SeemConfig.from_dict(data)
