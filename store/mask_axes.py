"""Format version 4's pieces: mask features quantised along a model's mask axes, and the axes
themselves, stored once per (store, model) rather than in every object.

Why along the axes (model.mask_axes): a mask logit is a mask embedding's dot product with the
features, so an error along an axis the embeddings barely use costs the masks almost
nothing. Component k gets the step S * rms * min(cap, sqrt(mean weight / weight_k)), rms the
features' root mean square: the steps that share the logits' squared error equally among the
components, which is the fewest bytes for that error at high rate (docs/benchmarks.md, "A
rotation weighted by the mask embeddings"), with `cap` bounding how much coarser than
S * rms a step may get.

Levels are coded as format 3's are (an int8 stream of differences, -128 = escape, the escaped
values apart) with three changes: the difference is with the level above except in the first
row, which takes the left neighbour's (the components are not centred, so a first row of raw
levels would mostly escape); escapes are int32 (the finest components need more than 16
bits); the offset of each component is its mean on the image.

An axes object `{model_id}/mask_axes/{id}.safetensors` holds `axes` (C x C float32) and
`weights` (C float32); `id` is their hash (`MaskAxes.id`), checked on read, and every
format-4 feature object names the id it was written along.
"""
from __future__ import annotations

import numpy as np
import torch

from model.mask_axes import MaskAxes
from storage import CorruptObject
from store.backends import check_model_id

__all__ = ["AXES_RELATIVE_STEP", "AXES_STEP_CAP", "MASK_AXES_FORMAT", "mask_axes_key", "quantize_components",
           "dequantize_components", "serialize_mask_axes", "deserialize_mask_axes"]

#: S, the step relative to the features' RMS, and the cap on how much coarser a component's
#: step may be (docs/benchmarks.md, "Format version 4": the choice and its drift per prompt type).
AXES_RELATIVE_STEP = 0.0045
AXES_STEP_CAP = 32.0
MASK_AXES_FORMAT = "seem-ray-mask-axes/1"
#: float32 holds every integer below 2^24 exactly, and the decoder sums levels in float32.
_MAX_LEVEL = 2**23


def mask_axes_key(model_id: str, axes_id: str) -> str:
    """The object key (relative to the store root) of a model's mask axes."""
    check_model_id(model_id)
    if not axes_id.isalnum():
        raise ValueError(f"invalid mask axes id {axes_id!r}")
    return f"{model_id}/mask_axes/{axes_id}.safetensors"


def component_steps(components: torch.Tensor, weights: torch.Tensor, relative_step: float,
                    cap: float) -> torch.Tensor:
    """Float32 step per component of C x ... `components` (see the module docstring)."""
    flat = components.to(torch.float64).reshape(components.shape[0], -1)
    rms = float(flat.square().mean().sqrt()) if flat.numel() else 0.0
    w = weights.to(torch.float64).clamp(min=float(weights.max()) * 1e-12 + 1e-30)
    step = relative_step * max(rms, 1e-12) * torch.clamp(torch.sqrt(w.mean() / w), max=cap)
    # Never so fine that a level leaves float32's exact integers.
    spread = (flat - flat.mean(1, keepdim=True)).abs().amax(1) if flat.shape[1] else torch.zeros_like(step)
    return torch.maximum(step, spread / _MAX_LEVEL).to(torch.float32)


