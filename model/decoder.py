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
from torch import nn

from .config import DecoderConfig
from .heads import HeadOutput, LevelResampler, PredictionHeads, resize_bilinear
from .mask_axes import MaskAxes
from .transformer import CrossAttentionLayer, FFNLayer, PositionEmbeddingSine, SelfAttentionLayer
from .visual_sampler import draw_prompt_points

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


def _first_duplicates(source: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor | None:
    """For each spatial query, the first one with the same source object query and prompt
    (n, or B x n for per-image sources); None when every query is distinct."""
    key = source * (int(prompt.max()) + 1) + prompt
    same = key[..., :, None] == key[..., None, :]  # [.., j, i]: query j equals query i
    first = same.int().argmax(-1)  # first i equal to j
    arange = torch.arange(key.shape[-1], device=key.device)
    return None if bool((first == arange).all()) else first


def _take_rows(t: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """t: B x n x ... -> the rows `first` (n, or B x n) along dim 1."""
    if first.dim() == 1:
        return t.index_select(1, first)
    index = first.view(*first.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return torch.gather(t, 1, index)


def _block_padding(mask: torch.Tensor, index: dict[str, slice], allowed: list[tuple[str, str]],
                   padding: dict[str, torch.Tensor]) -> None:
    """Padded tokens (`padding`: B x T per token group, True = padding) get no attention from
    or to them (rows and columns), among tokens and towards / from the queries they pair with."""
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


def _pair_by_prompt(mask: torch.Tensor, index: dict[str, slice], spatial_prompt: torch.Tensor | None,
                    token_prompt: torch.Tensor | None, memory_prompt: torch.Tensor | None) -> None:
    """Spatial queries, their tokens (`token_prompt`: None without them) and memories see only
    those of their own prompt."""
    sp, tp = spatial_prompt, token_prompt
    if tp is not None:
        mask[:, index[SPATIAL], index[SPATIAL]] = (sp[:, None] != sp[None, :])[None]
        mask[:, index[SPATIAL], index[STOKENS]] = sp[None, :, None] != tp[:, None, :]
        mask[:, index[STOKENS], index[STOKENS]] = tp[:, :, None] != tp[:, None, :]
    if MEMORY in index:
        mp = memory_prompt
        mask[:, index[SPATIAL], index[MEMORY]] = (sp[:, None] != mp[None, :])[None]
        mask[:, index[MEMORY], index[MEMORY]] = (mp[:, None] != mp[None, :])[None]


def _level_resampler(resamplers: dict[tuple[int, int], LevelResampler], mask_features: torch.Tensor,
                     size: tuple[int, int]) -> LevelResampler:
    """The resampler of `size` in `resamplers`, made (and kept there) on first use."""
    if size not in resamplers:
        resamplers[size] = LevelResampler(mask_features, size)
    return resamplers[size]


@dataclass
class ImageDecoderCache:
    """The decoder's work on one image that no prompt changes, kept between calls on it.

    - `projections[i]`: layer i's key and value projections of its feature level. They are
      the largest prompt-independent cost of a call with many queries (a phrase's 101
      grounding queries: ~40% of it for Focal-T) and are only made where a call projects
      them anyway, so a click (attention in the keys' input space) neither fills nor reads them.
    - `resamplers`: the mask features resized to each level size, for many-query rounds.
    Everything is computed exactly as an uncached call computes it, so a call answers the same
    with and without the cache. One image (batch 1), inference only.
    """

    projections: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    resamplers: dict[tuple[int, int], LevelResampler] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = [t for kv in self.projections.values() for t in kv.values()]
        tensors += [r.resized for r in self.resamplers.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _DecoderRun:
    """What one forward pass carries from layer to layer."""

    mask_features: torch.Tensor
    mask_axes: MaskAxes | None  # the frame of `mask_features` (None: channels)
    grounding: GroundingInput | None
    spatial: SpatialInput | None
    sizes: list[tuple[int, int]]  # per level
    values: list[torch.Tensor]  # per level, B x HW x C
    keys: list[torch.Tensor]  # per level, values + positional encoding
    content: dict[str, torch.Tensor] = field(default_factory=dict)  # per group, B x N x C
    qpos: dict[str, torch.Tensor] = field(default_factory=dict)
    cross_names: list[str] = field(default_factory=list)
    head_names: list[str] = field(default_factory=list)
    spatial_prompt: torch.Tensor | None = None  # prompt index of each spatial query
    spatial_first: torch.Tensor | None = None  # first spatial query equal to each one (None: all differ)
    memory_prompt: torch.Tensor | None = None  # num_layers x M
    memory_masks: list[torch.Tensor] | None = None  # per level, B x ns x h*w
    resamplers: dict[tuple[int, int], LevelResampler] = field(default_factory=dict)  # per level size
    image_cache: ImageDecoderCache | None = None
    self_masks: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)  # (mask, rows)
    output: DecoderOutput = field(default_factory=DecoderOutput)


class SeemDecoder(nn.Module):
    # How prompt pixels are drawn (decoder_v0.py has v0's draw).
    draw_prompt_points = staticmethod(draw_prompt_points)

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
        return [self._level_source(m, l) for l, m in enumerate(multi_scale)]

    def _level_source(self, m: torch.Tensor, level: int) -> torch.Tensor:
        return m + self.level_embed.weight[level][None, :, None, None]

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
        image_cache: ImageDecoderCache | None = None,
        mask_axes: MaskAxes | None = None,
    ) -> DecoderOutput:
        """multi_scale: 3 maps B x C x h_l x w_l (strides 32, 16, 8); mask_features B x C x H x W,
        in the frame of `mask_axes` (None: channels; model.mask_axes), which the output's mask
        embeddings are then in too.

        full_masks: "final" computes stride-4 masks for the last round only (intermediate
        rounds only need them at the next level's size); "all" for every round (deep
        supervision, parity); "none" for no round, for callers that keep a few of many
        queries and compute those queries' masks themselves (`mask_logits`).
        image_cache: what this image's earlier calls kept (`ImageDecoderCache`; one image).
        """
        if full_masks not in ("final", "all", "none"):
            raise ValueError("full_masks must be 'final', 'all' or 'none'")
        if not (object_queries or grounding is not None or spatial is not None):
            raise ValueError("nothing to decode: no object queries and no prompt")
        if image_cache is not None and mask_features.shape[0] != 1:
            raise ValueError("an image cache serves one image: batch size 1")
        run = self._start(multi_scale, mask_features, mask_axes, object_queries, grounding, spatial)
        if image_cache is not None:
            run.image_cache, run.resamplers = image_cache, image_cache.resamplers
        num_layers = self.cfg.num_layers
        final = full_masks != "none"
        attn_mask = self._heads(run, 0, full_masks == "all" or (final and num_layers == 0))
        for i in range(num_layers):
            self._layer(run, i, attn_mask)
            last = i == num_layers - 1
            attn_mask = self._heads(run, (i + 1) % self.cfg.num_feature_levels, (last and final) or full_masks == "all")
        return run.output

    @staticmethod
    def mask_logits(mask_emb: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """Stride-4 mask logits of some queries (what `HeadOutput.masks` holds for them):
        mask_emb B x N x C, mask_features B x C x H x W -> B x N x H x W."""
        return PredictionHeads.mask_logits(mask_emb, mask_features)

    def fill_image_cache(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor,
                         cache: ImageDecoderCache, layers: list[int] | None = None) -> None:
        """Compute now what a many-query call on this image keeps in `cache` (the key and value
        projections of `layers`, default all, and the mask features at every level size),
        exactly as that call computes them: e.g. while a server is idle, so that the image's
        first phrase finds them. One image (batch 1), inference only."""
        if mask_features.shape[0] != 1:
            raise ValueError("an image cache serves one image: batch size 1")
        levels = self.cfg.num_feature_levels
        layers = list(range(self.cfg.num_layers)) if layers is None else layers
        for level in sorted({i % levels for i in layers}):
            value, key = self._level_memory(multi_scale, level)
            for i in (i for i in layers if i % levels == level):
                attn = self.transformer_cross_attention_layers[i].multihead_attn
                attn.project_memory(key, value, cache.projections.setdefault(i, {}))
        for m in multi_scale:
            _level_resampler(cache.resamplers, mask_features, tuple(m.shape[-2:]))

    def _level_memory(self, multi_scale: list[torch.Tensor], level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Level `level` as the cross-attention's memory: values (B x HW x C) and keys (values +
        the positional encoding)."""
        m = multi_scale[level]
        value = self._level_source(m, level).flatten(2).transpose(1, 2)
        return value, value + self.pe_layer(m).flatten(2).transpose(1, 2)

    def _start(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor, mask_axes: MaskAxes | None,
               object_queries: bool, grounding: GroundingInput | None, spatial: SpatialInput | None) -> "_DecoderRun":
        """Per-level keys and values, the query groups and the memories' masks of one forward."""
        memory = [self._level_memory(multi_scale, level) for level in range(len(multi_scale))]
        run = _DecoderRun(
            mask_features=mask_features, mask_axes=mask_axes, grounding=grounding, spatial=spatial,
            sizes=[tuple(m.shape[-2:]) for m in multi_scale], values=[v for v, _ in memory],
            keys=[k for _, k in memory])
        self._set_up_queries(run, object_queries)
        if MEMORY in run.content:
            self._set_up_memories(run)
        return run

    def _set_up_queries(self, run: "_DecoderRun", object_queries: bool) -> None:
        """Query groups: content and positional embedding, B x N x C each."""
        bs = run.mask_features.shape[0]
        content, qpos = run.content, run.qpos
        base_c = self.query_feat.weight[None].expand(bs, -1, -1)
        base_p = self.query_embed.weight[None].expand(bs, -1, -1)
        if object_queries:
            content[OBJECT], qpos[OBJECT] = base_c, base_p
        if run.grounding is not None:
            content[GROUNDING], qpos[GROUNDING] = base_c, base_p
            content[GTOKENS] = run.grounding.tokens
            qpos[GTOKENS] = run.grounding.tokens.detach()
        spatial = run.spatial
        if spatial is not None:
            src = spatial.query_source
            if src.dim() == 1:
                content[SPATIAL] = self.query_feat.weight[src][None].expand(bs, -1, -1)
                qpos[SPATIAL] = self.query_embed.weight[src][None].expand(bs, -1, -1)
            else:
                content[SPATIAL], qpos[SPATIAL] = self.query_feat.weight[src], self.query_embed.weight[src]
            run.spatial_prompt = torch.arange(spatial.num_prompts, device=run.mask_features.device).repeat_interleave(
                self.cfg.queries_per_prompt)
            run.spatial_first = _first_duplicates(src.to(run.spatial_prompt.device), run.spatial_prompt)
            if spatial.prev_mask is not None:
                content[MEMORY] = self.spatial_featured.weight[None].expand(bs, -1, -1)
                qpos[MEMORY] = self.spatial_embed.weight[None].expand(bs, -1, -1)
        run.cross_names = [n for n in (OBJECT, GROUNDING, SPATIAL, MEMORY) if n in content]
        run.head_names = [n for n in run.cross_names if n != MEMORY]  # memories' masks are never used

    def _set_up_memories(self, run: "_DecoderRun") -> None:
        """Which prompt each memory serves per layer, and its cross-attention mask per level:
        blocked outside the previous round's mask of that prompt."""
        spatial = run.spatial
        memory_prompt = spatial.memory_prompt
        if memory_prompt is None:
            memory_prompt = self.draw_memory_assignment(spatial.num_prompts)
        memory_prompt = memory_prompt.to(run.mask_features.device)
        if memory_prompt.dim() == 1:
            memory_prompt = memory_prompt[None].expand(self.cfg.num_layers, -1)
        run.memory_prompt = memory_prompt
        run.memory_masks = []
        for size in run.sizes:
            prev = resize_bilinear(spatial.prev_mask, size)
            run.memory_masks.append((prev.sigmoid() < 0.5).flatten(2))

    def _heads(self, run: "_DecoderRun", next_level: int, full: bool) -> torch.Tensor:
        """Heads on the cross-attention groups (one round of the output); returns the next
        layer's attention mask, B x N x h*w at `next_level`'s size, True = blocked."""
        names = run.head_names
        sizes_q = [run.content[n].shape[1] for n in names]
        x = torch.cat([run.content[n] for n in names], dim=1)
        # With few queries the stride-4 masks are cheaper than gathering the map's rows.
        stride4 = full or sum(sizes_q) <= self.STRIDE4_QUERY_LIMIT
        heads = self.heads(x, run.mask_features if stride4 else None, run.mask_axes)
        size = run.sizes[next_level]
        if stride4:
            level_masks = resize_bilinear(heads.masks, size)
            if not full:
                heads.masks = None
        else:
            level_masks = _level_resampler(run.resamplers, run.mask_features, size)(heads.mask_emb)
        # torch.split: one backward node per tensor instead of one per group slice.
        class_emb = heads.class_emb.split(sizes_q, dim=1)
        mask_emb = heads.mask_emb.split(sizes_q, dim=1)
        masks = heads.masks.split(sizes_q, dim=1) if heads.masks is not None else [None] * len(names)
        round_out = {n: HeadOutput(c, e, m) for n, c, e, m in zip(names, class_emb, mask_emb, masks)}
        if SPATIAL in round_out and run.spatial_first is not None:
            # Spatial queries drawn from the same object query for the same prompt are equal in
            # exact arithmetic; the kernels may round their rows differently, so copy the first:
            # ties between them then break as in the reference (the first one wins).
            s = round_out[SPATIAL]
            round_out[SPATIAL] = HeadOutput(*(None if t is None else _take_rows(t, run.spatial_first)
                                              for t in (s.class_emb, s.mask_emb, s.masks)))
        run.output.rounds.append(round_out)
        return (level_masks.sigmoid() < 0.5).flatten(2).detach()

    def _layer(self, run: "_DecoderRun", i: int, attn_mask: torch.Tensor) -> None:
        """Decoder layer i: cross-attention to level i % levels, self-attention, FFN."""
        level = i % self.cfg.num_feature_levels
        content, qpos = run.content, run.qpos
        mask = attn_mask
        if run.memory_masks is not None:
            mask = torch.cat([mask, run.memory_masks[level][:, run.memory_prompt[i]]], dim=1)
        mask = mask & ~mask.all(-1, keepdim=True)  # an all-blocked row attends everywhere
        names = run.cross_names
        x = torch.cat([content[n] for n in names], dim=1)
        pos = torch.cat([qpos[n] for n in names], dim=1)
        projections = None if run.image_cache is None else run.image_cache.projections.setdefault(i, {})
        x = self.transformer_cross_attention_layers[i](x, run.keys[level], run.values[level], pos, mask[:, None],
                                                       projections)
        content.update(zip(names, x.split([content[n].shape[1] for n in names], dim=1)))

        spatial = run.spatial
        if spatial is not None:
            content[STOKENS] = spatial.tokens[level]
            qpos[STOKENS] = spatial.tokens[level].detach()
        names = [n for n in (OBJECT, GROUNDING, SPATIAL, GTOKENS, STOKENS, MEMORY) if n in content]
        # Spatial tokens are keys and values only: their own outputs are dropped after the
        # layer, so their rows skip the attention output and the FFN.
        kept = [n for n in names if n != STOKENS]
        layer_memory = None if run.memory_prompt is None else run.memory_prompt[i]
        # The pattern depends on the level (its spatial tokens) and the layer's memory draw only.
        mask_key = (level, None if layer_memory is None else tuple(layer_memory.tolist()))
        if mask_key not in run.self_masks:
            mask = self._self_attention_mask(names, content, run.grounding, spatial, run.spatial_prompt,
                                             layer_memory, level)
            rows = self._kept_rows(names, kept, content, mask.device)
            run.self_masks[mask_key] = (mask if rows is None else mask[:, rows], rows)
        mask, rows = run.self_masks[mask_key]
        x = torch.cat([content[n] for n in names], dim=1)
        pos = torch.cat([qpos[n] for n in names], dim=1)
        x = self.transformer_self_attention_layers[i](x, pos, mask[:, None], rows)
        x = self.transformer_ffn_layers[i](x)
        content.update(zip(kept, x.split([content[n].shape[1] for n in kept], dim=1)))
        content.pop(STOKENS, None)  # spatial tokens are re-inserted fresh at the next layer
        qpos.pop(STOKENS, None)

    @staticmethod
    def _kept_rows(names: list[str], kept: list[str], content: dict[str, torch.Tensor],
                   device: torch.device) -> torch.Tensor | None:
        """Indices of the rows of groups `kept` in the concatenation of `names` (None: all)."""
        if kept == names:
            return None
        rows, start = [], 0
        for n in names:
            size = content[n].shape[1]
            if n in kept:
                rows.append(torch.arange(start, start + size, device=device))
            start += size
        return torch.cat(rows)

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
        mask = torch.ones((bs, start, start), dtype=torch.bool, device=content[names[0]].device)
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
        _block_padding(mask, index, allowed, padding)
        token_prompt = spatial.token_prompt[level] if SPATIAL in index and STOKENS in index else None
        _pair_by_prompt(mask, index, spatial_prompt, token_prompt, memory_prompt)
        return mask
