"""The SEEM v1 decoder: learnable queries that attend to image features and prompts.

Sequences (reference order):
- cross-attention (queries only): object queries, grounding queries, spatial queries, memories;
- self-attention: object, grounding queries, spatial queries, grounding tokens, spatial
  tokens, memories, under this attention pattern (row attends to column):
    object -> object;  grounding q -> grounding q + grounding tokens;
    spatial q -> spatial q / spatial tokens / memories *of the same prompt*
                 (+ grounding tokens when text and visual prompts are composed);
    grounding tokens -> grounding q + grounding tokens;  spatial tokens -> same-prompt tokens;
    memories -> same-prompt memories.
Object queries never see prompts, and every query's cross-attention mask comes from its own
previous mask, so groups that are not requested can be left out without changing the
others: a click runs ~3 queries instead of 101 + 3.

Per layer i the queries cross-attend to feature level i % 3 (strides 32, 16, 8) inside
their previous mask (sigmoid >= 0.5; a memory uses the previous round's mask of its prompt;
an all-blocked row is unblocked), then self-attend, then an FFN; spatial tokens are
re-inserted fresh at every layer, grounding tokens carry over. Heads run after the learnable
queries and after every layer (1 + num_layers rounds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig
from .heads import HeadOutput, LevelResampler, PredictionHeads
from .transformer import CrossAttentionLayer, FFNLayer, PositionEmbeddingSine, SelfAttentionLayer

OBJECT, GROUNDING, SPATIAL, MEMORY = "object", "grounding", "spatial", "memory"
GTOKENS, STOKENS = "grounding_tokens", "spatial_tokens"


@dataclass
class GroundingInput:
    """Text tokens of the referring phrase(s), batched: B x T x D, padding True = absent."""

    tokens: torch.Tensor
    padding: torch.Tensor


@dataclass
class SpatialInput:
    """Visual prompts, batched and padded to `num_prompts` per image.

    tokens[l]: B x T_l x C spatial tokens of level l; token_prompt[l]: B x T_l (-1 = padding);
    pos_embed / neg_embed: B x ns x C (mean mask feature at positive / negative points);
    query_source: (ns * queries_per_prompt) or B x (ns * q) indices of the object queries
    the spatial queries start from; prev_mask: B x ns x H/4 x W/4 logits of the previous
    round (memory prompts), memory_prompt: the prompt each memory query serves (M, or
    num_layers x M as the reference redraws it in every layer);
    see_text: spatial queries also attend to the grounding tokens (text + visual composed).
    """

    tokens: list[torch.Tensor]
    token_prompt: list[torch.Tensor]
    pos_embed: torch.Tensor
    neg_embed: torch.Tensor
    query_source: torch.Tensor
    prev_mask: torch.Tensor | None = None
    memory_prompt: torch.Tensor | None = None
    see_text: bool = False

    @property
    def num_prompts(self) -> int:
        return int(self.pos_embed.shape[1])


@dataclass
class DecoderOutput:
    """Head outputs per round (round 0 = the learnable queries) and per query group."""

    rounds: list[dict[str, HeadOutput]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, HeadOutput]:
        return self.rounds[-1]


def draw_query_sources(num_queries: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Object queries the spatial queries start from: uniform with replacement (the reference's draw)."""
    return torch.randint(0, num_queries, (count,), generator=generator)


