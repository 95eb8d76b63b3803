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

    def forward(self, queries: torch.Tensor, mask_features: torch.Tensor | None) -> HeadOutput:
        """queries B x N x hidden; mask_features B x M x H x W (None: skip the stride-4 masks)."""
        x = self.decoder_norm(queries)
        class_emb = x @ self.class_embed
        mask_emb = self.mask_embed(x)
        masks = None if mask_features is None else torch.einsum("bqc,bchw->bqhw", mask_emb, mask_features)
        return HeadOutput(class_emb, mask_emb, masks)


class LevelResampler:
    """Mask logits at a level size, from mask embeddings, equal to bilinear(einsum(e, F)).

    Bilinear resizing is linear in each channel, so it commutes with the dot product over
    channels: resizing `mask_features` once per (feature map, level size) and taking the
    dot product there costs N x C x (level pixels) per round instead of N x C x (stride-4
    pixels), 4x less for SEEM's levels (each one is at most half the stride-4 size per axis).
    """

    def __init__(self, mask_features: torch.Tensor, size: tuple[int, int]) -> None:
        """mask_features: B x C x H x W."""
        self.resized = F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
        self.size = size

    def __call__(self, mask_emb: torch.Tensor) -> torch.Tensor:
        """mask_emb B x N x C -> B x N x oy x ox mask logits."""
        return torch.einsum("bqc,bchw->bqhw", mask_emb, self.resized)
