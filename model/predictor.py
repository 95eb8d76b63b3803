"""The predictor: the one API the rest of seem-ray uses.

    predictor = SeemPredictor.from_pretrained("seem-tiny")
    features = predictor.encode([image])[0]                        # heavy, once per image
    result = predictor.decode(features, Prompts(spatial=(Point(120, 80),)))   # cheap, per prompt
    result.masks[0].mask, result.masks[0].label

Pre-processing (resize: `prepare`; normalise and pad: `encode`; prompt rasterisation) and
post-processing (back to original pixels, selection, labels) live here; the network never
sees a numpy array. A caller that resizes in another process (the bulk pipeline's decode
tasks) calls `prepare` there and hands the `PreparedImage` to `encode`, as SAM's
`set_image` / `set_torch_image` split.

Randomness: where the reference draws (the object queries spatial queries start from,
point subsets beyond `max_spatial_len`, the memory -> prompt assignment in every layer)
the predictor draws from a `torch.Generator` seeded with `seed` (per call, so equal calls
give equal results) in the reference's order; `Draws` injects explicit values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .build import DEFAULT_MODEL, build_model
from .checkpoint import state_digest
from .decoder import GROUNDING, OBJECT, SPATIAL, DecoderOutput, ImageDecoderCache, SeemDecoder
from .decoder_cache import DecoderCaches
from .heads import HeadOutput
from .mask_axes import MaskAxes, axes_from_embeddings, change_frame
from .postprocess import (grounding_scores, instance_inference, negated_pieces, panoptic_keep, panoptic_merge,
                          semantic_inference, spatial_selection_logits, to_original)
from .seem import Seem
from .transforms import (PreparedImage, PromptError, PromptRasterizer, mask_to_memory, padded_size, prepare_image,
                         resized_size)
from .types import (OBJECT_PASS_TENSORS, Box, ImageFeatures, MaskResult, PanopticResult, PanopticSegment, Point,
                    Prompts, ReferringRegion, Segmentation, Vocabulary)
from .visual_sampler import SpatialTokens

__all__ = ["SeemPredictor", "Draws", "PromptError", "PreparedImage"]


CALIBRATION_IMAGE = Path(__file__).parent / "assets" / "calibration.jpg"  # pipeline/samples/chelsea.jpg


def _calibration_image() -> np.ndarray:
    from .image_io import decode_image

    return decode_image(CALIBRATION_IMAGE.read_bytes())


def _calibration_prompts(height: int, width: int) -> list[Prompts]:
    """The prompts `SeemPredictor.mask_axes` decodes a calibration image with: the kinds whose
    embeddings differ (clicks everywhere, a box, a phrase); the object queries come with encode."""
    clicks = [Prompts(spatial=(Point(width * (i + 1) / 4, height * (j + 1) / 4),)) for j in range(3) for i in range(3)]
    box = Prompts(spatial=(Box(width * 0.2, height * 0.2, width * 0.6, height * 0.7),))
    return [*clicks, box, Prompts(text="the animal")]


@dataclass
class _ObjectQueries:
    """One image's object queries: class embeddings Q x D, mask embeddings Q x C and, with a
    vocabulary, log P(a real class) per query (the no-object column's complement). Their
    stride-4 mask logits (Q x h x w, from `mask_features` 1 x C x h x w) are computed when
    asked: most calls keep a few queries, and all 101 masks cost as much as 3 decoder layers."""

    class_emb: torch.Tensor
    mask_emb: torch.Tensor
    mask_features: torch.Tensor
    log_object: torch.Tensor | None
    all_masks: torch.Tensor | None = None  # when the decoder pass computed them

    @property
    def masks(self) -> torch.Tensor:
        """Q x h x w mask logits of every query."""
        if self.all_masks is None:
            self.all_masks = self.masks_of(slice(None))
        return self.all_masks

    def masks_of(self, queries: torch.Tensor | slice) -> torch.Tensor:
        """Mask logits of `queries` (indices), len x h x w."""
        if self.all_masks is not None:
            return self.all_masks[queries]
        return SeemDecoder.mask_logits(self.mask_emb[None, queries], self.mask_features)[0]

    def best_match(self, mask_logits: torch.Tensor, min_iou: float) -> int | None:
        """The query whose mask overlaps `mask_logits` (h x w, same grid) best, IoU weighted by
        P(object) when known (a no-object query's class embedding says little); None when
        that query's IoU is below `min_iou`."""
        shown = mask_logits.to(self.masks.device) > 0
        masks = self.masks > 0
        iou = (masks & shown).flatten(1).sum(1) / (masks | shown).flatten(1).sum(1).clamp(min=1)
        score = iou if self.log_object is None else iou * self.log_object.exp()
        best = int(score.argmax())
        return best if float(iou[best]) >= min_iou else None


@dataclass
class Draws:
    """Explicit values for the reference's random draws (for reproducing its outputs).

    query_source: (queries_per_prompt * num_prompts) object-query indices;
    memory_prompt: M or num_layers x M prompt index per memory query.
    """

    query_source: torch.Tensor | None = None
    memory_prompt: torch.Tensor | None = None


@dataclass
class _DecodeCall:
    """What every step of one decode call needs: the image (its features and maps), the
    vocabulary for labels, how many masks a target gets, injected draws and, once a step
    ran them, the image's object queries (they never see prompts: one pass serves all steps)."""

    features: ImageFeatures
    mask_features: torch.Tensor
    ms: list[torch.Tensor]
    vocab: Vocabulary | None = None
    vocab_emb: torch.Tensor | None = None
    max_masks: int = 1
    draws: Draws | None = None
    objects: "_ObjectQueries | None" = None


class SeemPredictor:
    def __init__(self, model: Seem, *, device: str | torch.device | None = None, seed: int = 0,
                 model_id: str | None = None, encode_batch_size: int = 4, autocast_bf16: bool | None = None,
                 decoder_cache_mb: float = 256.0) -> None:
        """decoder_cache_mb: memory for the decoder's prompt-independent work on the images decoded
        most recently (`decoder_cache.DecoderCaches`; ~100 MB per Focal-T image at 512 x 683,
        ~2 MB for seem-tiny); 0 keeps none."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.seed = seed
        self.encode_batch_size = encode_batch_size
        # bf16 autocast for the image encoder on GPUs (the reference demo runs fp16 autocast).
        self.autocast_bf16 = (self.device.type == "cuda") if autocast_bf16 is None else autocast_bf16
        self.model_id = model_id or self._model_id()
        self.default_vocabulary = Vocabulary(self.cfg.default_vocabulary, frozenset(self.cfg.default_stuff))
        self.asr = "pocketsphinx"  # the speech recogniser for audio prompts (speech.load_recognizer spec)
        # Per image (while its features object lives, e.g. in a serving replica's cache): the
        # object queries' pass, which never sees prompts (`_object_pass`).
        self._object_passes: weakref.WeakKeyDictionary[ImageFeatures, HeadOutput] = weakref.WeakKeyDictionary()
        self.decoder_caches = DecoderCaches(int(decoder_cache_mb * 2**20))
        self._calibrated_axes: MaskAxes | None = None  # `mask_axes()` of the bundled calibration image

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_MODEL, weights: str | Path | None = "default",
                        *, init_seed: int = 0, **kwargs) -> "SeemPredictor":
        """A registered model ("seem-tiny", "seem-focalt-v1", ...) or a config file, with
        its default weights, random weights (None, drawn from `init_seed`) or a checkpoint
        path / s3:// URI."""
        return cls(build_model(name_or_path, weights=weights, init_seed=init_seed), **kwargs)

    def _model_id(self) -> str:
        """Short hash of config (incl. preprocessing) and weights: the feature store's key."""
        weights = getattr(self.model, "weights_digest", None) or state_digest(self.model)
        digest = hashlib.sha256(f"{self.cfg.fingerprint()}:{weights}".encode()).hexdigest()
        return f"{self.cfg.name}-{digest[:12]}"

    # ------------------------------------------------------------------ encode
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        inf = self.cfg.inference
        return resized_size(height, width, inf.resize_shortest_edge, inf.resize_max_size)

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """An H x W x 3 uint8 RGB image resized for this model, with its original size."""
        inf = self.cfg.inference
        return prepare_image(image, inf.resize_shortest_edge, inf.resize_max_size)

    def _check_prepared(self, prepared: PreparedImage) -> PreparedImage:
        if prepared.input_size != self.input_size(*prepared.original_size):
            raise ValueError(f"image prepared as {prepared.input_size} for {prepared.original_size}; this model "
                             f"resizes it to {self.input_size(*prepared.original_size)} (prepared for another model?)")
        return prepared

    @torch.inference_mode()
    def encode(self, images: np.ndarray | PreparedImage | Sequence[np.ndarray | PreparedImage], *,
               stage: str = "pixel_decoder", object_pass: bool = True) -> list[ImageFeatures]:
        """H x W x 3 uint8 RGB images of any sizes (or `prepare`d ones) -> one `ImageFeatures` each.

        Images are batched only with images of the same padded size: the backbone's global
        context and the pixel decoder's transformer see the padding, so mixing sizes would
        change results. A batch therefore gives exactly what single calls give.
        stage "backbone" stops before the pixel decoder (smaller to store; see `materialize`).
        `object_pass`: pixel-decoder features also carry the object queries' pass (`with_object_pass`),
        which every later panoptic, instances or referring call on the image then skips.
        """
        if isinstance(images, PreparedImage) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        if stage not in ("pixel_decoder", "backbone"):
            raise ValueError("stage must be 'pixel_decoder' or 'backbone'")
        prepared = [self._check_prepared(im) if isinstance(im, PreparedImage) else self.prepare(im) for im in images]
        div = self.cfg.inference.size_divisibility
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(padded_size(p.input_size, div), []).append(i)
        out: list[ImageFeatures | None] = [None] * len(prepared)
        for pad, idx in groups.items():
            for start in range(0, len(idx), self.encode_batch_size):
                chunk = idx[start:start + self.encode_batch_size]
                for i, feats in zip(chunk, self._encode_batch([prepared[i] for i in chunk], stage)):
                    p = prepared[i]
                    out[i] = ImageFeatures(self.model_id, p.original_size, p.input_size, pad, feats, stage)  # type: ignore[arg-type]
        if stage == "pixel_decoder" and object_pass:
            out = [self.with_object_pass(f) for f in out]  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def with_object_pass(self, features: ImageFeatures) -> ImageFeatures:
        """`features` (pixel-decoder stage) carrying the object queries' final round: their class
        and mask embeddings (`OBJECT_PASS_TENSORS`, float32; ~0.4 MB for Focal-T's 101 queries).

        The object queries never see prompts, so this 101-query decoder pass is a function of
        the image alone, like the maps: done once here, panoptic, instances and referring calls
        read it instead of running it. One image at a time, from the float32 maps, exactly as
        `decode` would run it on these features: results do not depend on where it ran."""
        if features.stage != "pixel_decoder":
            raise ValueError("only pixel-decoder features carry the object pass (materialize backbone features first)")
        if features.has_object_pass:
            return features
        mask_features, ms = self._maps(features)
        cache = self.decoder_caches.for_image(features)
        obj = self._run_object_pass(mask_features, ms, features.mask_axes, cache)
        tensors = {**features.tensors, OBJECT_PASS_TENSORS[0]: obj.class_emb[0].contiguous(),
                   OBJECT_PASS_TENSORS[1]: obj.mask_emb[0].contiguous()}
        out = dataclasses.replace(features, tensors=tensors)
        if cache is not None:  # the pass projected every level: a phrase on `out` reuses that
            self.decoder_caches.adopt(out, cache)
        return out

    def _encode_batch(self, batch: list[PreparedImage], stage: str) -> list[dict[str, torch.Tensor]]:
        """Normalise, pad and run the encoder on images of one padded size: tensors per image."""
        pixels = self.model.normalize_and_pad([p.tensor() for p in batch])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            feats = self.model.encode_backbone(pixels)
            if stage == "pixel_decoder":
                mask_features, ms = self.model.encode_pixels(feats)
                feats = {"mask_features": mask_features, **{f"ms{l}": m for l, m in enumerate(ms)}}
        return [{k: v[j].float().contiguous() for k, v in feats.items()} for j in range(len(batch))]

    @torch.inference_mode()
    def materialize(self, features: ImageFeatures) -> ImageFeatures:
        """Pixel-decoder features, running the pixel decoder if `features` stop at the backbone."""
        if features.model_id != self.model_id:
            raise ValueError(f"features are from model {features.model_id}, this predictor is {self.model_id}")
        if features.stage == "pixel_decoder":
            return features
        backbone = {k: v[None].to(self.device, torch.float32) for k, v in features.tensors.items()}
        mask_features, ms = self.model.encode_pixels(backbone)
        tensors = {"mask_features": mask_features[0], **{f"ms{l}": m[0] for l, m in enumerate(ms)}}
        return ImageFeatures(features.model_id, features.original_size, features.input_size,
                             features.padded_size, tensors, "pixel_decoder")

    def mask_axes(self, images: Sequence[np.ndarray] | None = None) -> MaskAxes:
        """The axes of this model's mask space, by how much its mask embeddings use them
        (`model.mask_axes`; what store format 4 keeps mask features along). Measured from
        every mask embedding the heads produce while `images` (default: the bundled
        calibration photo, model/assets/calibration.jpg) are encoded and decoded with a 3 x 3
        grid of clicks, a box and a phrase each: ~2,300 vectors for Focal-T. Once per
        predictor for the default images (a second or two of a CPU for Focal-T)."""
        if images is None and self._calibrated_axes is not None:
            return self._calibrated_axes
        embeddings: list[torch.Tensor] = []
        hook = self.model.decoder.heads.register_forward_hook(
            lambda module, inputs, out: embeddings.append(out.mask_emb.detach().reshape(-1, out.mask_emb.shape[-1])))
        try:
            for image in images if images is not None else [_calibration_image()]:
                features = self.encode([image])[0]
                for prompt in _calibration_prompts(*image.shape[:2]):
                    self.decode(dataclasses.replace(features), prompt)
        finally:
            hook.remove()
        axes = axes_from_embeddings(torch.cat(embeddings))
        if images is None:
            self._calibrated_axes = axes
        return axes

    def _maps(self, features: ImageFeatures) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f = self.materialize(features)
        t = {k: v.to(self.device, torch.float32)[None] for k, v in f.tensors.items()}
        return t["mask_features"], [t["ms0"], t["ms1"], t["ms2"]]

    # ------------------------------------------------------------------ vocabulary
    def vocabulary(self, vocabulary: Vocabulary | Sequence[str] | None) -> Vocabulary:
        vocab = Vocabulary.of(vocabulary, self.default_vocabulary)
        if not vocab.names:
            raise ValueError("no vocabulary given and the model has no default vocabulary")
        return vocab

    @torch.inference_mode()
    def vocabulary_embeddings(self, vocabulary: Vocabulary | Sequence[str] | None = None) -> torch.Tensor:
        """(K + 1) x D embeddings (names, then "background"); cached per name."""
        return self.model.text_encoder.vocabulary_embeddings(self.vocabulary(vocabulary).names)

    def _label(self, class_emb: torch.Tensor, vocab: Vocabulary | None,
               vocab_emb: torch.Tensor | None) -> tuple[str | None, float | None, int | None]:
        """Best real class of one query (no-object excluded) and its softmax probability."""
        if vocab is None:
            return None, None, None
        probs = self.model.class_logits(class_emb[None], vocab_emb)[0].softmax(-1)
        k = int(probs[:-1].argmax())
        return vocab.names[k], float(probs[k]), k

    def _object_labels(self, vocab_emb: torch.Tensor | None) -> bool:
        """Whether prompted masks take the labels of matching object queries (config): the
        image's object pass (`_objects`, stored with the features or run once per features object)."""
        return vocab_emb is not None and self.cfg.inference.prompted_mask_labels == "object_match"

    def _prompted_label(self, class_emb: torch.Tensor, mask_logits: torch.Tensor, objects: "_ObjectQueries | None",
                        vocab: Vocabulary | None, vocab_emb: torch.Tensor | None) -> tuple[str | None, float | None, int | None]:
        """Label of a prompted (grounded or spatial) mask: its own query's class embedding, or
        with `prompted_mask_labels="object_match"` that of the object query whose mask is the
        same object (IoU >= 0.5 at stride 4), falling back to its own."""
        if objects is not None:
            k = objects.best_match(mask_logits, min_iou=0.5)
            if k is not None:
                class_emb = objects.class_emb[k]
        return self._label(class_emb, vocab, vocab_emb)

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, features: ImageFeatures, prompts: Prompts | None = None,
               previous_mask: np.ndarray | torch.Tensor | None = None,
               vocabulary: Vocabulary | Sequence[str] | None = None, max_masks: int = 1,
               draws: Draws | None = None) -> Segmentation:
        """Masks for one target (`Prompts`); several targets at once: `decode_many`.

        previous_mask: the last round's `Segmentation.memory` (exact) or a boolean mask in
        original pixels. It is SEEM's memory prompt, so only targets with spatial prompts use
        it (a phrase alone or a referring region alone picks by meaning, not by place). No
        prompt at all gives the panoptic segments of the image as masks.
        """
        if prompts is not None and not isinstance(prompts, Prompts):
            raise TypeError("decode takes one Prompts; use decode_many for several targets")
        if prompts is None or prompts.is_empty:
            if max_masks < 1:
                raise PromptError("max_masks must be at least 1")
            pan = self.panoptic(features, vocabulary)
            return Segmentation(masks=pan.masks[:max(max_masks, len(pan.masks))], timings_ms=pan.timings_ms)
        return self.decode_many(features, [prompts], None if previous_mask is None else [previous_mask],
                                vocabulary=vocabulary, max_masks=max_masks, draws=draws)[0]

    @torch.inference_mode()
    def decode_many(self, features: ImageFeatures, targets: Sequence[Prompts],
                    previous_masks: Sequence[np.ndarray | torch.Tensor] | None = None,
                    vocabulary: Vocabulary | Sequence[str] | None = None, max_masks: int = 1,
                    draws: Draws | None = None) -> list[Segmentation]:
        """One `Segmentation` per target, decoded together where SEEM decodes them together:
        phrase targets share one grounding pass, referring-only targets one object-query pass,
        visual targets without text one multi-object pass; composed targets (phrase + visual
        prompts) run alone. `previous_masks`: one per target, or None."""
        targets, heard, memories = self._checked_targets(targets, previous_masks, vocabulary, max_masks)
        started = time.perf_counter()
        call = self._decode_call(features, vocabulary, max_masks, draws)
        results = self._decode_targets(call, targets, memories)
        elapsed = (time.perf_counter() - started) * 1000
        for seg, h in zip(results, heard):
            seg.timings_ms.setdefault("decode", elapsed)
            if h is not None:
                seg.transcript = h[1]
        return results

    def _checked_targets(self, targets: Sequence[Prompts], previous_masks: Sequence | None,
                         vocabulary: Vocabulary | Sequence[str] | None, max_masks: int
                         ) -> tuple[list[Prompts], list[tuple[Prompts, str] | None], list]:
        """(targets with audio transcribed to text, what each one's audio said, one previous
        mask or None per target), or a PromptError saying what is wrong with the request."""
        targets = list(targets)
        heard = [self._heard(t, vocabulary) if isinstance(t, Prompts) else None for t in targets]
        targets = [t if h is None else h[0] for t, h in zip(targets, heard)]
        if any(not isinstance(t, Prompts) or t.is_empty for t in targets):
            raise PromptError("a target without any prompt (text, visual or referring)")
        memories = [None] * len(targets) if previous_masks is None else list(previous_masks)
        if len(memories) != len(targets):
            raise PromptError(f"{len(memories)} previous masks for {len(targets)} targets")
        if max_masks < 1:
            raise PromptError("max_masks must be at least 1")
        return targets, heard, memories

    def _decode_targets(self, call: _DecodeCall, targets: list[Prompts], memories: list) -> list[Segmentation]:
        """Each target's `Segmentation`, the targets grouped into passes as `decode_many` says."""
        results: list[Segmentation | None] = [None] * len(targets)
        # A referring region: with the v1 models a class embedding first (`_reference_embedding`);
        # with v0 its point features enter the decoder as visual prompts (`_visual_tokens`).
        tokens_route = self.referring_route == "tokens"
        references = [self._reference_embedding(t.referring, call) if t.referring and not tokens_route
                      else None for t in targets]
        visual_prompts = [bool(t.spatial) or (tokens_route and bool(t.referring)) for t in targets]
        grounded = [i for i, t in enumerate(targets) if t.text is not None and not visual_prompts[i]]
        referred = [i for i, t in enumerate(targets) if t.text is None and not visual_prompts[i]]
        visual = [i for i, t in enumerate(targets) if visual_prompts[i] and t.text is None]
        composed = [i for i, t in enumerate(targets) if visual_prompts[i] and t.text is not None]
        # v0 decodes one prompt per pass (the reference batches objects as separate images).
        visual_groups = ([[i] for i in visual] if tokens_route else [visual]) if visual else []
        if grounded:
            segs = self._grounding(call, [targets[i].text for i in grounded], [references[i] for i in grounded])
            for i, seg in zip(grounded, segs):
                results[i] = seg
        if referred:
            for i, seg in zip(referred, self._referred(call, [references[i] for i in referred])):
                results[i] = seg
        for group in visual_groups + [[i] for i in composed]:
            segs = self._spatial(call, [targets[i] for i in group], [memories[i] for i in group],
                                 [references[i] for i in group])
            for i, seg in zip(group, segs):
                results[i] = seg
        return results  # type: ignore[return-value]

    def _heard(self, prompts: Prompts, vocabulary: Vocabulary | Sequence[str] | None) -> tuple[Prompts, str] | None:
        """(prompts with the audio's transcript as text, the transcript), or None without audio."""
        if prompts.audio is None:
            return None
        from .audio_prompt import transcribe_prompts

        return transcribe_prompts(prompts, self.vocabulary(vocabulary), self.asr)

    def _decode_call(self, features: ImageFeatures, vocabulary: Vocabulary | Sequence[str] | None,
                     max_masks: int = 1, draws: Draws | None = None) -> _DecodeCall:
        # Labels need a vocabulary; without one (and no default) masks come unlabelled.
        vocab = self.vocabulary(vocabulary) if vocabulary is not None or self.default_vocabulary.names else None
        vocab_emb = self.model.text_encoder.vocabulary_embeddings(vocab.names) if vocab else None
        mask_features, ms = self._maps(features)
        return _DecodeCall(features, mask_features, ms, vocab, vocab_emb, max_masks, draws)

    def _grounding(self, call: _DecodeCall, texts: list[str], references: list[torch.Tensor | None]) -> list[Segmentation]:
        m = self.model
        grounding, phrase_emb = m.grounding_input([texts])
        # full_masks "none": masks only for the queries kept, below.
        out = m.decoder(call.ms, call.mask_features, object_queries=False, grounding=grounding, full_masks="none",
                        image_cache=self._image_cache(call), mask_axes=call.features.mask_axes)
        self.decoder_caches.trim()
        g = out.final[GROUNDING]
        scores = grounding_scores(g.class_emb[0], phrase_emb[0], m.text_encoder.logit_scale,
                                  self.cfg.inference.grounding_temperature_max)  # Q x P
        for p, ref in enumerate(references):
            if ref is not None:  # phrase and region must both agree: add the two log-distributions
                scores[:, p] = scores[:, p].log_softmax(0) + self._similarity(g.class_emb[0], ref).log_softmax(0)
        probs = scores.softmax(0)
        objects = self._objects(call) if self._object_labels(call.vocab_emb) else None
        segs = []
        for p in range(len(texts)):
            order = scores[:, p].argsort(descending=True)[:call.max_masks]
            masks = m.decoder.mask_logits(g.mask_emb[:, order], call.mask_features)[0]
            labels = [self._prompted_label(g.class_emb[0, q], masks[j], objects, call.vocab, call.vocab_emb)
                      for j, q in enumerate(order.tolist())]
            segs.append(self._ranked_segmentation(call.features, masks, order, probs[:, p], labels))
        return segs

    @staticmethod
    def _ranked_segmentation(features: ImageFeatures, mask_logits: torch.Tensor, order: torch.Tensor,
                             probs: torch.Tensor, labels: list[tuple[str | None, float | None, int | None]]) -> Segmentation:
        """Queries `order` (best first), whose stride-4 logits are `mask_logits` (len x h x w),
        as masks in original pixels (the generic/grounding resize), scored by `probs` (Q),
        with their labels; the best one's logits are the memory."""
        logits = to_original(mask_logits, features.padded_size, features.input_size,
                             features.original_size, "bicubic")
        masks = [MaskResult((logits[j] > 0).cpu().numpy(), float(probs[q]), *labels[j])
                 for j, q in enumerate(order.tolist())]
        return Segmentation(masks, memory=mask_logits[0][None, None].cpu())

    @property
    def referring_route(self) -> str:
        """How a referring region reaches the decoder: "tokens" (v0: the region's point features,
        the reference's route) or "class_embedding" (v1 and seem-tiny: a match by class embedding)."""
        return "tokens" if self.cfg.decoder.variant == "v0" else "class_embedding"

    def _visual_tokens(self, call: _DecodeCall, target: Prompts, generator: torch.Generator) -> SpatialTokens:
        """The target's visual prompts as decoder tokens: its own prompts on this image and, on
        the token route, its referring regions' prompts on their own images."""
        def tokens(pos: torch.Tensor, neg: torch.Tensor, mask_features: torch.Tensor,
                   ms: list[torch.Tensor], mask_axes: MaskAxes | None) -> SpatialTokens:
            made = self.model.spatial_tokens(pos.to(self.device), neg.to(self.device), mask_features[0],
                                             [x[0] for x in ms], generator, mask_axes)
            # Mean features of another image's prompts join this image's in its frame.
            return dataclasses.replace(made, **{name: change_frame(getattr(made, name), mask_axes, frame)
                                                for name in ("pos_embed", "neg_embed")})

        parts = []
        f, frame = call.features, call.features.mask_axes
        if target.spatial:
            raster = PromptRasterizer(f.original_size, f.input_size)
            parts.append(tokens(*raster.prompt_masks(target.spatial, f.padded_size), call.mask_features, call.ms,
                                frame))
        if self.referring_route == "tokens":
            parts += [tokens(*self._referring_masks(ref), *self._maps(ref.features), ref.features.mask_axes)
                      for ref in target.referring]
        return SpatialTokens.concat(parts)

    def _referring_masks(self, ref: ReferringRegion) -> tuple[torch.Tensor, torch.Tensor]:
        """A referring region's prompt masks on its own image (positive, negative; ns x Hp x Wp)."""
        if not ref.region:
            raise PromptError("referring prompt: the region is empty")
        f = ref.features
        if f.model_id != self.model_id:
            raise PromptError(f"referring image features are from model {f.model_id}, this predictor is {self.model_id}")
        raster = PromptRasterizer(f.original_size, f.input_size)
        pos, neg = raster.prompt_masks(tuple(ref.region), f.padded_size)
        if not pos.any():
            raise PromptError("referring prompt: the region needs a positive part")
        return pos, neg

    def _similarity(self, class_emb: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Q: scaled cosine of each query's class embedding with a reference embedding."""
        return grounding_scores(class_emb, reference[None], self.model.text_encoder.logit_scale,
                                self.cfg.inference.grounding_temperature_max)[:, 0]

    def _objects(self, call: _DecodeCall) -> "_ObjectQueries":
        """The object queries of one image (the panoptic head), to match prompted masks against."""
        if call.objects is None:
            call.objects = self._object_queries(self._object_pass(call.features, call.mask_features, call.ms), call)
        return call.objects

    def _object_pass(self, features: ImageFeatures, mask_features: torch.Tensor, ms: list[torch.Tensor]) -> HeadOutput:
        """The final round of the object queries alone (embeddings, no stride-4 masks): panoptic,
        instances, referring and object-match labels all need this 101-query pass, and it never
        sees prompts. Features encoded with it carry it; otherwise (older store objects,
        backbone-stage features) it runs once per features object and is kept as long as
        `features` lives (~0.4 MB an image for Focal-T). The same computation each time, so
        results do not depend on where it ran or whether it was kept."""
        if features.has_object_pass:  # computed when the image was encoded (`with_object_pass`)
            class_emb, mask_emb = (features.tensors[n].to(self.device, torch.float32)[None] for n in OBJECT_PASS_TENSORS)
            return HeadOutput(class_emb, mask_emb, None)
        obj = self._object_passes.get(features)
        if obj is None:
            obj = self._run_object_pass(mask_features, ms, features.mask_axes, self.decoder_caches.for_image(features))
            self._object_passes[features] = obj
            self.decoder_caches.trim()
        return obj

    def _run_object_pass(self, mask_features: torch.Tensor, ms: list[torch.Tensor], mask_axes: MaskAxes | None,
                         cache: ImageDecoderCache | None = None) -> HeadOutput:
        """The object queries alone through the decoder (no prompt, no stride-4 masks); mask
        embeddings in the frame of `mask_axes`, as `mask_features` are."""
        return self.model.decoder(ms, mask_features, object_queries=True, full_masks="none",
                                  image_cache=cache, mask_axes=mask_axes).final[OBJECT]

    @torch.inference_mode()
    def warm(self, features: ImageFeatures, layers: Sequence[int] | None = None) -> bool:
        """Compute the image's prompt-independent decoder work now (`decoder.ImageDecoderCache`:
        the key and value projections of `layers`, default all, and the level-resized mask
        features) and keep it with `features`, so that their first phrase skips it: what a
        server can do while it waits for the user. A few layers at a time keep each step short.
        Answers do not change. False when the predictor keeps no decoder caches."""
        cache = self.decoder_caches.for_image(features)
        if cache is None:
            return False
        mask_features, ms = self._maps(features)
        self.model.decoder.fill_image_cache(ms, mask_features, cache, None if layers is None else list(layers))
        self.decoder_caches.trim()
        return True

    def _image_cache(self, call: _DecodeCall) -> ImageDecoderCache | None:
        """The decoder cache of the call's image: its prompt-independent work from earlier calls."""
        return self.decoder_caches.for_image(call.features)

    def _object_queries(self, obj: HeadOutput, call: _DecodeCall) -> "_ObjectQueries":
        log_object = None
        if call.vocab_emb is not None:
            no_object = self.model.class_logits(obj.class_emb, call.vocab_emb)[0].softmax(-1)[:, -1]
            log_object = torch.log1p(-no_object.clamp(max=1 - 1e-6))
        return _ObjectQueries(obj.class_emb[0], obj.mask_emb[0], call.mask_features, log_object,
                              None if obj.masks is None else obj.masks[0])

    def _reference_embedding(self, regions: Sequence[ReferringRegion], target: _DecodeCall) -> torch.Tensor:
        """What referring regions show, as one unit vector in the joint vision-language space
        (the "class_embedding" route of the v1 models and seem-tiny; v0 takes the reference's
        route, `_visual_tokens`).

        Why not the reference's route (the region's point features fed to the target image's
        decoder as if they were its own clicks): its v1 code crashes on it, and a decoder only
        ever trained with prompts of the image it decodes reads those features as *where*, not
        *what* (seem-tiny v2 found the same kind of object in 2 of 17 held-out pairs). So each
        region is first segmented in its own image (the interactive path), the object query
        whose mask matches that segment best gives its class embedding, and the target image's
        queries are then ranked by cosine similarity to it, the space labels and phrases live in.
        """
        embeddings = []
        for ref in regions:
            self._referring_masks(ref)  # checks the region
            f = ref.features
            call = _DecodeCall(f, *self._maps(f), vocab=None, vocab_emb=target.vocab_emb)
            # The region's own pass is a spatial one, like a click; the object queries (which
            # never see it) come with the features or are run once per features object, so a
            # region of the target image itself gives the target's object queries too.
            segs = self._spatial(call, [Prompts(spatial=tuple(ref.region))], [None], [None])
            objects = self._objects(call)
            emb = objects.class_emb[objects.best_match(segs[0].memory[0, 0], min_iou=0.0)]
            embeddings.append(emb / (emb.norm() + 1e-7))
        mean = torch.stack(embeddings).mean(0)
        return mean / (mean.norm() + 1e-7)

    def _referred(self, call: _DecodeCall, references: list[torch.Tensor]) -> list[Segmentation]:
        """Referring-only targets: the object queries most similar to each reference embedding,
        weighted by how sure the model is that a query is an object at all."""
        objects = self._objects(call)
        class_emb = objects.class_emb
        segs = []
        for ref in references:
            scores = self._similarity(class_emb, ref)
            if objects.log_object is not None:
                scores = scores + objects.log_object
            order = scores.argsort(descending=True)[:call.max_masks]
            labels = [self._label(class_emb[q], call.vocab, call.vocab_emb) for q in order.tolist()]
            segs.append(self._ranked_segmentation(call.features, objects.masks_of(order), order, scores.softmax(0),
                                                  labels))
        return segs

    def _memory(self, previous: np.ndarray | torch.Tensor | None, features: ImageFeatures) -> torch.Tensor | None:
        if previous is None:
            return None
        h4, w4 = features.padded_size[0] // 4, features.padded_size[1] // 4
        if isinstance(previous, torch.Tensor):
            t = previous.to(self.device, torch.float32)
            if t.shape[-2:] != (h4, w4):
                raise PromptError(f"previous mask logits must be {h4} x {w4} for this image, got {tuple(t.shape[-2:])}")
            return t.reshape(1, 1, h4, w4)
        mask = np.asarray(previous)
        if mask.shape != tuple(features.original_size):
            raise PromptError(f"previous_mask has shape {mask.shape}, the image is {features.original_size}")
        return mask_to_memory(mask.astype(bool), features.input_size, features.padded_size).to(self.device)

    def _spatial(self, call: _DecodeCall, targets: list[Prompts], memories: list,
                 references: list[torch.Tensor | None]) -> list[Segmentation]:
        """Masks of visual targets, labelled by the object queries' pass with
        `prompted_mask_labels="object_match"` (`_objects`: never run in the prompt's pass, so
        a stored pass and a computed one give the same answer)."""
        m = self.model
        # One generator per target, each seeded alike: a target's random draws (token points,
        # query sources) and so its mask do not depend on which other targets share the pass.
        generators = [torch.Generator().manual_seed(self.seed) for _ in targets]
        per_target = [self._visual_tokens(call, t, g) for t, g in zip(targets, generators)]
        ns = len(targets)
        # One token set with a prompt index per target.
        tokens = SpatialTokens(
            tokens=[torch.cat([t.tokens[l] for t in per_target]) for l in range(len(per_target[0].tokens))],
            token_prompt=[torch.cat([t.token_prompt[l] * 0 + i for i, t in enumerate(per_target)])
                          for l in range(len(per_target[0].tokens))],
            pos_embed=torch.cat([t.pos_embed for t in per_target]),
            neg_embed=torch.cat([t.neg_embed for t in per_target]),
        )
        draws = call.draws or Draws()
        source = draws.query_source if draws.query_source is not None else \
            torch.cat([m.decoder.draw_query_sources(1, g) for g in generators])
        prev = [self._memory(mem, call.features) for mem in memories]
        prev_mask = None
        memory_prompt = None
        if any(p is not None for p in prev):
            if any(p is None for p in prev):
                raise PromptError("give a previous mask for every target of a multi-object request, or for none")
            prev_mask = torch.cat(prev, dim=1)
            memory_prompt = draws.memory_prompt if draws.memory_prompt is not None else \
                m.decoder.draw_memory_assignment(ns, generators[0])
        grounding = None
        text = targets[0].text if len(targets) == 1 else None
        if text is not None:
            grounding, _ = m.grounding_input([[text]])
        spatial = m.spatial_input([tokens], source.to(self.device), prev_mask, memory_prompt, see_text=text is not None)
        out = m.decoder(call.ms, call.mask_features, object_queries=False, grounding=grounding, spatial=spatial,
                        image_cache=self._image_cache(call), mask_axes=call.features.mask_axes)
        self.decoder_caches.trim()
        object_labels = call.vocab is not None and self._object_labels(call.vocab_emb)
        return self._spatial_segmentations(call, targets, out, spatial.pos_embed[0], references,
                                           self._objects(call) if object_labels else None)

    def _spatial_segmentations(self, call: _DecodeCall, targets: list[Prompts], out: DecoderOutput,
                               pos_embed: torch.Tensor, references: list[torch.Tensor | None],
                               label_source: "_ObjectQueries | None") -> list[Segmentation]:
        """Each target's best spatial queries as masks in original pixels, labelled, with
        the pieces its negative prompts sit on removed (`drop_negated_pieces`)."""
        s = out.final[SPATIAL]
        f = call.features
        qpp = self.cfg.decoder.queries_per_prompt
        sel = spatial_selection_logits(s.mask_emb[0], pos_embed, qpp)  # (ns*q) x ns
        segs = []
        for p in range(len(targets)):
            prompt_rasters = self._prompt_rasters(targets[p], f)
            own = sel[p * qpp:(p + 1) * qpp, p]
            if references[p] is not None:  # a referring region ranks the prompt's candidates too
                own = own.log_softmax(0) + self._similarity(s.class_emb[0, p * qpp:(p + 1) * qpp], references[p]).log_softmax(0)
            probs = own.softmax(0)
            order = (own.argsort(descending=True) + p * qpp)[:call.max_masks]
            logits = to_original(s.masks[0, order], f.padded_size, f.input_size, f.original_size, "bilinear")
            masks = []
            memory = s.masks[0, order[0]][None, None].cpu()
            for j, q in enumerate(order.tolist()):
                label, label_score, k = self._prompted_label(s.class_emb[0, q], s.masks[0, q], label_source,
                                                             call.vocab, call.vocab_emb)
                mask = (logits[j].sigmoid() > 0.5).cpu().numpy()
                if prompt_rasters is not None:
                    dropped = negated_pieces(mask, *prompt_rasters)
                    if dropped.any():
                        mask = mask & ~dropped
                        if j == 0:  # the next round must not bring the piece back through memory
                            gone = mask_to_memory(dropped, f.input_size, f.padded_size) > 0
                            memory = torch.where(gone, memory.clamp(max=-1.0), memory)
                masks.append(MaskResult(mask, float(probs[q - p * qpp]), label, label_score, k))
            segs.append(Segmentation(masks, memory=memory))
        return segs

    def _prompt_rasters(self, target: Prompts, features: ImageFeatures) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """The positive prompts' pixels and each negative prompt's pixels, in original pixels,
        when the target has a negative prompt and `drop_negated_pieces` is on; else None."""
        if not self.cfg.inference.drop_negated_pieces or all(sp.positive for sp in target.spatial):
            return None
        raster = PromptRasterizer(features.original_size, features.original_size)
        positive = np.zeros(features.original_size, dtype=bool)
        for sp in target.spatial:
            if sp.positive:
                positive |= raster.rasterize(sp)
        return positive, [raster.rasterize(sp) for sp in target.spatial if not sp.positive]

    # ------------------------------------------------------------------ generic segmentation
    @torch.inference_mode()
    def panoptic(self, features: ImageFeatures, vocabulary: Vocabulary | Sequence[str] | None = None,
                 *, semantic: bool = False, object_mask_threshold: float | None = None) -> PanopticResult:
        """Panoptic segmentation with an open vocabulary (stuff names merge per class).

        `object_mask_threshold` (default: the model's inference config) is the class
        confidence a query needs to become a segment.
        """
        started = time.perf_counter()
        vocab = self.vocabulary(vocabulary)
        vocab_emb = self.model.text_encoder.vocabulary_embeddings(vocab.names)
        mask_features, ms = self._maps(features)
        obj = self._object_pass(features, mask_features, ms)
        logits = self.model.class_logits(obj.class_emb, vocab_emb)[0]
        inf = self.cfg.inference
        threshold = inf.object_mask_threshold if object_mask_threshold is None else object_mask_threshold
        idx, scores, labels = panoptic_keep(logits, threshold)
        # Stride-4 masks only for the queries kept (all of them for the semantic map).
        kept = self.model.decoder.mask_logits(obj.mask_emb[:, idx], mask_features)[0]
        masks = to_original(kept, features.padded_size, features.input_size, features.original_size)
        is_thing = [vocab.is_thing(k) for k in range(len(vocab.names))]
        seg_map, merged = panoptic_merge(scores, labels, masks, is_thing, inf.overlap_threshold)
        seg_np = seg_map.cpu().numpy()
        segments = [PanopticSegment(mask=seg_np == seg["id"], score=seg["score"], label=vocab.names[seg["category_id"]],
                                    label_score=seg["score"], category_id=seg["category_id"], id=seg["id"],
                                    isthing=seg["isthing"]) for seg in merged]
        result = PanopticResult(seg_np, segments, {"decode": (time.perf_counter() - started) * 1000})
        if semantic:
            all_masks = to_original(self.model.decoder.mask_logits(obj.mask_emb, mask_features)[0], features.padded_size,
                                    features.input_size, features.original_size)
            result.semantic = semantic_inference(logits, all_masks).cpu().numpy()
        return result

    @torch.inference_mode()
    def instances(self, features: ImageFeatures, vocabulary: Vocabulary | Sequence[str] | None = None,
                  top_k: int | None = None) -> list[MaskResult]:
        """Instance segmentation (thing classes), the reference's top-k over query x class."""
        vocab = self.vocabulary(vocabulary)
        vocab_emb = self.model.text_encoder.vocabulary_embeddings(vocab.names)
        mask_features, ms = self._maps(features)
        obj = self._object_pass(features, mask_features, ms)
        logits = self.model.class_logits(obj.class_emb, vocab_emb)[0]
        masks = to_original(self.model.decoder.mask_logits(obj.mask_emb, mask_features)[0], features.padded_size,
                            features.input_size, features.original_size)
        is_thing = [vocab.is_thing(k) for k in range(len(vocab.names))] if vocab.stuff else None
        inst = instance_inference(logits, masks, top_k or self.cfg.inference.detections_per_image, is_thing)
        order = inst["scores"].argsort(descending=True)
        return [MaskResult(inst["masks"][i].cpu().numpy(), float(inst["scores"][i]), vocab.names[int(inst["labels"][i])],
                           float(inst["scores"][i]), int(inst["labels"][i])) for i in order.tolist()]
