"""Mask features behind one interface: the dense map, or the activation before its projection.

Every consumer of the stride-4 `mask_features` F (B x M x H x W) in the decoder is linear
in F: mask logits are dot products of mask embeddings with F, the levels' attention masks
are those logits on F resized to a level, and a visual prompt's embedding is the mean of F
sampled at its points. F itself is a convolution plus bias of the pixel decoder's last
activation y (`layer_1`'s ReLU output: >= 0, about half of it exactly 0), F = W * y + b,
with a 3 x 3 kernel in the FPN pixel decoder (Focal-T, seem-tiny) and a 1 x 1 one in the
deformable pixel decoder (SAM ViT-B). So each consumer can take y and fold W into the
few vectors it needs, instead of anyone computing F over the whole map (for Focal-T at
512 px: 512 x 512 x 9 x 128 x 128 multiply-adds, ~77 GFLOP, seconds of a CPU core).

- `DenseMaskFeatures`: F as a tensor; the operations the decoder has always run on it.
- `ProjectedMaskFeatures`: (y, W, b); equal to the dense ones on F = conv(y, W) + b up to
  float rounding. Its cost is the kernel's taps times the dense one's for logits (a 3 x 3
  kernel: 9x), which is what storing y instead of F trades for fewer stored bytes
  (docs/benchmarks.md, "Storing the activation before the projection").

Why a k x k projection still folds exactly: conv(y)[p] = sum over taps t of W_t y0[p + t]
with y0 = y zero-padded, i.e. conv(y) = sum_t W_t S_t(y), S_t(y) a shifted view of y0.
Resizing and bilinear sampling are linear per channel, so they apply to each S_t(y), and
a bilinear weight sum is 1, so the bias passes through both unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.heads import resize_bilinear
from model.visual_sampler import prompt_means, sample_at

__all__ = ["DenseMaskFeatures", "ProjectedMaskFeatures"]


class _StrideFourMap:
    """What both forms share: a B x channels x H x W stride-4 tensor and per-level caches."""

    def __init__(self, grid: torch.Tensor) -> None:
        self._grid = grid
        self._levels: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def batch(self) -> int:
        return int(self._grid.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self._grid.shape[-2:])


class DenseMaskFeatures(_StrideFourMap):
    """The stride-4 mask features as a B x M x H x W tensor."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__(features)
        self.features = features

    def logits(self, mask_emb: torch.Tensor) -> torch.Tensor:
        """B x N x M mask embeddings -> B x N x H x W stride-4 mask logits."""
        return torch.einsum("bqc,bchw->bqhw", mask_emb, self.features)

    def level_logits(self, mask_emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """B x N x M -> B x N x h x w: the logits resized (bilinearly) to a level's size."""
        if size not in self._levels:
            self._levels[size] = resize_bilinear(self.features, size)
        return torch.einsum("bqc,bchw->bqhw", mask_emb, self._levels[size])

    def prompt_means(self, coords: torch.Tensor, prompt: torch.Tensor, num_prompts: int,
                     empty_value: float = -1.0, image: int = 0) -> torch.Tensor:
        """The mean feature (num_prompts x M) of each prompt's points of batch item `image`
        (coords n x 2 normalised (y, x), as `sample_at`); `empty_value` for a prompt without any."""
        return prompt_means(sample_at(self.features[image], coords), prompt, num_prompts, empty_value)


class ProjectedMaskFeatures(_StrideFourMap):
    """Mask features kept as the activation y (B x C x H x W) and the projection that makes
    them (`weight` M x C x k x k with k odd, `bias` M; padding k // 2, as the pixel decoders'
    `mask_features` conv). Nothing here computes the M x H x W map."""

    def __init__(self, activation: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        k = weight.shape[-1]
        if weight.dim() != 4 or weight.shape[-2] != k or k % 2 == 0 or weight.shape[1] != activation.shape[1]:
            raise ValueError(f"projection {tuple(weight.shape)} does not fit activation {tuple(activation.shape)}")
        super().__init__(activation)
        self.activation, self.weight, self.bias = activation, weight, bias

    def _taps(self) -> list[torch.Tensor]:
        """S_t(y) for every tap t of the kernel, row-major (views of the zero-padded y)."""
        k, (h, w) = self.weight.shape[-1], self.size
        if k == 1:
            return [self.activation]
        padded = F.pad(self.activation, [k // 2] * 4)
        return [padded[..., dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)]

    def _folded(self, mask_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x N x M -> (the embeddings through W: B x N x C x k x k, e . b: B x N x 1 x 1)."""
        kernels = torch.einsum("bqm,mcij->bqcij", mask_emb, self.weight)
        return kernels, (mask_emb @ self.bias)[..., None, None]

    def logits(self, mask_emb: torch.Tensor) -> torch.Tensor:
        """As `DenseMaskFeatures.logits`: one convolution of y per batch item with the folded kernels."""
        kernels, offset = self._folded(mask_emb)
        pad = self.weight.shape[-1] // 2
        if pad == 0:  # a 1 x 1 projection: the dense map's product, on y
            return torch.einsum("bqc,bchw->bqhw", kernels[..., 0, 0], self.activation) + offset
        out = [F.conv2d(self.activation[i:i + 1], kernels[i], padding=pad)[0] for i in range(self.batch)]
        return torch.stack(out) + offset

    def level_logits(self, mask_emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """As `DenseMaskFeatures.level_logits`: every tap's view resized once per level size."""
        if size not in self._levels:  # B x C*taps x h*w, channel-major as the folded kernels
            taps = torch.stack([resize_bilinear(s, size) for s in self._taps()], 2)
            self._levels[size] = taps.flatten(1, 2).flatten(2)
        kernels, offset = self._folded(mask_emb)
        logits = torch.bmm(kernels.flatten(2), self._levels[size])  # one matrix product over C*taps
        return logits.view(*logits.shape[:2], *size) + offset

    def prompt_means(self, coords: torch.Tensor, prompt: torch.Tensor, num_prompts: int,
                     empty_value: float = -1.0, image: int = 0) -> torch.Tensor:
        """As `DenseMaskFeatures.prompt_means`: the taps' samples averaged, then projected."""
        taps = self._taps()
        means = torch.stack([prompt_means(sample_at(s[image], coords), prompt, num_prompts, 0.0) for s in taps], -1)
        projected = torch.einsum("pct,mct->pm", means, self.weight.flatten(-2)) + self.bias
        present = torch.bincount(prompt, minlength=num_prompts)[:, None] > 0
        return torch.where(present, projected, torch.full_like(projected, empty_value))
