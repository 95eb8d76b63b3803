"""`seem train`: trains SEEM (seem-tiny by default) on Ray Train's TorchTrainer.

One training step, as the reference trains SEEM v1:
1. encode the batch (backbone + pixel decoder);
2. interactive rounds without gradient: for a random number of rounds (0..max_rounds) the
   decoder answers the current visual prompts, the reference's click simulator adds a
   positive or negative click on each prompt's largest error, and the answer becomes the
   next round's memory prompt;
3. one decoder pass with gradient over object queries (panoptic), grounding queries (the
   image's referring phrases) and spatial queries (the prompts, with memories);
4. the loss of `training/losses.py` on every round of that pass.
The same loop runs on one CPU worker here and on N GPU workers of a cluster; checkpoints
go to a local folder or S3 and a run with the same name resumes from its last one.
"""
from __future__ import annotations

import functools
import json
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from model.build import build_model
from model.checkpoint import load_checkpoint, save_checkpoint
from model.decoder import GROUNDING, OBJECT, SPATIAL, GroundingInput
from model.postprocess import grounding_scores, spatial_selection_logits
from model.seem import Seem
from model.text_encoder import BACKGROUND, PROMPT_TEMPLATES, clean_class_name

from .data import Batch, CocoBatches, ShapesWorldBatches, simulate_click
from .losses import LossWeights, RoundPrediction, SeemCriterion, Targets


@dataclass
class TrainConfig:
    model: str = "seem-tiny"
    init_weights: str | None = None  # start from these weights (fine-tuning); None = random
    steps: int = 20000
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    max_rounds: int = 2  # interactive rounds simulated without gradient (0..max_rounds; the reference: 1)
    seed: int = 0
    dataset: str = "shapes-world"  # or a COCO annotations JSON
    lookalike_fraction: float = 0.0  # Shapes World: share of scenes with prompts on look-alike things
    images: str | None = None  # COCO image folder (default: beside the JSON)
    checkpoint_every: int = 500
    log_every: int = 20
    threads: int = 0  # torch threads per worker (0: the worker's CPU share)
    repeat_batches: int = 0  # > 0: cycle through the first N batches (overfitting smoke runs)
    loss: LossWeights = field(default_factory=LossWeights)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        loss = LossWeights(**data.pop("loss", {}))
        return cls(loss=loss, **data)