def draw_memory_assignment(num_layers: int, num_memories: int, num_prompts: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """num_layers x num_memories prompt index per memory query, drawn per layer as the
    reference does (multinomial with replacement over the prompts, sorted)."""
    repeat = max(1, num_memories // num_prompts)
    probs = torch.full((num_prompts,), 1.0 / repeat)
    return torch.stack([torch.multinomial(probs, num_memories, replacement=True, generator=generator).sort().values
                        for _ in range(num_layers)])


class SeemDecoder(nn.Module):
    # Up to this many queries, intermediate rounds compute stride-4 masks and resize them;
    # beyond it they compute masks only where the next level's bilinear taps read.
    STRIDE4_QUERY_LIMIT = 16

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.num_heads = cfg.nheads
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(cfg.num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(cfg.num_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dim_feedforward, cfg.pre_norm) for _ in range(cfg.num_layers))
        for layers in (self.transformer_self_attention_layers, self.transformer_cross_attention_layers,
                       self.transformer_ffn_layers):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.level_embed = nn.Embedding(cfg.num_feature_levels, d)
        self.mask_sptial_embed = nn.ParameterList(
            nn.Parameter(nn.init.trunc_normal_(torch.empty(d, d), std=0.02)) for _ in range(cfg.num_feature_levels))
        self.spatial_embed = nn.Embedding(cfg.spatial_memories, d)
        self.spatial_featured = nn.Embedding(cfg.spatial_memories, d)
        self.pn_indicator = nn.Embedding(2, d)
        self.heads = PredictionHeads(d, cfg.dim_proj, cfg.mask_dim)
        self.pe_layer = PositionEmbeddingSine(d // 2)

    # ------------------------------------------------------------------ inputs
    def level_sources(self, multi_scale: list[torch.Tensor]) -> list[torch.Tensor]:
        """B x C x h x w maps -> decoder inputs src_l = map + level_embed[l] (B x C x h x w)."""
        return [m + self.level_embed.weight[l][None, :, None, None] for l, m in enumerate(multi_scale)]

    def draw_query_sources(self, num_prompts: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return draw_query_sources(self.cfg.num_queries, self.cfg.queries_per_prompt * num_prompts, generator)

    def draw_memory_assignment(self, num_prompts: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return draw_memory_assignment(self.cfg.num_layers, self.cfg.spatial_memories, num_prompts, generator)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        multi_scale: list[torch.Tensor],
        mask_features: torch.Tensor,
        *,
        object_queries: bool = True,
        grounding: GroundingInput | None = None,
        spatial: SpatialInput | None = None,
        full_masks: str = "final",
    ) -> DecoderOutput:
        """multi_scale: 3 maps B x C x h_l x w_l (strides 32, 16, 8); mask_features B x C x H x W.

        full_masks: "final" computes stride-4 masks for the last round only (intermediate
        rounds only need them at the next level's size); "all" for every round (deep
        supervision, parity).
        """
        if full_masks not in ("final", "all"):
            raise ValueError("full_masks must be 'final' or 'all'")
        if not (object_queries or grounding is not None or spatial is not None):
            raise ValueError("nothing to decode: no object queries and no prompt")
        bs = mask_features.shape[0]
        nq, d = self.cfg.num_queries, self.cfg.hidden_dim
        levels = self.cfg.num_feature_levels
        sources = self.level_sources(multi_scale)
        sizes = [tuple(s.shape[-2:]) for s in sources]
        values = [s.flatten(2).transpose(1, 2) for s in sources]  # B x HW x C
        keys = [v + self.pe_layer(m).flatten(2).transpose(1, 2) for v, m in zip(values, multi_scale)]

        # Query groups: content and positional embedding, B x N x C each.
        content: dict[str, torch.Tensor] = {}
        qpos: dict[str, torch.Tensor] = {}
        base_c = self.query_feat.weight[None].expand(bs, -1, -1)
        base_p = self.query_embed.weight[None].expand(bs, -1, -1)
        if object_queries:
            content[OBJECT], qpos[OBJECT] = base_c, base_p
        if grounding is not None:
            content[GROUNDING], qpos[GROUNDING] = base_c, base_p
            content[GTOKENS] = grounding.tokens
            qpos[GTOKENS] = grounding.tokens.detach()
        spatial_prompt = None
        if spatial is not None:
            src = spatial.query_source
            if src.dim() == 1:
                content[SPATIAL] = self.query_feat.weight[src][None].expand(bs, -1, -1)
                qpos[SPATIAL] = self.query_embed.weight[src][None].expand(bs, -1, -1)
            else:
                content[SPATIAL], qpos[SPATIAL] = self.query_feat.weight[src], self.query_embed.weight[src]
            spatial_prompt = torch.arange(spatial.num_prompts, device=mask_features.device).repeat_interleave(
                self.cfg.queries_per_prompt)
            if spatial.prev_mask is not None:
                content[MEMORY] = self.spatial_featured.weight[None].expand(bs, -1, -1)
                qpos[MEMORY] = self.spatial_embed.weight[None].expand(bs, -1, -1)
        cross_names = [n for n in (OBJECT, GROUNDING, SPATIAL, MEMORY) if n in content]
        head_names = [n for n in cross_names if n != MEMORY]  # memories' masks are never used

        memory_masks = None
        if MEMORY in content:
            memory_prompt = spatial.memory_prompt
            if memory_prompt is None:
                memory_prompt = self.draw_memory_assignment(spatial.num_prompts)
            memory_prompt = memory_prompt.to(mask_features.device)
            if memory_prompt.dim() == 1:
                memory_prompt = memory_prompt[None].expand(self.cfg.num_layers, -1)
            # Blocked outside the previous round's mask of the memory's prompt, per level.
            memory_masks = []
            for size in sizes:
                prev = F.interpolate(spatial.prev_mask, size=size, mode="bilinear", align_corners=False)
                memory_masks.append((prev.sigmoid() < 0.5).flatten(2))
        else:
            memory_prompt = None

        resamplers: dict[int, LevelResampler] = {}
        output = DecoderOutput()

        num_head_queries = sum(content[n].shape[1] for n in head_names)

        def run_heads(next_level: int, full: bool) -> torch.Tensor:
            """Heads on the cross-attention groups; returns the next layer's attention mask."""
            x = torch.cat([content[n] for n in head_names], dim=1)
            # With few queries the stride-4 masks are cheaper than gathering the map's rows.
            stride4 = full or num_head_queries <= self.STRIDE4_QUERY_LIMIT
            heads = self.heads(x, mask_features if stride4 else None)
            if stride4:
                level_masks = F.interpolate(heads.masks, size=sizes[next_level], mode="bilinear", align_corners=False)
                if not full:
                    heads.masks = None
            else:
                if next_level not in resamplers:
                    resamplers[next_level] = LevelResampler(mask_features, sizes[next_level])
                level_masks = resamplers[next_level](heads.mask_emb)
            # torch.split: one backward node per tensor instead of one per group slice.
            sizes_q = [content[n].shape[1] for n in head_names]
            class_emb = heads.class_emb.split(sizes_q, dim=1)
            mask_emb = heads.mask_emb.split(sizes_q, dim=1)
            masks = heads.masks.split(sizes_q, dim=1) if heads.masks is not None else [None] * len(head_names)
            output.rounds.append({n: HeadOutput(c, e, m) for n, c, e, m in zip(head_names, class_emb, mask_emb, masks)})
            return (level_masks.sigmoid() < 0.5).flatten(2).detach()

        num_layers = self.cfg.num_layers
        attn_mask = run_heads(0, full_masks == "all" or num_layers == 0)
        self_masks: dict[tuple, torch.Tensor] = {}
        for i in range(num_layers):
            level = i % levels
            mask = attn_mask
            if memory_masks is not None:
                mask = torch.cat([mask, memory_masks[level][:, memory_prompt[i]]], dim=1)
            mask = mask & ~mask.all(-1, keepdim=True)  # an all-blocked row attends everywhere
            x = torch.cat([content[n] for n in cross_names], dim=1)
            pos = torch.cat([qpos[n] for n in cross_names], dim=1)
            x = self.transformer_cross_attention_layers[i](x, keys[level], values[level], pos, mask[:, None])
            content.update(zip(cross_names, x.split([content[n].shape[1] for n in cross_names], dim=1)))

            if spatial is not None:
                content[STOKENS] = spatial.tokens[level]
                qpos[STOKENS] = spatial.tokens[level].detach()
            self_names = [n for n in (OBJECT, GROUNDING, SPATIAL, GTOKENS, STOKENS, MEMORY) if n in content]
            layer_memory = None if memory_prompt is None else memory_prompt[i]
            mask_key = (level, None if layer_memory is None else tuple(layer_memory.tolist()))
            if mask_key not in self_masks:
                self_masks[mask_key] = self._self_attention_mask(
                    self_names, content, grounding, spatial, spatial_prompt, layer_memory, level)
            x = torch.cat([content[n] for n in self_names], dim=1)
            pos = torch.cat([qpos[n] for n in self_names], dim=1)
            x = self.transformer_self_attention_layers[i](x, pos, self_masks[mask_key][:, None])
            x = self.transformer_ffn_layers[i](x)
            content.update(zip(self_names, x.split([content[n].shape[1] for n in self_names], dim=1)))
            content.pop(STOKENS, None)  # spatial tokens are re-inserted fresh at the next layer
            qpos.pop(STOKENS, None)
            last = i == num_layers - 1
            attn_mask = run_heads((i + 1) % levels, last or full_masks == "all")
        return output

    # ------------------------------------------------------------------ self-attention pattern
    def _self_attention_mask(self, names: list[str], content: dict[str, torch.Tensor],
                             grounding: GroundingInput | None, spatial: SpatialInput | None,
                             spatial_prompt: torch.Tensor | None, memory_prompt: torch.Tensor | None,
                             level: int) -> torch.Tensor:
        """B x N x N, True = blocked, built in the reference's order of rules."""
        bs = next(iter(content.values())).shape[0]
        index: dict[str, slice] = {}
        start = 0
        for n in names:
            index[n] = slice(start, start + content[n].shape[1])
            start += content[n].shape[1]
        device = content[names[0]].device
        mask = torch.ones((bs, start, start), dtype=torch.bool, device=device)

        allowed = [(OBJECT, OBJECT), (GROUNDING, GROUNDING), (GROUNDING, GTOKENS),
                   (SPATIAL, SPATIAL), (SPATIAL, STOKENS), (SPATIAL, MEMORY),
                   (GTOKENS, GROUNDING), (GTOKENS, GTOKENS), (STOKENS, STOKENS), (MEMORY, MEMORY)]
        if spatial is not None and spatial.see_text:
            allowed.append((SPATIAL, GTOKENS))
        allowed = [(a, b) for a, b in allowed if a in index and b in index]
        for a, b in allowed:
            mask[:, index[a], index[b]] = False

        padding: dict[str, torch.Tensor] = {}
        if GTOKENS in index:
            padding[GTOKENS] = grounding.padding
        if STOKENS in index:
            padding[STOKENS] = spatial.token_prompt[level] < 0
        # Padded tokens: no attention from or to them (rows and columns), among tokens
        # and towards / from the queries they pair with.
        for a, b in allowed:
            block = mask[:, index[a], index[b]]
            if a == b and a in padding:
                block |= padding[a][:, :, None] | padding[a][:, None, :]
            elif a != b:
                if a in padding:
                    block |= padding[a][:, :, None]
                if b in padding:
                    block |= padding[b][:, None, :]
            mask[:, index[a], index[b]] = block

        if SPATIAL in index and STOKENS in index:
            sp = spatial_prompt
            tp = spatial.token_prompt[level]
            mask[:, index[SPATIAL], index[SPATIAL]] = (sp[:, None] != sp[None, :])[None]
            mask[:, index[SPATIAL], index[STOKENS]] = sp[None, :, None] != tp[:, None, :]
            mask[:, index[STOKENS], index[STOKENS]] = tp[:, :, None] != tp[:, None, :]
        if MEMORY in index:
            mp = memory_prompt
            mask[:, index[SPATIAL], index[MEMORY]] = (spatial_prompt[:, None] != mp[None, :])[None]
            mask[:, index[MEMORY], index[MEMORY]] = (mp[:, None] != mp[None, :])[None]
        return mask
