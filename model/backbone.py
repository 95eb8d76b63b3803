"""Focal modulation backbone (FocalNet), the image encoder's first half.

Two block variants, chosen by `FocalConfig.variant`:
- "focal_dw" (SEEM Focal-T v1): x += dw1(x); x = norm1(x + g1 * modulation(x));
  x += dw2(x); x = norm2(x + g2 * mlp(x))   (with post-LN; pre-LN otherwise)
- "focal" (Focal-L): x = x + g1 * norm1(modulation(x)); x = x + g2 * norm2(mlp(x))
Outputs `res2..res5` (strides 4, 8, 16, 32), each through its own LayerNorm.
Parameter names follow the official checkpoints (`backbone.*`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FocalConfig


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FocalModulation(nn.Module):
    """Focal modulation: hierarchical depthwise contexts gated into a modulator for q."""

    def __init__(self, dim: int, focal_level: int, focal_window: int, scaling_modulator: bool,
                 use_postln_in_modulation: bool, focal_factor: int = 2) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.scaling_modulator = scaling_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel = focal_factor * k + focal_window
            self.focal_layers.append(nn.Sequential(
                nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2, bias=False),
                nn.GELU(),
            ))
        self.ln = nn.LayerNorm(dim) if use_postln_in_modulation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x H x W x C -> B x H x W x C."""
        c = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2)
        q, ctx, gates = torch.split(x, (c, c, self.focal_level + 1), 1)
        ctx_all = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level:level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level:]
        if self.scaling_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        out = (q * self.h(ctx_all)).permute(0, 2, 3, 1)
        if self.ln is not None:
            out = self.ln(out)
        return self.proj(out)


class FocalBlock(nn.Module):
    def __init__(self, cfg: FocalConfig, dim: int, focal_level: int, focal_window: int, drop_path: float) -> None:
        super().__init__()
        self.depthwise = cfg.variant == "focal_dw"
        self.use_postln = cfg.use_postln
        if self.depthwise:
            self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.dw2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, focal_level, focal_window, cfg.scaling_modulator,
                                          cfg.use_postln_in_modulation)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.drop_path = DropPath(drop_path)
        if cfg.use_layerscale:
            self.gamma_1 = nn.Parameter(1e-4 * torch.ones(dim))
            self.gamma_2 = nn.Parameter(1e-4 * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    @staticmethod
    def _scale(gamma: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        return x if gamma is None else gamma * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x H x W x C (channels last)."""
        if self.depthwise:
            x = x + self.dw1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            shortcut = x
            y = x if self.use_postln else self.norm1(x)
            x = shortcut + self.drop_path(self._scale(self.gamma_1, self.modulation(y)))
            if self.use_postln:
                x = self.norm1(x)
            x = x + self.dw2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            if self.use_postln:
                return self.norm2(x + self.drop_path(self._scale(self.gamma_2, self.mlp(x))))
            return x + self.drop_path(self._scale(self.gamma_2, self.mlp(self.norm2(x))))
        if self.use_postln:
            x = x + self.drop_path(self._scale(self.gamma_1, self.norm1(self.modulation(x))))
            return x + self.drop_path(self._scale(self.gamma_2, self.norm2(self.mlp(x))))
        x = x + self.drop_path(self._scale(self.gamma_1, self.modulation(self.norm1(x))))
        return x + self.drop_path(self._scale(self.gamma_2, self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    """Conv patch embedding (stem: 7x7 stride 4; between stages: 3x3 stride 2) + LayerNorm."""

    def __init__(self, cfg: FocalConfig, in_chans: int, embed_dim: int, is_stem: bool) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size if is_stem else 2
        if cfg.use_conv_embed:
            if is_stem:
                # The two reference backbones differ here: focal_dw pads the 7x7 stem by 3, focal by 2.
                kernel, stride, padding = 7, 4, (3 if cfg.variant == "focal_dw" else 2)
            else:
                kernel, stride, padding = 3, 2, 1
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=padding)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if cfg.patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C x H x W -> B x H' x W' x C' (channels last)."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if w % p or h % p:
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class FocalStage(nn.Module):
    def __init__(self, cfg: FocalConfig, index: int, drop_paths: list[float]) -> None:
        super().__init__()
        dim = cfg.stage_dims[index]
        self.blocks = nn.ModuleList(
            FocalBlock(cfg, dim, cfg.focal_levels[index], cfg.focal_windows[index], dp) for dp in drop_paths
        )
        last = index == len(cfg.depths) - 1
        self.downsample = None if last else PatchEmbed(cfg, dim, 2 * dim, is_stem=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x, x
        return x, self.downsample(x.permute(0, 3, 1, 2))


class FocalBackbone(nn.Module):
    """FocalNet returning {"res2": B x C1 x H/4 x W/4, ..., "res5": B x C4 x H/32 x W/32}."""

    def __init__(self, cfg: FocalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, 3, cfg.embed_dim, is_stem=True)
        # On CPU explicitly: the rates are Python floats, also when the module is built on "meta".
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(cfg.depths):
            self.layers.append(FocalStage(cfg, i, rates[start:start + depth]))
            start += depth
        for i, dim in enumerate(cfg.stage_dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.cfg.stage_dims

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        outs: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            outs[f"res{i + 2}"] = getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous()
        return outs
