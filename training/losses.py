"""SEEM's training loss: panoptic, referring and interactive terms on every decoder round.

- object queries: Hungarian matching (scipy) of queries to ground-truth segments with
  cost = class * (-p[class]) + mask * BCE + dice * Dice on random points; loss = class
  cross-entropy (no-object down-weighted) + mask BCE + Dice on the matched pairs;
- grounding queries: each phrase is matched to one query (cost: -softmax over queries of
  the query-phrase similarity + mask costs); loss = cross-entropy over queries of that
  similarity (what inference's argmax selects by) + mask BCE + Dice;
- spatial queries: each prompt is matched to one of its own queries (cost: -softmax of the
  selection logits + mask costs); loss = cross-entropy over its queries of the selection
  logits + mask BCE + Dice.
Mask losses are computed on points, as Mask2Former does: a few uniformly random points
and many where the prediction is most uncertain, with targets read from the full-resolution
ground truth (sub-stride supervision). Every round (the learnable queries and each layer)
gets the same loss (deep supervision).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass
class LossWeights:
    """Weights of each term; the reference's values for the official models."""

    object_class: float = 2.0
    object_mask: float = 5.0
    object_dice: float = 5.0
    no_object: float = 0.1  # class weight of "background" in the object cross-entropy
    grounding_class: float = 0.4
    grounding_mask: float = 1.0
    grounding_dice: float = 1.0
    spatial_class: float = 0.4
    spatial_mask: float = 1.0
    spatial_dice: float = 1.0
    # Matching costs (the reference's COST_SPATIAL for spatial prompts).
    match_class: float = 2.0
    match_mask: float = 5.0
    match_dice: float = 5.0
    spatial_match_class: float = 5.0
    spatial_match_mask: float = 2.0
    spatial_match_dice: float = 2.0
    num_points: int = 3136
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    match_points: int = 1024


