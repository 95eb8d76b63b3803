"""The axes of a model's mask space, along which stored mask features can be kept (store format 4).

A mask logit is a mask embedding's dot product with `mask_features` (C channels at stride
4), so an error e in the features moves the logits of embedding m by m . e, and over the
embeddings a model produces by e' M e, M their second moment. M is far from isotropic (for
Focal-T its top axis holds ~60% of the trace; docs/benchmarks.md, "A rotation weighted by
the mask embeddings"): an error along the axes the embeddings barely use costs the masks
almost nothing. `MaskAxes` holds M's eigenvectors and eigenvalues ("weights"), measured
once per model from calibration decodes (`SeemPredictor.mask_axes`).

Features *in the frame* of some axes U (C x C, orthonormal columns) hold the components
r = U' f instead of the channels f. Every consumer of mask features is linear in them, so
the model reads such features without turning them back (which would cost a C x C product
over every stride-4 position, ~100 ms of one core for Focal-T at 512 px):

- mask logits: m . f = (U' m) . r, so the heads express mask embeddings in the frame
  (`in_frame`), and every mask-space vector of a decode is in the frame of its features;
- resized levels: bilinear resizing commutes with a rotation of the channels;
- prompt points: their mean feature is sampled from r, hence in the frame too, and only
  meets mask embeddings (also in the frame); a prompt side without points gets the frame's
  image of the "no points" vector (`empty_in_frame`).

Vectors move between frames with `change_frame` (a referring region on an image stored in
another frame). `None` stands for the channels themselves (no rotation) everywhere.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

__all__ = ["MaskAxes", "axes_from_embeddings", "change_frame", "empty_in_frame", "same_frame"]


@dataclass(frozen=True, eq=False)
class MaskAxes:
    """Orthonormal axes of a model's mask space (`axes`: C x C float32, column k the k-th axis,
    by falling weight) and how much the model's mask embeddings use each (`weights`: C
    float32, the eigenvalues of their second moment). `id` names them in a store."""

    axes: torch.Tensor
    weights: torch.Tensor
    id: str = field(init=False)

    def __post_init__(self) -> None:
        c = self.axes.shape[0]
        if self.axes.shape != (c, c) or self.weights.shape != (c,):
            raise ValueError(f"axes {tuple(self.axes.shape)} and weights {tuple(self.weights.shape)}: want C x C and C")
        if self.axes.dtype != torch.float32 or self.weights.dtype != torch.float32:
            raise ValueError("mask axes and weights are float32")
        if not bool(torch.isfinite(self.axes).all() and torch.isfinite(self.weights).all()):
            raise ValueError("mask axes with inf or nan values")
        gram = self.axes.double().T @ self.axes.double()
        if not torch.allclose(gram, torch.eye(c, dtype=torch.float64), atol=1e-4):
            raise ValueError("mask axes are not orthonormal")
        digest = hashlib.sha256(self.axes.contiguous().numpy().tobytes() + self.weights.contiguous().numpy().tobytes())
        object.__setattr__(self, "id", digest.hexdigest()[:32])

    @property
    def channels(self) -> int:
        return int(self.axes.shape[0])

    def components(self, mask_features: torch.Tensor) -> torch.Tensor:
        """C x H x W channels -> C x H x W components along the axes (U' f)."""
        c = mask_features.shape[0]
        return (self.axes.T.to(mask_features) @ mask_features.reshape(c, -1)).reshape(mask_features.shape)

    def channels_of(self, components: torch.Tensor) -> torch.Tensor:
        """Inverse of `components` (U r): for consumers outside the model that want channels."""
        c = components.shape[0]
        return (self.axes.to(components) @ components.reshape(c, -1)).reshape(components.shape)

    def in_frame(self, vectors: torch.Tensor) -> torch.Tensor:
        """... x C mask-space vectors (channels) -> their components along the axes (v U)."""
        return vectors @ self.axes.to(vectors)


def axes_from_embeddings(embeddings: torch.Tensor) -> MaskAxes:
    """N x C mask embeddings -> the eigenvectors and eigenvalues of their second moment, by
    falling eigenvalue; each axis signed so that its largest entry is positive (eigenvectors
    are only defined up to sign: this makes equal inputs give equal bytes)."""
    e = embeddings.detach().to("cpu", torch.float64).reshape(-1, embeddings.shape[-1])
    if e.shape[0] < 1 or not bool(torch.isfinite(e).all()):
        raise ValueError("need finite mask embeddings to measure the mask axes")
    weights, axes = torch.linalg.eigh(e.T @ e / e.shape[0])
    order = torch.argsort(weights, descending=True)
    weights, axes = weights[order].clamp(min=0), axes[:, order]
    peak = axes.abs().argmax(0)
    axes = axes * torch.sign(axes[peak, torch.arange(axes.shape[1])])[None]
    return MaskAxes(axes.to(torch.float32).contiguous(), weights.to(torch.float32).contiguous())


def same_frame(a: MaskAxes | None, b: MaskAxes | None) -> bool:
    """Whether two frames (None: channels) are the same axes."""
    return a is b or (a is not None and b is not None and a.id == b.id)


def change_frame(vectors: torch.Tensor, source: MaskAxes | None, target: MaskAxes | None) -> torch.Tensor:
    """... x C mask-space vectors in the frame of `source` -> the same vectors in `target`'s
    (None: channels)."""
    if same_frame(source, target):
        return vectors
    if source is not None:
        vectors = vectors @ source.axes.T.to(vectors)
    return vectors if target is None else target.in_frame(vectors)


def empty_in_frame(value: float, axes: MaskAxes, like: torch.Tensor) -> torch.Tensor:
    """The C-vector `value` * (1, ..., 1) (a prompt side without points) in the frame of `axes`,
    with `like`'s dtype and device."""
    return axes.in_frame(torch.full((axes.channels,), float(value), dtype=like.dtype, device=like.device))
