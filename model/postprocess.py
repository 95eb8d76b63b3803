"""The reference's post-processing: from stride-4 mask logits to original-image results.

Geometry: masks live at stride 4 of the padded input. They are upsampled bilinearly to the
padded size, cropped to the resized image, then resized to the original size with
bicubic + antialias (generic and grounding outputs) or bilinear (interactive outputs).
Inference rules (semantic, panoptic, instance) follow the reference's evaluation code,
with the no-object class taken as the vocabulary's last column ("background").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def to_original(masks: torch.Tensor, padded_size: tuple[int, int], input_size: tuple[int, int],
                original_size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """N x H/4 x W/4 logits -> N x H0 x W0 logits.

    mode "bicubic" (with antialias) is the reference's generic/grounding path, "bilinear"
    its interactive path.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *original_size))
    x = F.interpolate(masks[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : input_size[0], : input_size[1]]
    if mode == "bicubic":
        x = F.interpolate(x, size=original_size, mode="bicubic", align_corners=False, antialias=True)
    elif mode == "bilinear":
        x = F.interpolate(x, size=original_size, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return x[0]


INSIDE_FRACTION = 0.9  # of a negative prompt's pixels, for `negated_pieces`


def negated_pieces(mask: np.ndarray, positive: np.ndarray, negatives: Sequence[np.ndarray]) -> np.ndarray:
    """The 8-connected pieces of `mask` that a negative prompt is inside of and that no
    positive prompt touches (H x W bools, all in the mask's pixels).

    A negative prompt is inside a piece when at least 90% of its pixels lie in it (all 9 of
    a click's): a click a user puts on a thing they do not want, not one at the edge of a
    mask they keep, whose square also covers pixels outside it.
    """
    out = np.zeros_like(mask, dtype=bool)
    if not any((mask & n).any() for n in negatives):
        return out
    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    kept = set(np.unique(pieces[positive & mask]).tolist())
    negated: set[int] = set()
    for n in negatives:
        ids, counts = np.unique(pieces[n], return_counts=True)
        inside = (int(i) for i, c in zip(ids, counts) if i != 0 and c >= INSIDE_FRACTION * n.sum())
        negated.update(i for i in inside if i not in kept)
    if negated:
        out = np.isin(pieces, sorted(negated))
    return out


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Q x (K+1), Q x H x W -> K x H x W soft semantic map."""
    probs = class_logits.softmax(-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_logits.sigmoid())


def panoptic_keep(class_logits: torch.Tensor, object_mask_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries that enter the panoptic merge: (indices, scores, labels).

    A query is kept when its best class is not no-object (the last column) and its softmax
    score exceeds the threshold; only these masks need to be brought to full size.
    """
    scores, labels = class_logits.softmax(-1).max(-1)
    no_object = class_logits.shape[-1] - 1
    keep = (labels != no_object) & (scores > object_mask_threshold)
    idx = keep.nonzero().flatten()
    return idx, scores[idx], labels[idx]


def panoptic_merge(scores: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor,
                   is_thing: list[bool], overlap_threshold: float) -> tuple[torch.Tensor, list[dict]]:
    """The reference's panoptic merge of kept queries (already at output size).

    scores, labels: N; mask_logits: N x H x W; is_thing[k] for class k.
    -> (segment map H x W int32, 0 = void, ids from 1; segments with id, isthing,
    category_id, query (index into the kept queries), score).
    """
    h, w = mask_logits.shape[-2:]
    segment_map = torch.zeros((h, w), dtype=torch.int32, device=mask_logits.device)
    segments: list[dict] = []
    if mask_logits.shape[0] == 0:
        return segment_map, segments
    probs = mask_logits.sigmoid()
    owner = (scores.view(-1, 1, 1) * probs).argmax(0)
    stuff_ids: dict[int, int] = {}
    next_id = 0
    for k in range(labels.shape[0]):
        label = int(labels[k])
        thing = bool(is_thing[label])
        owned = owner == k
        confident = probs[k] >= 0.5
        mask = owned & confident
        mask_area = int(owned.sum())
        original_area = int(confident.sum())
        if mask_area == 0 or original_area == 0 or int(mask.sum()) == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not thing and label in stuff_ids:
            segment_map[mask] = stuff_ids[label]  # stuff of one class is one segment
            continue
        next_id += 1
        if not thing:
            stuff_ids[label] = next_id
        segment_map[mask] = next_id
        segments.append({"id": next_id, "isthing": thing, "category_id": label, "query": k,
                         "score": float(scores[k])})
    return segment_map, segments


def instance_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, top_k: int,
                       is_thing: list[bool] | None) -> dict[str, torch.Tensor]:
    """Top-k (query, class) pairs over the Q x K softmax (no-object dropped).

    With a panoptic vocabulary only thing classes are kept. Masks are logits > 0 and the
    score is the class probability times the mean mask probability inside the mask.
    """
    q, k1 = class_logits.shape
    k = k1 - 1
    probs = class_logits.softmax(-1)[:, :-1].flatten()
    top_k = min(top_k, probs.numel())
    scores, flat = probs.topk(top_k, sorted=False)
    labels = flat % k
    queries = flat // k
    if is_thing is not None:
        keep = torch.tensor([bool(is_thing[int(c)]) for c in labels], dtype=torch.bool, device=labels.device)
        scores, labels, queries = scores[keep], labels[keep], queries[keep]
    masks = mask_logits[queries] > 0
    mean_prob = (mask_logits[queries].sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    return {"scores": scores * mean_prob, "labels": labels, "queries": queries, "masks": masks}


def grounding_scores(class_emb: torch.Tensor, phrase_emb: torch.Tensor, logit_scale: torch.Tensor,
                     temperature_max: float = 100.0) -> torch.Tensor:
    """min(exp(logit_scale), 100) * cos(query class embeddings, phrase embeddings): Q x P."""
    v = class_emb / (class_emb.norm(dim=-1, keepdim=True) + 1e-7)
    t = phrase_emb / (phrase_emb.norm(dim=-1, keepdim=True) + 1e-7)
    return torch.clamp(logit_scale.exp(), max=temperature_max) * v @ t.t()


def spatial_selection_logits(mask_emb: torch.Tensor, pos_embed: torch.Tensor, queries_per_prompt: int) -> torch.Tensor:
    """(ns*q) x ns: mask embedding . positive-point embedding, -inf outside the query's prompt."""
    ns = pos_embed.shape[0]
    if mask_emb.requires_grad:
        # Training: every query keeps its own gradient (torch.unique has no derivative), and
        # ties between twin queries do not matter to a loss.
        logits = mask_emb @ pos_embed.t()
    else:
        # Equal rows (queries drawn from the same object query) get bitwise-equal logits, so
        # an argmax over them picks the first, as the reference does.
        rows, inverse = torch.unique(mask_emb, dim=0, return_inverse=True)
        logits = (rows @ pos_embed.t())[inverse]
    own = torch.eye(ns, dtype=torch.bool, device=mask_emb.device).repeat_interleave(queries_per_prompt, dim=0)
    return logits.masked_fill(~own, float("-inf"))