class TrainingModel(nn.Module):
    """SEEM plus the training forward (a module so DDP sees one forward per step)."""

    def __init__(self, seem: Seem, cfg: TrainConfig) -> None:
        super().__init__()
        self.seem = seem
        self.cfg = cfg

    # ---------------------------------------------------------------- text
    def vocabulary_embeddings(self, names: tuple[str, ...], rng: random.Random) -> torch.Tensor:
        """One random template per class (as the reference trains), normalised; background last."""
        prompts = [PROMPT_TEMPLATES[rng.randrange(len(PROMPT_TEMPLATES))].format(clean_class_name(n))
                   for n in (*names, BACKGROUND)]
        return self.seem.text_encoder.encode_sentences(prompts)

    def grounding(self, batch: Batch) -> tuple[GroundingInput | None, list[torch.Tensor]]:
        te = self.seem.text_encoder
        per_image, sentences = [], []
        for s in batch.samples:
            parts = [te.phrase_tokens(t) for t in s.phrases]
            per_image.append(torch.cat([p[0] for p in parts]) if parts else None)
            sentences.append(torch.stack([p[1] for p in parts]) if parts else None)
        if all(t is None for t in per_image):
            return None, sentences
        length = max(t.shape[0] for t in per_image if t is not None)
        d = next(t for t in per_image if t is not None).shape[1]
        tokens = torch.zeros((len(per_image), length, d), device=self.seem.device)
        padding = torch.ones((len(per_image), length), dtype=torch.bool, device=self.seem.device)
        for b, t in enumerate(per_image):
            if t is not None:
                tokens[b, : t.shape[0]] = t
                padding[b, : t.shape[0]] = False
        return GroundingInput(tokens, padding), sentences

    # ---------------------------------------------------------------- forward
    def forward(self, batch: Batch, generator: torch.Generator, rng: random.Random):
        seem = self.seem
        dev = seem.device
        pixels = seem.normalize_and_pad([s.image for s in batch.samples])
        mask_features, ms = seem.encode_image(pixels)
        vocab_emb = self.vocabulary_embeddings(batch.vocabulary, rng)
        grounding, sentences = self.grounding(batch)
        spatial, gt_prompt, counts = self._visual_prompts(batch, mask_features, ms, generator, rng)
        out = seem.decoder(ms, mask_features, object_queries=True, grounding=grounding, spatial=spatial,
                           full_masks="all")
        rounds_pred = [self._round_predictions(heads, len(batch.samples), vocab_emb, sentences, spatial, counts)
                       for heads in out.rounds]
        targets = [Targets(masks=batch.pad(s.masks).float().to(dev), labels=s.labels.to(dev),
                           phrase_masks=batch.pad(s.masks[s.phrase_targets]).float().to(dev),
                           prompt_masks=gt_prompt[b].float())
                   for b, s in enumerate(batch.samples)]
        return rounds_pred, targets

    def _visual_prompts(self, batch: Batch, mask_features: torch.Tensor, ms: list[torch.Tensor],
                        generator: torch.Generator, rng: random.Random):
        """(the spatial input of the trained pass or None, each image's prompted target masks,
        its prompt count): prompts padded per image (counts may differ), after 0 to
        `max_rounds` untrained rounds whose errors add corrective clicks, as interactive use does."""
        seem = self.seem
        dev = seem.device
        qpp = seem.cfg.decoder.queries_per_prompt
        pos = [batch.pad(s.prompt_pos).to(dev) for s in batch.samples]
        neg = [batch.pad(s.prompt_neg).to(dev) for s in batch.samples]
        gt_prompt = [batch.pad(s.masks[s.prompt_targets]).to(dev) for s in batch.samples]
        counts = [p.shape[0] for p in pos]
        ns = max(counts)
        spatial = None
        if ns > 0:
            prev_mask = None
            rounds = rng.randint(0, self.cfg.max_rounds)
            with torch.no_grad():
                for _ in range(rounds):
                    spatial = self._spatial_input(pos, neg, mask_features, ms, prev_mask, generator, ns)
                    out = seem.decoder(ms, mask_features, object_queries=False, spatial=spatial)
                    prev_mask = self._selected_masks(out.final[SPATIAL], spatial, qpp, ns)
                    self._add_clicks(batch, pos, neg, gt_prompt, prev_mask, counts)
            spatial = self._spatial_input(pos, neg, mask_features, ms, prev_mask, generator, ns)
        return spatial, gt_prompt, counts

    def _round_predictions(self, heads, images: int, vocab_emb, sentences, spatial, counts) -> list[RoundPrediction]:
        """One decoder round's outputs as each image's `RoundPrediction`."""
        seem = self.seem
        qpp = seem.cfg.decoder.queries_per_prompt
        # Per-image views by unbind: one backward node per tensor, not one per image
        # (indexing would make each backward materialise the whole batch's gradient).
        obj_logits = seem.class_logits(heads[OBJECT].class_emb, vocab_emb).unbind(0)
        obj_masks = heads[OBJECT].masks.unbind(0)
        per_image = [RoundPrediction(object_logits=obj_logits[b], object_masks=obj_masks[b]) for b in range(images)]
        if GROUNDING in heads:
            g = heads[GROUNDING]
            g_emb, g_masks = g.class_emb.unbind(0), g.masks.unbind(0)
            for b, pred in enumerate(per_image):
                if sentences[b] is not None:
                    pred.grounding_scores = grounding_scores(g_emb[b], sentences[b], seem.text_encoder.logit_scale,
                                                             seem.cfg.inference.grounding_temperature_max)
                    pred.grounding_masks = g_masks[b]
        if spatial is not None:
            sp = heads[SPATIAL]
            s_emb, s_masks = sp.mask_emb.unbind(0), sp.masks.unbind(0)
            for b, pred in enumerate(per_image):
                if counts[b] > 0:
                    n = counts[b] * qpp
                    pred.spatial_selection = spatial_selection_logits(
                        s_emb[b][:n], spatial.pos_embed[b, : counts[b]], qpp)
                    pred.spatial_masks = s_masks[b][:n]
        return per_image

    def _spatial_input(self, pos, neg, mask_features, ms, prev_mask, generator, ns):
        seem = self.seem
        tokens = []
        for b in range(len(pos)):
            p, n = pos[b], neg[b]
            if p.shape[0] < ns:  # pad with empty prompts so every image has ns
                pad = torch.zeros((ns - p.shape[0], *p.shape[1:]), dtype=torch.bool, device=p.device)
                p, n = torch.cat([p, pad]), torch.cat([n, pad])
            tokens.append(seem.spatial_tokens(p, n, mask_features[b], [m[b] for m in ms], generator))
        source = seem.decoder.draw_query_sources(ns, generator).to(seem.device)
        memory = seem.decoder.draw_memory_assignment(ns, generator) if prev_mask is not None else None
        return seem.spatial_input(tokens, source, prev_mask, memory)

    @staticmethod
    def _selected_masks(sp, spatial, qpp: int, ns: int) -> torch.Tensor:
        """B x ns x H/4 x W/4: per prompt the query the selection rule picks (the memory input)."""
        out = []
        for b in range(sp.mask_emb.shape[0]):
            sel = spatial_selection_logits(sp.mask_emb[b], spatial.pos_embed[b], qpp).argmax(0)
            out.append(sp.masks[b, sel])
        return torch.stack(out)

    @staticmethod
    def _add_clicks(batch: Batch, pos, neg, gt_prompt, prev_mask, counts) -> None:
        h, w = batch.input_size
        up = torch.nn.functional.interpolate(prev_mask, size=batch.padded, mode="bilinear", align_corners=False)
        pred = (up[:, :, :h, :w] > 0).cpu().numpy()
        for b in range(len(pos)):
            for t in range(counts[b]):
                gt = gt_prompt[b][t, :h, :w].cpu().numpy()
                clicked = (pos[b][t] | neg[b][t])[:h, :w].cpu().numpy()
                click = simulate_click(gt, pred[b, t], clicked, (h, w))
                if click is None:
                    continue
                square, positive = click
                target = pos[b] if positive else neg[b]
                target[t, :h, :w] |= torch.from_numpy(square).to(target.device)


