"""Transformer-encoder FPN pixel decoder, the image encoder's second half.

res5 -> 1x1 input_proj -> transformer encoder (sine positions) -> 3x3 conv (layer_4);
then top-down: y = layer_k(adapter_k(res_k) + nearest_upsample(y)) for res4, res3, res2.
Outputs `mask_features` (3x3 conv with bias on the stride-4 map) and the multi-scale
maps at strides 32, 16, 8 that the SEEM decoder attends to. Parameter names follow the
official checkpoints (`sem_seg_head.pixel_decoder.*`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PixelDecoderConfig
from .transformer import PositionEmbeddingSine, TransformerEncoderLayer


class ConvNorm(nn.Conv2d):
    """Conv2d followed by GroupNorm and an optional ReLU; bias-free (the norm has one)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, num_groups: int, relu: bool) -> None:
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(num_groups, out_ch)
        self.relu = relu
        nn.init.kaiming_uniform_(self.weight, a=1)  # "c2_xavier_fill" of the reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(cfg.conv_dim, cfg.nheads, cfg.dim_feedforward, cfg.pre_norm)
            for _ in range(cfg.transformer_layers)
        )
        self.norm = nn.LayerNorm(cfg.conv_dim) if cfg.pre_norm else None
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return self.norm(src) if self.norm is not None else src


class _EncoderOnly(nn.Module):
    """Holds the encoder under the reference's name (`transformer.encoder.*`)."""

    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(cfg)


class PixelDecoder(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig, in_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        c, g = cfg.conv_dim, cfg.num_groups
        # Names as in the reference: index 1..4 follows res2..res5.
        self.adapter_1 = ConvNorm(in_channels[0], c, 1, g, relu=False)
        self.layer_1 = ConvNorm(c, c, 3, g, relu=True)
        self.adapter_2 = ConvNorm(in_channels[1], c, 1, g, relu=False)
        self.layer_2 = ConvNorm(c, c, 3, g, relu=True)
        self.adapter_3 = ConvNorm(in_channels[2], c, 1, g, relu=False)
        self.layer_3 = ConvNorm(c, c, 3, g, relu=True)
        self.layer_4 = ConvNorm(c, c, 3, g, relu=True)
        self.input_proj = nn.Conv2d(in_channels[3], c, 1)
        self.transformer = _EncoderOnly(cfg)
        self.mask_features = nn.Conv2d(c, cfg.mask_dim, 3, padding=1)
        self.pe_layer = PositionEmbeddingSine(c // 2)
        for conv in (self.input_proj, self.mask_features):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """res2..res5 -> (mask_features B x M x H/4 x W/4, [stride 32, stride 16, stride 8] maps)."""
        res5 = features["res5"]
        x = self.input_proj(res5)
        b, c, h, w = x.shape
        pos = self.pe_layer(x).flatten(2).transpose(1, 2)
        x = self.transformer.encoder(x.flatten(2).transpose(1, 2), pos)
        y = self.layer_4(x.transpose(1, 2).reshape(b, c, h, w))
        multi_scale = [y]
        for adapter, layer, name in ((self.adapter_3, self.layer_3, "res4"),
                                     (self.adapter_2, self.layer_2, "res3"),
                                     (self.adapter_1, self.layer_1, "res2")):
            lateral = adapter(features[name])
            y = layer(lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            if len(multi_scale) < 3:
                multi_scale.append(y)
        return self.mask_features(y), multi_scale