def quantize_components(components: torch.Tensor, weights: torch.Tensor, relative_step: float = AXES_RELATIVE_STEP,
                        cap: float = AXES_STEP_CAP) -> dict[str, torch.Tensor]:
    """C x H x W components along the mask axes -> `""` the int8 residual stream (C x H x W),
    `.escapes` (int32), `.offset` and `.step` (float32 per component): value = level * step +
    offset, level = round((value - offset) / step)."""
    if components.dim() != 3 or components.shape[0] != weights.shape[0]:
        raise ValueError(f"components {tuple(components.shape)} do not match {weights.shape[0]} axes")
    flat = components.to(torch.float32).reshape(components.shape[0], -1)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("cannot quantise features with inf or nan values")
    offset = flat.to(torch.float64).mean(1).to(torch.float32) if flat.shape[1] else torch.zeros(flat.shape[0])
    step = component_steps(components, weights, relative_step, cap)
    levels = torch.round((flat - offset[:, None]) / step[:, None]).to(torch.int32).reshape(components.shape)
    residual = levels.clone()
    residual[:, 1:] -= levels[:, :-1]  # the level above
    residual[:, 0, 1:] -= levels[:, 0, :-1]  # first row: the left neighbour
    residual = residual.reshape(-1)
    escaped = (residual < -127) | (residual > 127)
    stream = torch.where(escaped, torch.full_like(residual, -128), residual).to(torch.int8)
    return {"": stream.reshape(components.shape), ".escapes": residual[escaped].contiguous(),
            ".offset": offset.contiguous(), ".step": step.contiguous()}


def dequantize_components(stream: torch.Tensor, escapes: torch.Tensor, offset: torch.Tensor,
                          step: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_components` (up to the rounding): float32 C x H x W components."""
    if stream.dtype != torch.int8 or stream.dim() != 3 or escapes.dtype != torch.int32 \
            or tuple(offset.shape) != tuple(stream.shape[:1]) or tuple(step.shape) != tuple(stream.shape[:1]):
        raise ValueError(f"component stream {tuple(stream.shape)} {stream.dtype} with escapes {escapes.dtype}")
    raw = stream.reshape(-1).numpy()
    levels = raw.astype(np.float32)  # exact: every level and partial sum is below 2^24
    where = np.flatnonzero(raw == -128) if escapes.numel() else np.empty(0, dtype=np.int64)
    if where.size != escapes.numel():
        raise ValueError(f"{where.size} escapes in the stream, {escapes.numel()} escaped values")
    levels[where] = escapes.numpy()
    rows = levels.reshape(stream.shape)
    np.cumsum(rows[:, 0], axis=1, out=rows[:, 0])
    for i in range(1, rows.shape[1]):  # the running sum over rows, one vectorised add per row
        rows[:, i] += rows[:, i - 1]
    return torch.from_numpy(levels).reshape(stream.shape).mul_(step.view(-1, 1, 1)).add_(offset.view(-1, 1, 1))


def serialize_mask_axes(axes: MaskAxes, model_id: str) -> bytes:
    """The axes object of `model_id` (safetensors; see the module docstring)."""
    from safetensors.torch import save

    meta = {"store.format": MASK_AXES_FORMAT, "model_id": model_id, "id": axes.id}
    return save({"axes": axes.axes.contiguous(), "weights": axes.weights.contiguous()}, metadata=meta)


def deserialize_mask_axes(data: bytes, *, uri: str, expect_id: str, expect_model_id: str) -> MaskAxes:
    """Verify and load an axes object: the tensors must hash to `expect_id`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from store.feature_store import _parse_header  # the framing checks feature objects get

    try:
        meta = _parse_header(data, uri).metadata
        tensors = load(bytes(data))
        axes = MaskAxes(tensors["axes"], tensors["weights"])
    except CorruptObject as e:
        raise CorruptObject(uri, f"unreadable mask axes: {e.reason}") from None
    except (SafetensorError, KeyError, ValueError, RuntimeError) as e:
        raise CorruptObject(uri, f"unreadable mask axes: {type(e).__name__}: {e}") from None
    if meta.get("store.format") != MASK_AXES_FORMAT or meta.get("model_id") != expect_model_id:
        raise CorruptObject(uri, f"not the mask axes of model {expect_model_id!r} (metadata {meta!r})")
    if axes.id != expect_id:
        raise CorruptObject(uri, f"mask axes hash to {axes.id}, expected {expect_id} (object damaged)")
    return axes