# -------------------------------------------------------------------- optimisation
def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; norms, biases, embeddings and the temperature are not decayed."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.dim() < 2 or id(p) in embeddings or name.endswith("positional_embedding")
        (no_decay if plain else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def train_step(module: nn.Module, criterion: SeemCriterion, optimizer: torch.optim.Optimizer, batch: Batch,
               step: int, cfg: TrainConfig, generator: torch.Generator, rng: random.Random) -> dict[str, float]:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    rounds, targets = module(batch, generator, rng)
    losses = criterion(rounds, targets, generator)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
    optimizer.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["grad_norm"] = float(grad_norm)
    out["lr"] = optimizer.param_groups[0]["lr"]
    return out


# -------------------------------------------------------------------- checkpoints
def save_training_state(directory: Path, seem: Seem, optimizer: torch.optim.Optimizer, step: int,
                        cfg: TrainConfig, generator: torch.Generator, rng: random.Random,
                        history: list[dict[str, float]] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(seem, directory / "model.safetensors", metadata={"step": str(step), "model": cfg.model})
    torch.save({"optimizer": optimizer.state_dict(), "generator": generator.get_state()}, directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"step": step, "rng": list(rng.getstate()[1]),
                                                      "rng_version": rng.getstate()[0], "config": asdict(cfg),
                                                      "history": history or []}))


def load_training_state(directory: Path, seem: Seem, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        rng: random.Random) -> tuple[int, list[dict[str, float]]]:
    """Restores a checkpoint; returns its step and the metrics history up to it."""
    load_checkpoint(seem, directory / "model.safetensors")
    extra = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    generator.set_state(extra["generator"])
    state = json.loads((directory / "state.json").read_text())
    rng.setstate((state["rng_version"], tuple(state["rng"]), None))
    return int(state["step"]), list(state.get("history", []))


