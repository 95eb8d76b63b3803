"""Transformer building blocks shared by the pixel decoder and the SEEM decoder.

All tensors are batch-first (B x N x C). `MultiheadAttention` keeps the parameter names
of `torch.nn.MultiheadAttention` (in_proj_weight, in_proj_bias, out_proj) so official
checkpoints load unchanged, and adds the two behaviours SEEM needs:
- a fully blocked attention row yields a zero update (the reference's self-attention
  applies `nan_to_num` after the softmax);
- for few queries against a long memory (a click on cached features), attention is
  computed in the memory's input space instead of projecting every key and value:
  q.(W_k x + b_k) = (W_k^T q).x + q.b_k, and the q.b_k term is constant along a row so
  the softmax drops it; likewise sum_j p_j (W_v x_j + b_v) = W_v (sum_j p_j x_j) + b_v * sum_j p_j.
  Same mathematics, a fraction of the work when heads * queries is well below the width
  (a click's few queries against an image level, or against a box's 512 spatial tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Normalised 2-D sine positional encoding (DETR style), returned B x C x H x W.

    Depends only on the map's size, so it is cached per (H, W, dtype, device).
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        key = (h, w, x.dtype, x.device)
        pos = self._cache.get(key)
        if pos is None:
            pos = self._compute(h, w, x.dtype, x.device)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = pos
        return pos.expand(b, -1, -1, -1)

    def _compute(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        ones = torch.ones((1, h, w), dtype=dtype, device=device)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=dtype, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).contiguous()


class MultiheadAttention(nn.Module):
    """Multi-head attention, batch-first, boolean masks with True = blocked.

    `attn_mask` is B x 1 x Nq x Nk or B x heads x Nq x Nk (or None). Rows blocked
    everywhere produce zero attention output (then the output projection's bias).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, *, blocked_rows: bool = True,
                kept_projections: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """query B x Nq x E, key/value B x Nk x E -> B x Nq x E.

        blocked_rows=False: the caller guarantees that no row of `attn_mask` is blocked
        everywhere, so the softmax has no NaN row to clear (saves a pass over the scores).
        kept_projections: a dict the caller keeps for this (key, value) pair, e.g. one image's
        feature level in one decoder layer. When this call projects the keys and values (many
        queries), it takes them from there or leaves them there for the next call; it never
        changes which form the call takes, so results do not depend on what was kept.
        """
        e = self.embed_dim
        w_q, w_k, w_v = self.in_proj_weight.split(e)
        b_q, b_k, b_v = self.in_proj_bias.split(e)
        nq, nk = query.shape[1], key.shape[1]
        q = self._split(F.linear(query, w_q, b_q)) * (self.head_dim ** -0.5)
        # Multiply-adds of each way: projecting keys and values (2 nk e^2) and attending in
        # head space (2 nq nk e), or moving the queries into the input space and back
        # (2 nq e^2) and attending there per head (2 heads nq nk e).
        projected = 2 * nk * e * e + 2 * nq * nk * e
        input_space = 2 * nq * e * e + 2 * self.num_heads * nq * nk * e
        use_input_space = not torch.is_grad_enabled() and input_space < projected
        if use_input_space:
            # Scores and values in the memory's input space (see the module docstring).
            b, h = query.shape[0], self.num_heads
            wk_h = w_k.view(h, self.head_dim, e)
            qk = torch.matmul(q, wk_h).reshape(b, h * nq, e)  # queries moved into the key's input space
            # Heads folded into rows so the memory is read once, not broadcast per head.
            scores = torch.bmm(qk, key.transpose(1, 2)).view(b, h, nq, nk)
            probs = _masked_softmax(scores, attn_mask, blocked_rows)
            pooled = torch.bmm(probs.reshape(b, h * nq, nk), value).view(b, h, nq, e)
            wv_h = w_v.view(h, self.head_dim, e)
            out = torch.matmul(pooled, wv_h.transpose(1, 2))  # B x h x Nq x d
            out = out + b_v.view(h, 1, self.head_dim) * probs.sum(-1, keepdim=True)
        else:
            k, v = self.project_memory(key, value, kept_projections)
            if not torch.is_grad_enabled() and not (blocked_rows and attn_mask is not None):
                # Inference with no fully blocked row: the fused kernel (no scores tensor written
                # and read back; 2-8% of a cold phrase on CPU, measured) gives the same values up to rounding.
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if attn_mask is None else ~attn_mask,
                                                     scale=1.0)
            else:
                probs = _masked_softmax(torch.matmul(q, k.transpose(-2, -1)), attn_mask, blocked_rows)
                out = torch.matmul(probs, v)
        out = out.transpose(1, 2).reshape(query.shape[0], nq, e)
        return self.out_proj(out)

    def project_memory(self, key: torch.Tensor, value: torch.Tensor,
                       kept: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values in head space (B x heads x Nk x d), from `kept` when it holds them
        (and left there when it does not, outside training)."""
        if kept is not None and "k" in kept:
            return kept["k"], kept["v"]
        e = self.embed_dim
        _, w_k, w_v = self.in_proj_weight.split(e)
        _, b_k, b_v = self.in_proj_bias.split(e)
        k = self._split(F.linear(key, w_k, b_k))
        v = self._split(F.linear(value, w_v, b_v))
        # Never while training: the kept tensors would carry one step's graph into the next.
        if kept is not None and not torch.is_grad_enabled():
            kept["k"], kept["v"] = k, v
        return k, v


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, blocked_rows: bool = True) -> torch.Tensor:
    """Softmax over the last axis with `mask` (True = blocked) set to -inf; `scores` is a
    fresh product of the caller's and is overwritten."""
    if mask is None:
        return scores.softmax(-1)
    if scores.requires_grad:
        # Training: masked_fill's backward drops the gradient at blocked entries, which keeps
        # the NaN of a fully blocked row's softmax out of the scores' gradient; a bias would
        # pass it on (training diverged to NaN).
        probs = scores.masked_fill(mask, float("-inf")).softmax(-1)
    else:
        # Adding a 0 / -inf bias gives the same scores as masked_fill, but masked_fill with a
        # mask broadcast over the heads costs 4x the score product itself (the heads share it).
        bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(mask, float("-inf"))
        probs = scores.add_(bias).softmax(-1)
    # A fully blocked row is all -inf: softmax gives NaN there, the reference turns it into 0.
    return probs.nan_to_num(0.0) if blocked_rows else probs


class SelfAttentionLayer(nn.Module):
    """Post-norm (or pre-norm) self-attention with positional embedding on q and k."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None, attn_mask: torch.Tensor | None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """x, pos: B x N x C. rows: the rows whose outputs are wanted (all when None; the
        others only serve as keys and values), with `attn_mask` already cut to those rows."""
        if self.pre_norm:
            y = self.norm(x)
            qk = y if pos is None else y + pos
            x_out, q = (x, qk) if rows is None else (x[:, rows], qk[:, rows])
            return x_out + self.self_attn(q, qk, y, attn_mask)
        qk = x if pos is None else x + pos
        x_out, q = (x, qk) if rows is None else (x[:, rows], qk[:, rows])
        return self.norm(x_out + self.self_attn(q, qk, x, attn_mask))


class CrossAttentionLayer(nn.Module):
    """Queries attend to an image memory: q = x + query_pos, k = memory + pos, v = memory."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor,
                query_pos: torch.Tensor, attn_mask: torch.Tensor | None,
                kept_projections: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """memory_key = memory + pos, precomputed once per level. SEEM unblocks every row of
        the mask that would be blocked everywhere, so no row is (and no NaN needs clearing).
        kept_projections: see `MultiheadAttention.forward`."""
        if self.pre_norm:
            y = self.norm(x)
            return x + self.multihead_attn(y + query_pos, memory_key, memory_value, attn_mask, blocked_rows=False,
                                           kept_projections=kept_projections)
        return self.norm(x + self.multihead_attn(x + query_pos, memory_key, memory_value, attn_mask,
                                                 blocked_rows=False, kept_projections=kept_projections))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return x + self.linear2(F.relu(self.linear1(self.norm(x))))
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (the mask-embedding head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class TransformerEncoderLayer(nn.Module):
    """DETR encoder layer (post-norm by default, ReLU FFN) used on res5 by the pixel decoder."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            y = self.norm1(src)
            src = src + self.self_attn(y + pos, y + pos, y)
            return src + self.linear2(F.relu(self.linear1(self.norm2(src))))
        qk = src + pos
        src = self.norm1(src + self.self_attn(qk, qk, src))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))
