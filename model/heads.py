"""Prediction heads applied to the decoder's queries after every round.

- `decoder_norm` then `class_embed` (hidden -> joint text space): the query's concept
  embedding; class logits are its scaled cosine with vocabulary embeddings;
- `mask_embed` (3-layer MLP): the mask embedding; mask logits are its dot product with
  the stride-4 `mask_features`.
Attention masks for the next decoder layer only need the masks at that layer's feature
level: `LevelResampler` computes them from the few stride-4 rows and columns that bilinear
down-sampling reads, instead of the whole stride-4 map.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
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


def _bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of PyTorch's bilinear resize (align_corners=False)."""
    scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = (src - i0.to(torch.float64)).to(torch.float32)
    return i0, i1, 1.0 - w1, w1


class LevelResampler:
    """Mask logits at a level size, from mask embeddings, exactly as bilinear(einsum(e, F)).

    Built once per (feature map, level size): it gathers the rows/columns of `mask_features`
    that the bilinear taps read and keeps the interpolation matrices, so a call costs
    N x C x (rows x cols) instead of N x C x H x W.
    """

    def __init__(self, mask_features: torch.Tensor, size: tuple[int, int]) -> None:
        """mask_features: B x C x H x W."""
        _, _, h, w = mask_features.shape
        oy, ox = size
        y0, y1, wy0, wy1 = _bilinear_taps(h, oy)
        x0, x1, wx0, wx1 = _bilinear_taps(w, ox)
        rows = torch.unique(torch.cat([y0, y1]))
        cols = torch.unique(torch.cat([x0, x1]))
        row_pos = torch.full((h,), -1, dtype=torch.long)
        row_pos[rows] = torch.arange(len(rows))
        col_pos = torch.full((w,), -1, dtype=torch.long)
        col_pos[cols] = torch.arange(len(cols))
        dtype, device = mask_features.dtype, mask_features.device
        ry = torch.zeros(oy, len(rows), dtype=torch.float32)
        ry[torch.arange(oy), row_pos[y0]] += wy0
        ry[torch.arange(oy), row_pos[y1]] += wy1
        rx = torch.zeros(ox, len(cols), dtype=torch.float32)
        rx[torch.arange(ox), col_pos[x0]] += wx0
        rx[torch.arange(ox), col_pos[x1]] += wx1
        self.ry = ry.to(dtype=dtype, device=device)
        self.rx_t = rx.t().contiguous().to(dtype=dtype, device=device)
        sub = mask_features
        if len(rows) < h:
            sub = sub.index_select(2, rows.to(device))
        if len(cols) < w:
            sub = sub.index_select(3, cols.to(device))
        self.sub = sub
        self.size = size

    def __call__(self, mask_emb: torch.Tensor) -> torch.Tensor:
        """mask_emb B x N x C -> B x N x oy x ox mask logits."""
        sub = torch.einsum("bqc,bchw->bqhw", mask_emb, self.sub)
        return torch.matmul(torch.matmul(self.ry, sub), self.rx_t)