# -------------------------------------------------------------------- Ray Train
def _worker_data(seem: Any, cfg: TrainConfig, rank: int, world: int) -> tuple[Any, int]:
    """This worker's batches (Shapes World, or its shard of a COCO dataset) and the number
    of classes the criterion scores."""
    if cfg.dataset == "shapes-world":
        data = ShapesWorldBatches(seem.cfg, cfg.batch_size, seed=cfg.seed, rank=rank,
                                  lookalike_fraction=cfg.lookalike_fraction)
        return data, len(data.batch(0).vocabulary)
    data = CocoBatches(seem.cfg, cfg.dataset, cfg.images, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    return data, len(data.vocabulary) if data.vocabulary else len(data.batch(0).vocabulary)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    seem = build_model(cfg.model, weights=cfg.init_weights)
    seem.train()
    device = ray.train.torch.get_device()
    seem.to(device)
    module = TrainingModel(seem, cfg)
    module = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = make_optimizer(seem, cfg)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    rng = random.Random(cfg.seed * 1000 + rank)
    start = 0
    history: list[dict[str, float]] = []  # every reported window, kept in the checkpoints
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            last, history = load_training_state(Path(d), seem, optimizer, generator, rng)
            start = last + 1
    data, num_classes = _worker_data(seem, cfg, rank, world)
    criterion = SeemCriterion(cfg.loss, num_classes)
    started = time.time()
    window: list[dict[str, float]] = []
    save = functools.partial(save_training_state, seem=seem, optimizer=optimizer, cfg=cfg, generator=generator,
                             rng=rng, history=history)
    for step in range(start, cfg.steps):
        index = step % cfg.repeat_batches if cfg.repeat_batches else step
        window.append(train_step(module, criterion, optimizer, data.batch(index), step, cfg, generator, rng))
        if _report_window(window, history, step, cfg, rank, started, start, save):
            window = []


def _report_window(window: list[dict[str, float]], history: list[dict[str, float]], step: int, cfg: TrainConfig,
                   rank: int, started: float, start: int, save: Callable[..., None]) -> bool:
    """At a logging or checkpoint step, reports the mean of the steps since the last report to
    Ray Train (at a checkpoint step, rank 0 attaches a checkpoint that `save(directory,
    step=step)` writes) and prints it on rank 0; returns whether it reported (the caller then
    starts a new window)."""
    import ray.train

    checkpoint_now = (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1
    if not checkpoint_now and (step + 1) % cfg.log_every != 0:
        return False
    report = _mean(window, step, started, start)
    history.append(report)
    if checkpoint_now and rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp), step=step)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(report)
    if rank == 0:  # progress for whoever watches the run's log
        # Four significant digits: the learning rate is ~1e-5 late in a run.
        shown = {k: float(f"{v:.4g}") for k, v in report.items() if k in _SHOWN}
        print(f"step {step + 1}/{cfg.steps} {json.dumps(shown)}", flush=True)
    return True


_SHOWN = ("loss", "object_class", "object_mask", "object_dice", "grounding_class", "grounding_dice", "spatial_class",
          "spatial_dice", "lr", "steps_per_s")


def _mean(window: list[dict[str, float]], step: int, started: float, start: int) -> dict[str, float]:
    out = {k: float(np.mean([m[k] for m in window])) for k in window[0]} if window else {}
    out["step"] = step
    out["steps_per_s"] = (step + 1 - start) / max(1e-6, time.time() - started)
    return out


def _absolute_local_paths(cfg: TrainConfig) -> TrainConfig:
    """Ray Train workers run in their own working directory: a relative path the user gave
    (weights, a COCO JSON or image folder, a model config file) must be made absolute here."""
    def absolute(path: str | None) -> str | None:
        if path is None or "://" in path or not Path(path).exists():
            return path
        return str(Path(path).resolve())

    return dataclass_replace(cfg, model=absolute(cfg.model), init_weights=absolute(cfg.init_weights),
                             dataset=absolute(cfg.dataset), images=absolute(cfg.images))


def run_training(cfg: TrainConfig, *, storage_path: str, name: str, num_workers: int = 1, use_gpu: bool = False,
                 cpus_per_worker: float = 1.0, endpoint_url: str | None = None, address: str | None = None,
                 progress: bool = True, max_failures: int = 3) -> "Any":
    """Starts (or resumes: same `storage_path` and `name`) a TorchTrainer run; returns its Result.

    A worker that dies (preempted node, OOM, a placement group removed under it) is restarted
    up to `max_failures` times from the last checkpoint, as a resumed run would be.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from rayinit import start_or_join

    if not ray.is_initialized():
        start_or_join(address, include_dashboard=False, log_to_driver=progress)
    storage_filesystem = None
    if storage_path.startswith("s3://"):
        import pyarrow.fs as pafs

        from storage import resolve_endpoint_url

        endpoint = resolve_endpoint_url(endpoint_url)
        kwargs = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host, "scheme": scheme}
        storage_filesystem = pafs.S3FileSystem(**kwargs)
        storage_path = storage_path[len("s3://"):]
    else:
        storage_path = str(Path(storage_path).resolve())
    cfg = dataclass_replace(_absolute_local_paths(cfg),
                            threads=cfg.threads or (0 if use_gpu else max(1, int(cpus_per_worker))))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg)},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()
