"""Prediction heads applied to the decoder's queries after every round.

- `decoder_norm` then `class_embed` (hidden -> joint text space): the query's concept
  embedding; class logits are its scaled cosine with vocabulary embeddings;
- `mask_embed` (3-layer MLP): the mask embedding; mask logits are its dot product with
  the stride-4 `mask_features`.
Attention masks for the next decoder layer only need the masks at that layer's feature
level: `LevelResampler` takes the dot product with mask features resized to that level,
instead of computing the whole stride-4 map and resizing it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .mask_axes import MaskAxes
from .transformer import MLP


@dataclass
class HeadOutput:
    """Head outputs for a set of queries: B x N x D embeddings and optional masks."""

    class_emb: torch.Tensor  # B x N x dim_proj
    mask_emb: torch.Tensor  # B x N x mask_dim
    masks: torch.Tensor | None  # B x N x H/4 x W/4 logits (None when not requested)


class PredictionHeads(nn.Module):
    def __init__(self, hidden_dim: int, dim_proj: int, mask_dim: int) -> None:
        super().__init__()
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Parameter(torch.empty(hidden_dim, dim_proj))
        nn.init.trunc_normal_(self.class_embed, std=0.02)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # The last layer of `mask_embed` folded with some mask axes (`_mask_embed_in_frame`).
        self._folded_last_layers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, queries: torch.Tensor, mask_features: torch.Tensor | None,
                mask_axes: MaskAxes | None = None) -> HeadOutput:
        """queries B x N x hidden; mask_features B x M x H x W (None: skip the stride-4 masks),
        in the frame of `mask_axes` (None: channels), the frame the mask embeddings are given in."""
        x = self.decoder_norm(queries)
        class_emb = x @ self.class_embed
        mask_emb = self.mask_embed(x) if mask_axes is None else self._mask_embed_in_frame(x, mask_axes)
        masks = None if mask_features is None else self.mask_logits(mask_emb, mask_features)
        return HeadOutput(class_emb, mask_emb, masks)

    def _mask_embed_in_frame(self, x: torch.Tensor, mask_axes: MaskAxes) -> torch.Tensor:
        """`mask_axes.in_frame(self.mask_embed(x))` with the rotation folded into the MLP's last
        layer (U' W, U' b): the same cost as the plain head, not an extra C x C product per query."""
        *hidden, last = self.mask_embed.layers
        for layer in hidden:
            x = F.relu(layer(x))
        key = (mask_axes.id, last.weight.device, last.weight.dtype, last.weight._version, last.weight.data_ptr())
        folded = self._folded_last_layers.get(key)
        if folded is None:
            axes = mask_axes.axes.to(last.weight)
            folded = (axes.T @ last.weight.detach(), last.bias.detach() @ axes)
            self._folded_last_layers.clear()  # one frame at a time is the common case; stale weights never stay
            self._folded_last_layers[key] = folded
        return F.linear(x, *folded)

    @staticmethod
    def mask_logits(mask_emb: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """B x N x C mask embeddings, B x C x H x W mask features -> B x N x H x W logits."""
        return torch.einsum("bqc,bchw->bqhw", mask_emb, mask_features)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)` for B x C x H x W maps.

    SEEM's levels are the stride-4 map shrunk by exactly 2, 4 or 8 per axis. For an even
    factor k every output pixel then sits halfway between two input pixels on each axis
    (source coordinate k * i + (k - 1) / 2), so it is the mean of a 2 x 2 block of the input:
    strided slices instead of torch's kernel, which on 512 channels shrunk 4x or 8x spends
    ~100 ms of one core (mostly a channels-last copy of the whole input) against ~5 ms here.
    Any other size goes to `F.interpolate`.
    """
    (h, w), (oh, ow) = x.shape[-2:], size
    if h % oh or w % ow or h // oh != w // ow or (h // oh) % 2:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    k = h // oh
    first = k // 2 - 1  # the block is pixels k*i + first and k*i + first + 1 on each axis
    rows = x[..., first::k, :] + x[..., first + 1::k, :]
    return (rows[..., first::k] + rows[..., first + 1::k]) * 0.25


class LevelResampler:
    """Mask logits at a level size, from mask embeddings, equal to bilinear(einsum(e, F)).

    Bilinear resizing is linear in each channel, so it commutes with the dot product over
    channels: resizing `mask_features` once per (feature map, level size) and taking the
    dot product there costs N x C x (level pixels) per round instead of N x C x (stride-4
    pixels), 4x less for SEEM's levels (each one is at most half the stride-4 size per axis).
    """

    def __init__(self, mask_features: torch.Tensor, size: tuple[int, int]) -> None:
        """mask_features: B x C x H x W."""
        self.resized = resize_bilinear(mask_features, size)
        self.size = size

    def __call__(self, mask_emb: torch.Tensor) -> torch.Tensor:
        """mask_emb B x N x C -> B x N x oy x ox mask logits."""
        return torch.einsum("bqc,bchw->bqhw", mask_emb, self.resized)