def point_sample(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """masks N x H x W, coords N x P x 2 in [0, 1] (x, y) -> N x P (bilinear, align_corners False)."""
    grid = 2.0 * coords[:, :, None, :] - 1.0
    return F.grid_sample(masks[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_points(logits: torch.Tensor, num_points: int, oversample: float, importance: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask2Former's point choice: of `oversample * P` random points keep the
    `importance * P` with logits closest to 0, and fill up with uniform random points."""
    n = logits.shape[0]
    sampled = int(num_points * oversample)
    coords = torch.rand(n, sampled, 2, generator=generator, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()
    k = int(importance * num_points)
    idx = uncertainty.topk(k, dim=1).indices
    chosen = torch.gather(coords, 1, idx[:, :, None].expand(-1, -1, 2))
    rest = torch.rand(n, num_points - k, 2, generator=generator, device=logits.device)
    return torch.cat([chosen, rest], dim=1)


def sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over points, summed over masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum()


def dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid()
    num = 2 * (p * targets).sum(1)
    den = p.sum(1) + targets.sum(1)
    return (1 - (num + 1) / (den + 1)).sum()


def pairwise_mask_costs(pred: torch.Tensor, target: torch.Tensor, num_points: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and Dice costs between every prediction (N x H x W logits) and every target
    (M x H' x W' float) on shared random points: N x M each."""
    coords = torch.rand(1, num_points, 2, generator=generator, device=pred.device)
    p = point_sample(pred, coords.expand(pred.shape[0], -1, -1))
    t = point_sample(target, coords.expand(target.shape[0], -1, -1))
    neg = F.softplus(p)  # BCE against 0; against 1 it is softplus(p) - p
    bce = ((neg - p) @ t.t() + neg @ (1 - t).t()) / num_points
    s = p.sigmoid()
    dice_cost = 1 - (2 * s @ t.t() + 1) / (s.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
    return bce, dice_cost


def mask_losses(pred: torch.Tensor, target: torch.Tensor, w: LossWeights, num_masks: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-sampled BCE and Dice between matched predictions and targets (N x H x W each)."""
    if pred.shape[0] == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    with torch.no_grad():
        coords = uncertain_points(pred.detach(), w.num_points, w.oversample_ratio, w.importance_sample_ratio, generator)
        labels = point_sample(target, coords)
    logits = point_sample(pred, coords)
    return sigmoid_ce(logits, labels) / num_masks, dice(logits, labels) / num_masks


@dataclass
class RoundPrediction:
    """One decoder round's predictions for one image (what the loss needs)."""

    object_logits: torch.Tensor | None = None  # Q x (K+1)
    object_masks: torch.Tensor | None = None  # Q x H x W
    grounding_scores: torch.Tensor | None = None  # Q x P (temperature * cos)
    grounding_masks: torch.Tensor | None = None  # Q x H x W
    spatial_selection: torch.Tensor | None = None  # (T*q) x T, -inf outside own prompt
    spatial_masks: torch.Tensor | None = None  # (T*q) x H x W


@dataclass
class Targets:
    """Ground truth of one image at the padded input size (float masks)."""

    masks: torch.Tensor  # S x Hp x Wp
    labels: torch.Tensor  # S
    phrase_masks: torch.Tensor  # P x Hp x Wp
    prompt_masks: torch.Tensor  # T x Hp x Wp


class SeemCriterion:
    def __init__(self, weights: LossWeights, num_classes: int) -> None:
        self.w = weights
        self.num_classes = num_classes
        self.class_weight = torch.ones(num_classes + 1)
        self.class_weight[-1] = weights.no_object

    def _match(self, cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)

    def __call__(self, rounds: list[list[RoundPrediction]], targets: list[Targets],
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """rounds[r][b]: round r, image b. Returns each term summed over rounds, and "loss"."""
        w = self.w
        totals: dict[str, torch.Tensor] = {}
        n_obj = max(1.0, float(sum(t.masks.shape[0] for t in targets)))
        n_img = float(len(targets))
        n_grd = max(1.0, float(sum(t.phrase_masks.shape[0] for t in targets)))
        n_spa = max(1.0, float(sum(t.prompt_masks.shape[0] for t in targets)))

        def add(name: str, value: torch.Tensor) -> None:
            totals[name] = totals.get(name, 0.0) + value

        for per_image in rounds:
            for pred, tgt in zip(per_image, targets):
                if pred.object_logits is not None:
                    self._object_terms(pred, tgt, n_obj, n_img, add, generator)
                if pred.grounding_scores is not None and tgt.phrase_masks.shape[0] > 0:
                    self._grounding_terms(pred, tgt, n_grd, add, generator)
                if pred.spatial_selection is not None and tgt.prompt_masks.shape[0] > 0:
                    self._spatial_terms(pred, tgt, n_spa, add, generator)
        weighted = {
            "object_class": w.object_class, "object_mask": w.object_mask, "object_dice": w.object_dice,
            "grounding_class": w.grounding_class, "grounding_mask": w.grounding_mask, "grounding_dice": w.grounding_dice,
            "spatial_class": w.spatial_class, "spatial_mask": w.spatial_mask, "spatial_dice": w.spatial_dice,
        }
        totals["loss"] = sum(weighted[k] * v for k, v in totals.items() if k in weighted)
        return totals

    def _object_terms(self, pred: RoundPrediction, tgt: Targets, n: float, n_img: float, add, generator) -> None:
        w = self.w
        logits, masks = pred.object_logits, pred.object_masks
        target_classes = torch.full((logits.shape[0],), self.num_classes, dtype=torch.long, device=logits.device)
        if tgt.masks.shape[0] > 0:
            with torch.no_grad():
                prob = logits.softmax(-1)[:, tgt.labels]
                bce, dice_cost = pairwise_mask_costs(masks, tgt.masks, w.match_points, generator)
                cost = w.match_class * -prob + w.match_mask * bce + w.match_dice * dice_cost
            q, s = self._match(cost)
            target_classes[q] = tgt.labels[s]
            m_bce, m_dice = mask_losses(masks[q], tgt.masks[s], w, n, generator)
            add("object_mask", m_bce)
            add("object_dice", m_dice)
        # Weighted cross-entropy over the queries, averaged over the batch's images.
        ce = F.cross_entropy(logits, target_classes, weight=self.class_weight.to(logits.device))
        add("object_class", ce / n_img)

    def _grounding_terms(self, pred: RoundPrediction, tgt: Targets, n: float, add, generator) -> None:
        w = self.w
        scores, masks = pred.grounding_scores, pred.grounding_masks  # Q x P, Q x H x W
        with torch.no_grad():
            bce, dice_cost = pairwise_mask_costs(masks, tgt.phrase_masks, w.match_points, generator)
            cost = w.match_class * -scores.softmax(0) + w.match_mask * bce + w.match_dice * dice_cost
        q, p = self._match(cost)
        # Each phrase: cross-entropy over the queries, the matched query being right.
        add("grounding_class", F.cross_entropy(scores.t()[p], q, reduction="sum") / n)
        m_bce, m_dice = mask_losses(masks[q], tgt.phrase_masks[p], w, n, generator)
        add("grounding_mask", m_bce)
        add("grounding_dice", m_dice)

    def _spatial_terms(self, pred: RoundPrediction, tgt: Targets, n: float, add, generator) -> None:
        w = self.w
        sel, masks = pred.spatial_selection, pred.spatial_masks  # (T*q) x T, (T*q) x H x W
        t_count = tgt.prompt_masks.shape[0]
        qpp = sel.shape[0] // sel.shape[1]
        queries, targets = [], []
        for t in range(t_count):
            own = slice(t * qpp, (t + 1) * qpp)
            with torch.no_grad():
                bce, dice_cost = pairwise_mask_costs(masks[own], tgt.prompt_masks[t:t + 1], w.match_points, generator)
                cost = (w.spatial_match_class * -sel[own, t].softmax(0)[:, None]
                        + w.spatial_match_mask * bce + w.spatial_match_dice * dice_cost)
            best = int(cost[:, 0].argmin())
            add("spatial_class", F.cross_entropy(sel[own, t][None], torch.tensor([best], device=sel.device)) / n)
            queries.append(t * qpp + best)
            targets.append(t)
        m_bce, m_dice = mask_losses(masks[queries], tgt.prompt_masks[targets], w, n, generator)
        add("spatial_mask", m_bce)
        add("spatial_dice", m_dice)
