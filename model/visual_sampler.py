"""Visual sampler: spatial prompts (as masks) -> point features for the decoder.

Every visual prompt is a mask at the padded input resolution (points, boxes, scribbles,
polygons are rasterised by the predictor). Following the reference:
- the prompt pixels of all prompts of an image, in (prompt, y, x) row-major order, are
  normalised by the padded size (y / Hp, x / Wp) and sampled with bilinear
  `grid_sample(align_corners=True)`; beyond `max_len` pixels a subset is drawn without
  replacement, each prompt getting equal total probability, and kept in order;
- the positive embedding of a prompt is the mean of `mask_features` at its positive
  points (a vector of -1 when it has none), used to select the output query;
- the spatial tokens of decoder level l are `src_l @ mask_sptial_embed[l]` sampled at the
  positive then the negative points, plus the positive / negative indicator embedding.
Sampling before projecting is the same linear map as projecting the whole level first
(bilinear interpolation commutes with a matrix product) and costs points x C^2, not H x W x C^2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .mask_axes import MaskAxes, empty_in_frame


@dataclass
class PromptPoints:
    """Sampled prompt pixels of one image: normalised (y, x) and the prompt index of each."""

    coords: torch.Tensor  # n x 2, (y / Hp, x / Wp)
    prompt: torch.Tensor  # n, long

    @property
    def count(self) -> int:
        return int(self.coords.shape[0])


class PromptPixels:
    """The prompt pixels of one image's prompts (ns x Hp x Wp bool), found once, and the
    reference's sampling weights (equal total probability per prompt)."""

    def __init__(self, masks: torch.Tensor) -> None:
        ns, hp, wp = masks.shape
        self.nz = masks.nonzero()  # row-major (prompt, y, x)
        self.divisor = torch.tensor([hp, wp], dtype=torch.float32, device=masks.device)
        self.probs = None
        if self.nz.shape[0] > 0:
            prompt = self.nz[:, 0]
            counts = torch.bincount(prompt, minlength=ns).to(torch.float32)
            present = float((counts > 0).sum())
            self.probs = 1.0 / (present * counts[prompt])

    def sample(self, max_len: int, generator: torch.Generator | None = None) -> PromptPoints:
        """At most `max_len` pixels, as the reference draws them.

        Like the reference, every non-empty call draws (a permutation when there are at most
        `max_len` pixels, which sorting undoes), so a generator seeded like the reference's
        global RNG yields the reference's subsets.
        """
        nz = self.nz
        if self.probs is not None:
            keep = torch.multinomial(self.probs, min(max_len, nz.shape[0]), replacement=False, generator=generator)
            nz = nz[keep.sort().values]
        return PromptPoints(coords=nz[:, 1:].to(torch.float32) / self.divisor, prompt=nz[:, 0])


