"""Multi-scale deformable-attention pixel decoder (`transformer_encoder_deform`), the image
encoder's second half for seem-samvitb-v1.

res5, res4, res3 -> 1x1 conv + GroupNorm each -> flattened together -> deformable encoder
layers (every token attends to a few learned sampling points around its own position on
every level, Deformable DETR style) -> split back into three maps (strides 32, 16, 8: the
decoder's multi-scale features). One FPN step adds res2: layer_1(adapter_1(res2) +
bilinear upsample(stride-8 map)); `mask_features` is a 1x1 conv on it. Deformable
attention is written with `grid_sample` (no compiled op). Parameter names follow the
official checkpoint (`sem_seg_head.pixel_decoder.*`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeformPixelDecoderConfig
from .pixel_decoder import ConvNorm
from .transformer import PositionEmbeddingSine


def deformable_sample(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """The weighted sum of bilinear samples of every level at the sampling locations.

    value: B x S x heads x c (all levels' tokens, level after level); locations:
    B x Q x heads x levels x points x 2 in [0, 1] (x, y; 0 and 1 are the outer pixel
    edges, outside reads zero); weights: B x Q x heads x levels x points -> B x Q x heads*c.
    """
    b, _, heads, c = value.shape
    _, q, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * heads, c, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # B*heads x Q x points x 2
        samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # B*heads x c x Q x levels*points
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    return (stacked * w).sum(-1).view(b, heads * c, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query mixes `points` samples per head and level."""

    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._init_as_deformable_detr()

    def _init_as_deformable_detr(self) -> None:
        # Offsets start on a ring of directions (one per head), 1..points pixels out.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1) * torch.arange(1, self.points + 1).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        for lin in (self.attention_weights,):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value_in: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query B x Q x C, reference B x Q x levels x 2 (x, y in [0, 1]), value_in B x S x C."""
        b, q, _ = query.shape
        value = self.value_proj(value_in).view(b, value_in.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: (x / W, y / H).
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(deformable_sample(value, shapes, locations, weights))


class DeformEncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + attn(x + pos)); x = norm2(x + ffn(x))."""

    def __init__(self, dim: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformEncoder(nn.Module):
    def __init__(self, cfg: DeformPixelDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformEncoderLayer(cfg.conv_dim, cfg.dim_feedforward, cfg.transformer_levels, cfg.nheads, cfg.num_points)
            for _ in range(cfg.transformer_layers))

    @staticmethod
    def reference_points(shapes: list[tuple[int, int]], batch: int, device: torch.device) -> torch.Tensor:
        """Pixel centres of every level's tokens, normalised to [0, 1]: B x S x levels x 2 (x, y)."""
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((x.reshape(-1), y.reshape(-1)), -1))
        # No padding mask (every token is valid), so a token has the same point on every level.
        return torch.cat(points, 0)[None, :, None, :].expand(batch, -1, len(shapes), -1)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        reference = self.reference_points(shapes, src.shape[0], src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference, shapes)
        return src


class _DeformTransformer(nn.Module):
    """Holds the encoder and level embeddings under the reference's names (`transformer.*`)."""

    def __init__(self, cfg: DeformPixelDecoderConfig) -> None:
        super().__init__()
        self.encoder = DeformEncoder(cfg)
        self.level_embed = nn.Parameter(torch.randn(cfg.transformer_levels, cfg.conv_dim))


class DeformPixelDecoder(nn.Module):
    def __init__(self, cfg: DeformPixelDecoderConfig, in_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        c, g = cfg.conv_dim, cfg.num_groups
        # input_proj.0 / .1 / .2 take res5 / res4 / res3 (coarse to fine, as the reference orders them).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, c, 1), nn.GroupNorm(g, c)) for ch in reversed(in_channels[1:]))
        self.transformer = _DeformTransformer(cfg)
        self.pe_layer = PositionEmbeddingSine(c // 2)
        self.adapter_1 = ConvNorm(in_channels[0], c, 1, g, relu=False)
        self.layer_1 = ConvNorm(c, c, 3, g, relu=True)
        self.mask_features = nn.Conv2d(c, cfg.mask_dim, 1)
        for conv in [p[0] for p in self.input_proj] + [self.mask_features]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """res2..res5 -> (mask_features B x M x H/4 x W/4, [stride 32, stride 16, stride 8] maps)."""
        srcs, pos, shapes = [], [], []
        for lvl, (proj, name) in enumerate(zip(self.input_proj, ("res5", "res4", "res3"))):
            x = proj(features[name])
            shapes.append(tuple(x.shape[-2:]))
            srcs.append(x.flatten(2).transpose(1, 2))
            level_pos = self.pe_layer(x).flatten(2).transpose(1, 2) + self.transformer.level_embed[lvl]
            pos.append(level_pos)
        memory = self.transformer.encoder(torch.cat(srcs, 1), torch.cat(pos, 1), shapes)
        b, c = memory.shape[0], memory.shape[2]
        maps = [m.transpose(1, 2).reshape(b, c, h, w)
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)]
        lateral = self.adapter_1(features["res2"])
        y = self.layer_1(lateral + F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear",
                                                 align_corners=False))
        return self.mask_features(y), maps
