"""`seem parity` for the v0 decoder's spatial cases (fixtures made with seem_model_v0).

A v0 case holds one prompt (its positive masks merge into one), the seed of the reference's
global RNG before the call (`rng_seed`: v0 draws only a random permutation, and only for a
prompt of more than `max_spatial_len` pixels), and, for the referring-image route, the
reference image (`ref_image`) that the prompt masks are drawn on: its spatial tokens and
positive embedding then come from that image and the decoder runs on the fixture's image.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .decoder import OBJECT, SPATIAL
from .postprocess import to_original

if TYPE_CHECKING:
    from .parity import FixtureRunner

# Case inputs of v0 fixtures, in addition to parity.INPUT_KEYS.
V0_INPUT_KEYS = {"rng_seed", "ref_image"}


def run_spatial_v0(runner: "FixtureRunner", case: str, d: dict) -> None:
    """One v0 spatial case: tokens (from the fixture image or the reference image), the
    decoder with every object query as a spatial query, the reference's selection."""
    from .parity import _pad_masks

    m = runner.model
    pos = _pad_masks(d["pos_mask"], runner.padded_size)
    neg = _pad_masks(d["neg_mask"], runner.padded_size)
    generator = torch.Generator().manual_seed(int(d["rng_seed"]))
    if "ref_image" in d:
        pixels = m.normalize_and_pad([torch.from_numpy(d["ref_image"]).permute(2, 0, 1)])
        mask_features, multi_scale = m.encode_image(pixels)
    else:
        mask_features, multi_scale = runner.mask_features, runner.multi_scale
    tokens = m.spatial_tokens(pos, neg, mask_features[0], [x[0] for x in multi_scale], generator)
    prev = torch.from_numpy(d["prev_mask_in"]) if "prev_mask_in" in d else None
    memory = m.decoder.draw_memory_assignment(1) if prev is not None else None
    spatial = m.spatial_input([tokens], m.decoder.draw_query_sources(1), prev_mask=prev, memory_prompt=memory)
    out = m.decoder(runner.multi_scale, runner.mask_features, object_queries=True, spatial=spatial)
    s, obj = out.final[SPATIAL], out.final[OBJECT]
    sel = s.mask_emb[0] @ spatial.pos_embed[0].t()  # Q x 1
    selected = sel[:, 0].argmax()[None]
    prev_mask = s.masks[0, selected]
    final_logits = to_original(prev_mask, runner.padded_size, runner.input_size, runner.original_size, "bilinear")
    mine = {"pred_smasks": s.masks, "pred_smaskembs": s.mask_emb,
            "pred_pspatials": spatial.pos_embed, "pred_nspatials": spatial.neg_embed,
            "pred_logits": m.class_logits(obj.class_emb, runner.vocab_emb), "pred_masks": obj.masks,
            "selection_logits": sel[None], "selected_query": selected, "prev_mask": prev_mask[None],
            "final_mask_logits": final_logits, "final_mask": final_logits.sigmoid() > 0.5}
    nq, mem = m.cfg.decoder.num_queries, m.cfg.decoder.spatial_memories
    layout = {"queries_object": [0, nq], "queries_spatial": [nq, 2 * nq]}
    if prev is not None:
        layout["memories_spatial"] = [2 * nq, 2 * nq + mem]
    runner._compare_all(case, d, mine, layout=layout)
