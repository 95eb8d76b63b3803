"""`seem parity DIR`: checks this implementation against reference outputs.

A fixture folder (format of shared/seem-reference/tiny) holds `config.yaml` (the
reference's resolved config), `weights.safetensors` (official key names), `spec.json`
(vocabulary, thing class ids, simulated original size), `inputs.npz` (the image) and case
files: `intermediates.npz`, `generic.npz`, `grounding.npz`, and `spatial_*.npz` (any
number; a case with `prev_mask_in` is a second round). Random draws of the reference are
read from the case files and injected. Every stored output is compared: floats with
rtol/atol, integers exactly, thresholded masks up to a handful of pixels.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint
from .config import load_config_file
from .decoder import OBJECT, GROUNDING, SPATIAL
from .parity_v0 import V0_INPUT_KEYS, run_spatial_v0
from .postprocess import (grounding_scores, panoptic_keep, panoptic_merge, semantic_inference,
                          spatial_selection_logits, to_original)
from .seem import Seem
from .visual_sampler import draw_prompt_points

# Inputs stored in case files: not outputs to compare.
INPUT_KEYS = {"text", "pos_mask", "neg_mask", "spatial_query_source_idx", "memory_indices", "prev_mask_in"} | V0_INPUT_KEYS


@dataclass
class Check:
    case: str
    name: str
    ok: bool
    detail: str


@dataclass
class Tolerance:
    rtol: float = 1e-4
    atol: float = 2e-4
    mask_pixels: int = 5  # differing pixels allowed in a thresholded mask (and 0.05% of its size)


def compare(case: str, name: str, mine: np.ndarray, ref: np.ndarray, tol: Tolerance) -> Check:
    mine = np.asarray(mine)
    ref = np.asarray(ref)
    if mine.shape != ref.shape:
        return Check(case, name, False, f"shape {mine.shape} != reference {ref.shape}")
    if ref.dtype == np.bool_:
        diff = int((mine.astype(bool) != ref).sum())
        allowed = max(tol.mask_pixels, int(0.0005 * ref.size))
        return Check(case, name, diff <= allowed, f"{diff} differing pixels (allowed {allowed})")
    if np.issubdtype(ref.dtype, np.integer):
        diff = int((mine.astype(np.int64) != ref.astype(np.int64)).sum())
        return Check(case, name, diff == 0, "equal" if diff == 0 else f"{diff} differing values")
    mine = mine.astype(np.float64)
    ref = ref.astype(np.float64)
    inf_same = np.array_equal(np.isinf(mine), np.isinf(ref)) and np.array_equal(mine[np.isinf(mine)], ref[np.isinf(ref)])
    finite = np.isfinite(ref)
    err = np.abs(mine[finite] - ref[finite])
    max_abs = float(err.max()) if err.size else 0.0
    rel = err / np.maximum(np.abs(ref[finite]), 1e-12)
    max_rel = float(rel.max()) if rel.size else 0.0
    ok = inf_same and bool(np.allclose(mine[finite], ref[finite], rtol=tol.rtol, atol=tol.atol))
    detail = f"max abs {max_abs:.2e}  max rel {max_rel:.2e}" + ("" if inf_same else "  (-inf pattern differs)")
    return Check(case, name, ok, detail)


class FixtureRunner:
    def __init__(self, folder: Path, tol: Tolerance) -> None:
        self.folder = folder
        self.tol = tol
        cfg = load_config_file(folder / "config.yaml")
        # Fixtures feed the image at its own size: no resize.
        cfg = cfg.replace(inference=dataclasses.replace(cfg.inference, resize_shortest_edge=None))
        self.model = Seem(cfg).eval()
        load_checkpoint(self.model, folder / "weights.safetensors")
        self.spec = json.loads((folder / "spec.json").read_text())
        self.vocab = list(self.spec["vocab"])
        self.thing_ids = set(self.spec.get("thing_ids", range(len(self.vocab))))
        self.original_size = tuple(self.spec.get("orig_hw") or ())
        inputs = np.load(folder / "inputs.npz")
        self.image = inputs["image"]
        if not self.original_size:
            self.original_size = self.image.shape[:2]
        self.input_size = self.image.shape[:2]
        self.checks: list[Check] = []

    def check(self, case: str, name: str, mine, ref) -> None:
        self.checks.append(compare(case, name, _np(mine), ref, self.tol))

    # ---------------------------------------------------------------- runs
    def run(self) -> list[Check]:
        m = self.model
        with torch.inference_mode():
            self.pixels = m.normalize_and_pad([torch.from_numpy(self.image).permute(2, 0, 1)])
            self.padded_size = tuple(self.pixels.shape[-2:])
            captured: dict[str, torch.Tensor] = {}
            hook = m.pixel_decoder.transformer.encoder.register_forward_hook(
                lambda mod, args, out: captured.__setitem__("encoder", out))
            self.backbone = m.encode_backbone(self.pixels)
            self.mask_features, self.multi_scale = m.encode_pixels(self.backbone)
            hook.remove()
            self.vocab_emb = m.text_encoder.vocabulary_embeddings(self.vocab)
            b, c, h, w = self.multi_scale[0].shape
            # The encoder's first h*w tokens are the res5 map (the FPN decoder encodes only res5;
            # the deformable one encodes res5, res4, res3 in that order).
            self.encoder_out = captured["encoder"][:, : h * w].transpose(1, 2).reshape(b, c, h, w)
            for path in sorted(self.folder.glob("*.npz")):
                name = path.stem
                if name == "inputs":
                    continue
                data = dict(np.load(path))
                if name == "intermediates":
                    self.run_intermediates(data)
                elif name.startswith("generic"):
                    self.run_generic(name, data)
                elif name.startswith("grounding"):
                    self.run_grounding(name, data)
                elif name.startswith("spatial"):
                    self.run_spatial(name, data)
                else:
                    self.checks.append(Check(name, "-", False, "unknown case file"))
        return self.checks

    def run_intermediates(self, d: dict) -> None:
        mine = {"input_normalized_padded": self.pixels, "mask_features": self.mask_features,
                "transformer_encoder_features": self.encoder_out, "vocab_text_embeddings": self.vocab_emb}
        mine.update({f"backbone_{k}": v for k, v in self.backbone.items()})
        mine.update({f"multi_scale_features_{i}": v for i, v in enumerate(self.multi_scale)})
        self._compare_all("intermediates", d, mine)

    def _is_thing(self) -> list[bool]:
        return [i in self.thing_ids for i in range(len(self.vocab))]

    def run_generic(self, case: str, d: dict) -> None:
        m = self.model
        out = m.decoder(self.multi_scale, self.mask_features, object_queries=True, full_masks="all")
        final, first = out.final[OBJECT], out.rounds[0][OBJECT]
        logits = m.class_logits(final.class_emb, self.vocab_emb)
        mine = {"pred_logits": logits, "pred_masks": final.masks,
                "aux_pred_logits_layer0": m.class_logits(first.class_emb, self.vocab_emb),
                "aux_pred_masks_layer0": first.masks}
        masks = to_original(final.masks[0], self.padded_size, self.input_size, self.original_size, "bicubic")
        mine["sem_seg"] = semantic_inference(logits[0], masks)
        inf = m.cfg.inference
        idx, scores, labels = panoptic_keep(logits[0], inf.object_mask_threshold)
        seg_map, segments = panoptic_merge(scores, labels, masks[idx], self._is_thing(), inf.overlap_threshold)
        mine["panoptic_seg"] = seg_map
        self._compare_all(case, d, mine, json_keys={"panoptic_segments_json": [
            {"id": s["id"], "isthing": s["isthing"], "category_id": s["category_id"]} for s in segments]})

    def run_grounding(self, case: str, d: dict) -> None:
        m = self.model
        text = str(d["text"])
        tok = m.text_encoder.tokenizer
        input_ids, attention = tok(text, m.cfg.text.context_length)
        token_emb = m.text_encoder.lang_encoder(input_ids) @ m.text_encoder.lang_proj
        grounding, phrase_emb = m.grounding_input([[text]])
        out = m.decoder(self.multi_scale, self.mask_features, object_queries=True, grounding=grounding)
        g = out.final[GROUNDING]
        obj = out.final[OBJECT]
        prob = grounding_scores(g.class_emb[0], phrase_emb[0], m.text_encoder.logit_scale,
                                m.cfg.inference.grounding_temperature_max)
        matched = prob.argmax(0)
        gmask = to_original(g.masks[0, matched], self.padded_size, self.input_size, self.original_size, "bicubic")
        mine = {"input_ids": input_ids, "attention_mask": attention, "token_emb": token_emb,
                "class_emb": phrase_emb[0], "pred_gmasks": g.masks, "pred_gtexts": g.class_emb,
                "pred_logits": m.class_logits(obj.class_emb, self.vocab_emb), "pred_masks": obj.masks,
                "out_prob": prob, "matched_id": matched, "grounding_mask": gmask}
        self._compare_all(case, d, mine)

    def run_spatial(self, case: str, d: dict) -> None:
        m = self.model
        if m.cfg.decoder.variant == "v0":
            return run_spatial_v0(self, case, d)
        qpp = m.cfg.decoder.queries_per_prompt
        pos = _pad_masks(d["pos_mask"], self.padded_size)
        neg = _pad_masks(d["neg_mask"], self.padded_size)
        prev = torch.from_numpy(d["prev_mask_in"]) if "prev_mask_in" in d else None
        stored_source = torch.from_numpy(d["spatial_query_source_idx"]).long()
        stored_memory = torch.from_numpy(d["memory_indices"]).long() if "memory_indices" in d else None
        seed = self._recover_seed(pos, neg, stored_source, stored_memory)
        if seed is None:
            # Draws not recoverable: use the stored ones (the memory draw for every layer).
            self.checks.append(Check(case, "random_draws", True,
                                     "no generator seed reproduces the stored draws; stored draws injected as-is"))
            generator, source, memory = None, stored_source, stored_memory
        else:
            generator = torch.Generator().manual_seed(seed)
        tokens = m.spatial_tokens(pos, neg, self.mask_features[0], [x[0] for x in self.multi_scale], generator)
        if seed is not None:
            source = m.decoder.draw_query_sources(pos.shape[0], generator)
            memory = m.decoder.draw_memory_assignment(pos.shape[0], generator) if prev is not None else None
            self.checks.append(Check(case, "random_draws", True,
                                     f"reference draws replayed from seed {seed} (stored draws reproduced)"))
        spatial = m.spatial_input([tokens], source, prev_mask=prev, memory_prompt=memory)
        out = m.decoder(self.multi_scale, self.mask_features, object_queries=True, spatial=spatial)
        s, obj = out.final[SPATIAL], out.final[OBJECT]
        sel = spatial_selection_logits(s.mask_emb[0], spatial.pos_embed[0], qpp)
        selected = sel.argmax(0)
        prev_mask = s.masks[0, selected]
        class_logits = m.class_logits(s.class_emb, self.vocab_emb)
        final_logits = to_original(prev_mask, self.padded_size, self.input_size, self.original_size, "bilinear")
        mine = {"pred_smasks": s.masks, "pred_smaskembs": s.mask_emb, "pred_stexts": s.class_emb,
                "pred_pspatials": spatial.pos_embed, "pred_nspatials": spatial.neg_embed,
                "pred_logits": m.class_logits(obj.class_emb, self.vocab_emb), "pred_masks": obj.masks,
                "selection_logits": sel[None], "selected_query": selected[None], "prev_mask": prev_mask[None],
                "spatial_class_logits": class_logits, "selected_class_logits": class_logits[0, selected],
                "final_mask_logits": final_logits, "final_mask": final_logits.sigmoid() > 0.5}
        nq, ns = m.cfg.decoder.num_queries, spatial.num_prompts
        layout = {"queries_object": [0, nq], "queries_spatial": [nq, nq + qpp * ns]}
        if prev is not None:
            layout["memories_spatial"] = [nq + qpp * ns, nq + qpp * ns + m.cfg.decoder.spatial_memories]
        self._compare_all(case, d, mine, layout=layout)

    def _recover_seed(self, pos: torch.Tensor, neg: torch.Tensor, source: torch.Tensor,
                      memory: torch.Tensor | None, tries: int = 5000) -> int | None:
        """The seed of the reference's global RNG for this case, found from its stored draws.

        The reference draws point subsets, the spatial queries' sources and, in EVERY decoder
        layer, the memory assignment, but a fixture stores only the sources and the last
        memory draw. Replaying the reference's drawing order from candidate seeds (upwards from
        spec.json's seed) recovers the stream, and with it the draws that were not stored.
        """
        dec = self.model.decoder
        start = int(self.spec.get("seed", 0))
        for seed in range(start, start + tries):
            g = torch.Generator().manual_seed(seed)
            draw_prompt_points(pos, neg, dec.cfg.max_spatial_len, dec.cfg.num_feature_levels, g)
            if not torch.equal(dec.draw_query_sources(pos.shape[0], g), source):
                continue
            if memory is not None and not torch.equal(dec.draw_memory_assignment(pos.shape[0], g)[-1], memory):
                continue
            return seed
        return None

    # ---------------------------------------------------------------- comparison
    def _compare_all(self, case: str, ref: dict, mine: dict, json_keys: dict | None = None,
                     layout: dict | None = None) -> None:
        json_keys = json_keys or {}
        for key, value in ref.items():
            if key in INPUT_KEYS:
                continue
            if key in json_keys:
                expected = json.loads(str(value))
                ok = expected == json_keys[key]
                self.checks.append(Check(case, key, ok, "equal" if ok else f"{json_keys[key]} != {expected}"))
            elif key == "query_layout_json" and layout is not None:
                expected = json.loads(str(value))
                bad = {k: v for k, v in layout.items() if expected.get(k) != v}
                self.checks.append(Check(case, key, not bad, "cross-attention layout equal" if not bad else f"differs: {bad}"))
            elif key in mine:
                self.check(case, key, mine[key], value)
            else:
                self.checks.append(Check(case, key, False, "output not produced by this implementation"))


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _pad_masks(masks: np.ndarray, padded: tuple[int, int]) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(masks, dtype=bool))
    return F.pad(t, (0, padded[1] - t.shape[-1], 0, padded[0] - t.shape[-2]))


def fixture_folders(folder: str | Path) -> list[Path]:
    """The fixture folder itself, or the fixture folders directly inside it (sorted)."""
    folder = Path(folder)
    if _is_fixture(folder):
        return [folder]
    return sorted(p for p in folder.iterdir() if _is_fixture(p)) if folder.is_dir() else []


def _is_fixture(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "weights.safetensors").is_file()


def run(folder: str | Path, tol: Tolerance | None = None, out=sys.stdout) -> bool:
    """Runs every case of a fixture folder (or of every fixture folder inside `folder`),
    prints one line per output, returns pass/fail."""
    folders = fixture_folders(folder)
    if not folders:
        print(f"{folder}: not a parity fixture folder (needs config.yaml and weights.safetensors)"
              " and holds none", file=out)
        return False
    if len(folders) > 1 or folders[0] != Path(folder):
        results = []
        for f in folders:
            print(f"== {f}", file=out)
            results.append(run(f, tol, out))
        print(f"{sum(results)} of {len(results)} fixture folders pass", file=out)
        return all(results)
    folder = folders[0]
    tol = tol or Tolerance()
    torch.manual_seed(0)
    checks = FixtureRunner(folder, tol).run()
    width = max(len(f"{c.case}/{c.name}") for c in checks)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'}  {f'{c.case}/{c.name}':<{width}}  {c.detail}", file=out)
    failed = [c for c in checks if not c.ok]
    cases = sorted({c.case for c in checks})
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed ({len(cases)} cases: {', '.join(cases)})", file=out)
    return not failed
