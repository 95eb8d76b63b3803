"""The SEEM v0 decoder (`seem_v0`, the decoder of seem_focalt_v0.pt / seem_focall_v0.pt).

Same layers, parameters and attention rules as v1 (model/decoder.py); what differs is how
visual prompts enter:
- one prompt per pass: the pixels of every positive mask form one prompt (and every
  negative mask one negative side), in (mask, y, x) row-major order;
- every object query is also a spatial query (no random draw): the spatial queries are
  copies of all `num_queries` object queries, in order, and all memories serve the one prompt;
- beyond `max_spatial_len` pixels a subset is drawn by a plain random permutation (kept in
  the drawn order), and only then: v0 draws nothing for a small prompt;
- a prompt side without pixels embeds as zeros (the reference's mean of nothing, NaN, turned to 0);
- the output is the spatial query whose mask embedding best matches the mean mask feature
  at the positive pixels.
Its referring-image route takes the reference region's point features (spatial tokens and
positive embedding, computed on the reference image) in place of the target image's own: the
predictor builds them with the same `draw_prompt_points_v0` on the reference image's features.
Several objects are several passes (the reference batches them as separate images).
"""
from __future__ import annotations

import torch

from .decoder import SeemDecoder
from .visual_sampler import PromptDraws, PromptPoints, PromptPixels


def _sample_plain(pixels: PromptPixels, max_len: int, generator: torch.Generator | None) -> PromptPoints:
    """All pixels as one prompt; a random permutation's first `max_len` beyond that many."""
    nz = pixels.nz
    if nz.shape[0] > max_len:
        nz = nz[torch.randperm(nz.shape[0], generator=generator)[:max_len].to(nz.device)]
    coords = nz[:, 1:].to(torch.float32) / pixels.divisor
    return PromptPoints(coords=coords, prompt=torch.zeros(nz.shape[0], dtype=torch.long, device=nz.device))


def draw_prompt_points_v0(pos_masks: torch.Tensor, neg_masks: torch.Tensor, max_spatial_len: tuple[int, ...],
                          num_levels: int, generator: torch.Generator | None = None) -> PromptDraws:
    """The v0 draws, in the reference's order: positive and negative points for the
    embeddings (the last length), then per level positive and negative points for tokens."""
    pos_pixels, neg_pixels = PromptPixels(pos_masks), PromptPixels(neg_masks)
    pos = _sample_plain(pos_pixels, max_spatial_len[-1], generator)
    neg = _sample_plain(neg_pixels, max_spatial_len[-1], generator)
    level_pos, level_neg = [], []
    for level in range(num_levels):
        level_pos.append(_sample_plain(pos_pixels, max_spatial_len[level], generator))
        level_neg.append(_sample_plain(neg_pixels, max_spatial_len[level], generator))
    return PromptDraws(pos, neg, level_pos, level_neg, num_prompts=1, empty_value=0.0)


class SeemDecoderV0(SeemDecoder):
    """v1's decoder with v0's prompt semantics (see the module docstring)."""

    draw_prompt_points = staticmethod(draw_prompt_points_v0)

    def draw_query_sources(self, num_prompts: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Every object query, in order, once per prompt (v0 draws nothing here)."""
        return torch.arange(self.cfg.num_queries).repeat(num_prompts)

    def draw_memory_assignment(self, num_prompts: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Every memory serves the pass's one prompt (v0 draws nothing here)."""
        if num_prompts != 1:
            raise ValueError(f"the v0 decoder takes one prompt per pass, not {num_prompts}")
        return torch.zeros((self.cfg.num_layers, self.cfg.spatial_memories), dtype=torch.long)