def sample_at(feature_map: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """feature_map C x H x W, coords n x 2 normalised (y, x) -> n x C (bilinear, align_corners=True)."""
    if coords.shape[0] == 0:
        return feature_map.new_zeros((0, feature_map.shape[0]))
    grid = (2.0 * coords.flip(-1) - 1.0).to(feature_map.dtype)[None, :, None, :]  # 1 x n x 1 x 2, (x, y)
    out = F.grid_sample(feature_map[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, :, :, 0].transpose(0, 1)


def prompt_means(point_features: torch.Tensor, prompt: torch.Tensor, num_prompts: int,
                 empty_value: float | torch.Tensor = -1.0) -> torch.Tensor:
    """Mean feature per prompt (num_prompts x C); `empty_value` (a number, or a C-vector) for a
    prompt without points."""
    c = point_features.shape[1]
    sums = point_features.new_zeros((num_prompts, c)).index_add_(0, prompt, point_features)
    counts = torch.bincount(prompt, minlength=num_prompts).to(point_features.dtype)[:, None]
    means = sums / counts.clamp(min=1)
    empty = torch.as_tensor(empty_value, dtype=means.dtype, device=means.device)
    return torch.where(counts > 0, means, empty.expand_as(means))


@dataclass
class SpatialTokens:
    """What one image's visual prompts contribute to the decoder (unbatched).

    `tokens[l]`: T_l x C tokens for decoder level l (positive points first, then negative);
    `token_prompt[l]`: T_l prompt index per token; `pos_embed`/`neg_embed`: ns x C_mask.
    """

    tokens: list[torch.Tensor]
    token_prompt: list[torch.Tensor]
    pos_embed: torch.Tensor
    neg_embed: torch.Tensor

    @property
    def num_prompts(self) -> int:
        return int(self.pos_embed.shape[0])

    @staticmethod
    def concat(parts: list["SpatialTokens"]) -> "SpatialTokens":
        """Joins token sources of the same prompts (e.g. this image's clicks + a referring region).

        Tokens are concatenated per level; the positive/negative embeddings are averaged
        over the parts that have any (a part without points contributes nothing).
        """
        if len(parts) == 1:
            return parts[0]
        levels = len(parts[0].tokens)
        tokens = [torch.cat([p.tokens[l] for p in parts]) for l in range(levels)]
        token_prompt = [torch.cat([p.token_prompt[l] for p in parts]) for l in range(levels)]

        def merge(embeds: list[torch.Tensor]) -> torch.Tensor:
            stack = torch.stack(embeds)  # parts x ns x C
            valid = ~(stack == -1).all(-1, keepdim=True)
            n = valid.sum(0)
            mean = (stack * valid).sum(0) / n.clamp(min=1)
            return torch.where(n > 0, mean, torch.full_like(mean, -1.0))

        return SpatialTokens(tokens, token_prompt, merge([p.pos_embed for p in parts]), merge([p.neg_embed for p in parts]))


@dataclass
class PromptDraws:
    """All point subsets one image's prompts need, in the reference's drawing order."""

    pos: PromptPoints  # for the positive embedding (mask features)
    neg: PromptPoints
    level_pos: list[PromptPoints]  # per decoder level
    level_neg: list[PromptPoints]
    num_prompts: int
    empty_value: float = -1.0  # the embedding of a prompt side without points


PromptDrawer = Callable[[torch.Tensor, torch.Tensor, tuple[int, ...], int, "torch.Generator | None"], PromptDraws]


def draw_prompt_points(pos_masks: torch.Tensor, neg_masks: torch.Tensor, max_spatial_len: tuple[int, ...],
                       num_levels: int, generator: torch.Generator | None = None) -> PromptDraws:
    pos_pixels, neg_pixels = PromptPixels(pos_masks), PromptPixels(neg_masks)
    pos = pos_pixels.sample(max_spatial_len[-1], generator)
    neg = neg_pixels.sample(max_spatial_len[-1], generator)
    level_pos, level_neg = [], []
    for level in range(num_levels):
        level_pos.append(pos_pixels.sample(max_spatial_len[level], generator))
        level_neg.append(neg_pixels.sample(max_spatial_len[level], generator))
    return PromptDraws(pos, neg, level_pos, level_neg, num_prompts=int(pos_masks.shape[0]))


def encode_visual_prompts(
    pos_masks: torch.Tensor,
    neg_masks: torch.Tensor,
    mask_features: torch.Tensor,
    level_sources: list[torch.Tensor],
    spatial_embeds: list[torch.Tensor],
    pn_indicator: torch.Tensor,
    max_spatial_len: tuple[int, ...],
    generator: torch.Generator | None = None,
    draw: PromptDrawer = draw_prompt_points,
    mask_axes: MaskAxes | None = None,
) -> SpatialTokens:
    """Prompt masks of one image (ns x Hp x Wp, bool) -> `SpatialTokens`.

    `mask_features`: C x H/4 x W/4 of the image the prompts were drawn on (possibly another
    image: a referring region); `level_sources[l]`: C x h_l x w_l decoder inputs of level l
    of that image (`input_proj(ms_l) + level_embed[l]`); `spatial_embeds[l]`: C x C.
    `draw`: how prompt pixels are drawn (v1's per-prompt draw; v0 has its own, decoder_v0.py).
    `mask_axes`: the frame of `mask_features` (None: channels), which the mean features
    (`pos_embed`, `neg_embed`) are then in too (model.mask_axes).
    """
    draws = draw(pos_masks, neg_masks, max_spatial_len, len(level_sources), generator)
    ns = draws.num_prompts
    empty = draws.empty_value if mask_axes is None else empty_in_frame(draws.empty_value, mask_axes, mask_features)
    pos_embed = prompt_means(sample_at(mask_features, draws.pos.coords), draws.pos.prompt, ns, empty)
    neg_embed = prompt_means(sample_at(mask_features, draws.neg.coords), draws.neg.prompt, ns, empty)
    tokens, token_prompt = [], []
    for source, proj, lp, ln in zip(level_sources, spatial_embeds, draws.level_pos, draws.level_neg):
        coords = torch.cat([lp.coords, ln.coords])
        feats = sample_at(source, coords) @ proj
        indicator = torch.cat([pn_indicator[0:1].expand(lp.count, -1), pn_indicator[1:2].expand(ln.count, -1)])
        tokens.append(feats + indicator)
        token_prompt.append(torch.cat([lp.prompt, ln.prompt]))
    return SpatialTokens(tokens, token_prompt, pos_embed, neg_embed)
