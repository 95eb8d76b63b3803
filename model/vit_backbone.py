"""SAM's ViT image encoder as SEEM's `vit` backbone (seem-samvitb-v1), the image encoder's first half.

16x16 patches -> + absolute positions (one per patch of an `img_size` square) -> blocks of
pre-LN attention + MLP. Attention adds decomposed relative positions (a learned table per
axis, looked up by query-key offset); most blocks attend within non-overlapping windows
(the token grid zero-padded to a multiple of the window), the `global_attn_indexes` blocks
over the whole grid. The SimpleFPN neck turns the stride-16 grid into res2..res5 (strides
4, 8, 16, 32) with transposed / strided 2x2 convs. Parameter names follow the official
checkpoint (`backbone.*`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig

_LN_EPS = 1e-6  # the reference builds its ViT LayerNorms with eps 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B x H x W x C


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def relative_position_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """size x size x C embeddings of the offsets q - k along one axis (query and key grids equal)."""
    if table.shape[0] != 2 * size - 1:
        raise ValueError(f"relative position table of {table.shape[0]} rows does not fit a {size}-token axis")
    coords = torch.arange(size, device=table.device)
    return table[coords[:, None] - coords[None, :] + (size - 1)]


class Attention(nn.Module):
    """Multi-head self-attention on a B x H x W x C grid with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B x heads x HW x c
        # Relative positions enter as an additive bias: q . R[q_row - k_row] + q . R[q_col - k_col].
        r_q = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, relative_position_table(h, self.rel_pos_h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, relative_position_table(w, self.rel_pos_w))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.permute(0, 2, 1, 3).reshape(b, h, w, -1))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B x H x W x C -> (B*nW) x window x window x C, zero-padding H and W up to multiples of `window`."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : size[0], : size[1]].contiguous()


class Block(nn.Module):
    """Pre-LN transformer block; `window` 0 = global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads, window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            size = x.shape[1:3]
            x, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(x), self.window, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SimpleFPN(nn.Module):
    """Stride-16 tokens -> res2..res5: 2x transposed convs up, a strided 2x2 conv down,
    GroupNorm(1) (= LayerNorm over C, H, W) after each conv, GELU at the end of each branch."""

    def __init__(self, in_dim: int, out_dims: tuple[int, ...]) -> None:
        super().__init__()
        c4 = max(out_dims[0] * 2, in_dim // 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c4, 2, stride=2), nn.GroupNorm(1, c4), nn.GELU(),
            nn.ConvTranspose2d(c4, c4 // 2, 2, stride=2), nn.GroupNorm(1, c4 // 2),
            nn.Conv2d(c4 // 2, out_dims[0], 1), nn.GroupNorm(1, out_dims[0]), nn.GELU())
        c8 = max(out_dims[1], in_dim // 2)
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c8, 2, stride=2), nn.GroupNorm(1, c8),
            nn.Conv2d(c8, out_dims[1], 1), nn.GroupNorm(1, out_dims[1]), nn.GELU())
        self.down_16 = nn.Sequential(nn.Conv2d(in_dim, out_dims[2], 1), nn.GroupNorm(1, out_dims[2]), nn.GELU())
        c32 = max(out_dims[3], in_dim * 2)
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, c32, 2, stride=2), nn.GroupNorm(1, c32),
            nn.Conv2d(c32, out_dims[3], 1), nn.GroupNorm(1, out_dims[3]), nn.GELU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res2": self.down_4(x), "res3": self.down_8(x), "res4": self.down_16(x), "res5": self.down_32(x)}


class ViTBackbone(nn.Module):
    """B x 3 x img_size x img_size normalised pixels -> {res2..res5}."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio,
                  0 if i in cfg.global_attn_indexes else cfg.window_size, grid)
            for i in range(cfg.depth))
        self.neck = SimpleFPN(cfg.embed_dim, cfg.neck_out_dims)
        self.out_channels = tuple(cfg.neck_out_dims)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # random weights are not all-zero positions

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.cfg.img_size
        if tuple(pixels.shape[-2:]) != (size, size):
            # The absolute positions cover exactly one img_size square (the reference adds them
            # without resizing), so the predictor pads every image to it.
            raise ValueError(f"the ViT backbone takes {size}x{size} padded input, got {pixels.shape[-2]}x"
                             f"{pixels.shape[-1]}: resize images to at most {size} pixels a side and pad "
                             f"them to {size} (inference.size_divisibility {size})")
        x = self.patch_embed(pixels) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
