"""The predictor API: batching, determinism, prompts, rounds, geometry, errors."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.types import OBJECT_PASS_TENSORS, PanopticSegment
from model import (Box, Draws, MaskPrompt, Point, Polygon, PromptError, Prompts, ReferringRegion, Scribble,
                   SeemPredictor, build_model)
from model.checkpoint import load_checkpoint
from model.config import load_config_file
from model.seem import Seem
from model.transforms import PromptRasterizer, resized_size

from .conftest import TINY_FIXTURE


def test_batch_of_two_equals_two_single_calls(tiny_predictor, photo) -> None:
    other = np.ascontiguousarray(photo[::-1, ::-1])
    smaller = photo[:100, :150]
    batch = tiny_predictor.encode([photo, other, smaller])
    singles = [tiny_predictor.encode([im])[0] for im in (photo, other, smaller)]
    for b, s in zip(batch, singles):
        assert b.original_size == s.original_size and b.padded_size == s.padded_size
        for key in s.tensors:
            assert torch.allclose(b.tensors[key], s.tensors[key], atol=1e-5), key


def test_same_call_twice_gives_the_same_output(tiny_predictor, photo) -> None:
    f = tiny_predictor.encode([photo])[0]
    prompts = Prompts(spatial=(Point(60, 50), Box(100, 80, 160, 150), Point(20, 20, positive=False)))
    a = tiny_predictor.decode(f, prompts, vocabulary=["circle", "sky"], max_masks=3)
    b = tiny_predictor.decode(f, prompts, vocabulary=["circle", "sky"], max_masks=3)
    assert [m.score for m in a.masks] == [m.score for m in b.masks]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.masks, b.masks))
    assert torch.equal(a.memory, b.memory)


def test_a_negative_click_changes_the_mask(tiny_predictor, photo) -> None:
    f = tiny_predictor.encode([photo])[0]
    pos = tiny_predictor.decode(f, Prompts(spatial=(Point(60, 50),)))
    both = tiny_predictor.decode(f, Prompts(spatial=(Point(60, 50), Point(200, 150, positive=False))))
    assert pos.masks[0].mask.shape == photo.shape[:2]
    assert not torch.equal(pos.memory, both.memory)


def test_every_prompt_kind_and_composition_decodes(tiny_predictor, photo) -> None:
    f = tiny_predictor.encode([photo])[0]
    other = tiny_predictor.encode([photo[:, ::-1].copy()])[0]
    mask = np.zeros(photo.shape[:2], dtype=bool)
    mask[30:60, 40:90] = True
    kinds = [
        Prompts(text="the red circle"),
        Prompts(spatial=(Point(10, 10),)),
        Prompts(spatial=(Box(5, 5, 60, 40),)),
        Prompts(spatial=(Scribble(((5, 5), (50, 30), (80, 20))),)),
        Prompts(spatial=(Polygon(((5, 5), (60, 5), (30, 40))),)),
        Prompts(spatial=(MaskPrompt(mask),)),
        Prompts(referring=(ReferringRegion(other, (Point(100, 80),)),)),
        Prompts(text="circle", spatial=(Point(10, 10),)),
        Prompts(text="circle", referring=(ReferringRegion(other, (Box(10, 10, 50, 50),)),)),
    ]
    for prompts in kinds:
        seg = tiny_predictor.decode(f, prompts, vocabulary=["circle", "square", "sky"], max_masks=2)
        assert len(seg.masks) == 2
        assert seg.masks[0].mask.shape == photo.shape[:2] and seg.masks[0].mask.dtype == bool
        assert seg.masks[0].label in ("circle", "square", "sky")
        assert 0.0 <= seg.masks[0].score <= 1.0 and seg.masks[0].score >= seg.masks[1].score
        assert seg.memory.shape == (1, 1, f.padded_size[0] // 4, f.padded_size[1] // 4)


def test_the_object_pass_stored_at_encode_gives_exactly_what_computing_it_gives(tiny_predictor, photo) -> None:
    """Features encoded with the object queries' pass and the same features without it (the
    predictor then runs it itself, as for an older store object) answer every path bitwise
    alike; with it stored, no call runs the 101-query pass: panoptic and instances run no
    decoder pass, a referring region of another image one (the region's, like a click)."""
    vocab = ["circle", "square", "sky"]
    stored = tiny_predictor.encode([photo])[0]
    bare = replace(stored, tensors={k: v for k, v in stored.tensors.items() if k not in OBJECT_PASS_TENSORS})
    assert stored.has_object_pass and not bare.has_object_pass
    other, other_bare = replace(stored), replace(bare)  # a referring image: other features objects
    passes = []
    hook = tiny_predictor.model.decoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        pan = tiny_predictor.panoptic(stored, vocab, semantic=True)
        inst = tiny_predictor.instances(stored, vocab)
        assert passes == []
        region = (Box(10, 10, 60, 50),)
        for prompts, bare_prompts, runs in [
                (Prompts(referring=(ReferringRegion(other, region),)),
                 Prompts(referring=(ReferringRegion(other_bare, region),)), 1),
                (Prompts(referring=(ReferringRegion(stored, region),)),
                 Prompts(referring=(ReferringRegion(bare, region),)), 1),
                (Prompts(text="circle"), Prompts(text="circle"), 1),
                (Prompts(spatial=(Point(60, 50),)), Prompts(spatial=(Point(60, 50),)), 1)]:
            passes.clear()
            got = tiny_predictor.decode(stored, prompts, vocabulary=vocab, max_masks=2)
            assert len(passes) == runs
            want = tiny_predictor.decode(bare, bare_prompts, vocabulary=vocab, max_masks=2)
            assert torch.equal(got.memory, want.memory)
            for a, b in zip(got.masks, want.masks, strict=True):
                assert np.array_equal(a.mask, b.mask) and (a.score, a.label, a.label_score) == (b.score, b.label, b.label_score)
    finally:
        hook.remove()
    bare_pan = tiny_predictor.panoptic(bare, vocab, semantic=True)
    assert np.array_equal(pan.segment_map, bare_pan.segment_map) and np.array_equal(pan.semantic, bare_pan.semantic)
    bare_inst = tiny_predictor.instances(bare, vocab)
    assert [(m.score, m.label) for m in inst] == [(m.score, m.label) for m in bare_inst]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(inst, bare_inst))
    with pytest.raises(ValueError, match="pixel-decoder"):
        tiny_predictor.with_object_pass(replace(bare, stage="backbone"))


def test_without_a_stored_object_pass_it_is_run_once_per_features_object(tiny_predictor, photo) -> None:
    """Features without the pass (older store objects, backbone-stage features): panoptic,
    instances and referring share one run of it while the features object lives, and a
    region of the target image itself gives the target its object queries too."""
    f = tiny_predictor.encode([photo], object_pass=False)[0]
    assert not f.has_object_pass and set(f.tensors) == {"mask_features", "ms0", "ms1", "ms2"}
    passes = []
    hook = tiny_predictor.model.decoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        cold = tiny_predictor.panoptic(f, ["circle", "square", "sky"], semantic=True)
        warm = tiny_predictor.panoptic(f, ["circle", "square", "sky"], semantic=True)
        tiny_predictor.instances(f, ["circle", "square"])
        assert len(passes) == 1
        tiny_predictor.panoptic(replace(f), ["circle", "square", "sky"])  # another features object: a new pass
        assert len(passes) == 2
        g = replace(f)
        passes.clear()
        tiny_predictor.decode(g, Prompts(referring=(ReferringRegion(g, (Point(100, 80),)),)))
        assert len(passes) == 2  # the region's spatial pass and the one object pass
    finally:
        hook.remove()
    assert np.array_equal(cold.segment_map, warm.segment_map) and np.array_equal(cold.semantic, warm.semantic)


def test_decoder_caches_answer_alike_stay_in_budget_and_go_with_their_features(tiny_model, photo) -> None:
    """The predictor keeps each image's prompt-independent decoder work (a phrase's key and value
    projections) for the features objects it decoded last, within `decoder_cache_mb`: answers
    equal a predictor that keeps nothing, a second image pushes the first one's out of a budget
    that holds one, and a features object that is dropped takes its cache with it."""
    import gc

    per_image = SeemPredictor(tiny_model, device="cpu")
    f = per_image.encode([photo], object_pass=False)[0]
    per_image.decode(f, Prompts(text="circle"))
    one_image_mb = per_image.decoder_caches.nbytes / 2**20
    assert one_image_mb > 0
    keeping = SeemPredictor(tiny_model, device="cpu", decoder_cache_mb=1.5 * one_image_mb)
    nothing = SeemPredictor(tiny_model, device="cpu", decoder_cache_mb=0)
    first, second = (nothing.encode([im], object_pass=False)[0] for im in (photo, photo[::-1].copy()))
    prompts = [Prompts(text="circle"), Prompts(text="square"), Prompts(spatial=(Point(60, 50),))]
    for features in (first, second, first):
        for p in prompts:
            got = keeping.decode(features, p, vocabulary=["circle", "square"], max_masks=2)
            want = nothing.decode(features, p, vocabulary=["circle", "square"], max_masks=2)
            assert torch.equal(got.memory, want.memory)
            assert [(m.score, m.label) for m in got.masks] == [(m.score, m.label) for m in want.masks]
        assert len(keeping.decoder_caches) == 1  # the image decoded last
        assert 0 < keeping.decoder_caches.nbytes <= keeping.decoder_caches.max_bytes
    assert len(nothing.decoder_caches) == 0 and nothing.decoder_caches.nbytes == 0
    del first, second, features
    gc.collect()
    assert len(keeping.decoder_caches) == 0


def test_an_encoded_image_keeps_its_object_pass_projections_for_the_first_phrase(tiny_predictor, photo) -> None:
    """`encode` runs the object queries' pass, which projects every level's keys and values;
    the features it returns keep them, so their first phrase reuses that work."""
    tiny_predictor.decoder_caches.clear()
    f = tiny_predictor.encode([photo])[0]
    kept = tiny_predictor.decoder_caches.nbytes
    assert len(tiny_predictor.decoder_caches) == 1 and kept > 0
    tiny_predictor.decode(f, Prompts(text="circle"))
    assert tiny_predictor.decoder_caches.nbytes == kept  # nothing new to project


def test_multi_object_pass_and_rounds(tiny_predictor, photo) -> None:
    f = tiny_predictor.encode([photo])[0]
    targets = [Prompts(spatial=(Point(10, 10),)), Prompts(spatial=(Box(100, 80, 160, 150),))]
    first = tiny_predictor.decode_many(f, targets)
    assert len(first) == 2
    second = tiny_predictor.decode_many(f, targets, previous_masks=[s.memory for s in first])
    assert len(second) == 2
    # A boolean previous mask in original pixels works too (what the HTTP API sends).
    boolean = tiny_predictor.decode(f, targets[0], previous_mask=first[0].masks[0].mask)
    assert boolean.masks[0].mask.shape == photo.shape[:2]
    with pytest.raises(PromptError, match="previous"):
        tiny_predictor.decode_many(f, targets, previous_masks=[first[0].memory])
    with pytest.raises(TypeError, match="decode_many"):  # decode returns one Segmentation, never a list
        tiny_predictor.decode(f, targets)


def test_a_target_gets_the_same_mask_alone_or_in_a_multi_object_pass(tiny_predictor, photo) -> None:
    """Bulk jobs decode many targets of an image per call; each must get what it gets alone
    (its random draws are its own), or results would depend on how entries are batched."""
    f = tiny_predictor.encode([photo])[0]
    targets = [Prompts(spatial=(Point(10, 10),)), Prompts(spatial=(Box(100, 80, 160, 150),)),
               Prompts(spatial=(Point(120, 100), Point(20, 20, positive=False)))]
    together = tiny_predictor.decode_many(f, targets, max_masks=2)
    for target, seg in zip(targets, together):
        alone = tiny_predictor.decode(f, target, max_masks=2)
        for a, b in zip(alone.masks, seg.masks):
            assert np.array_equal(a.mask, b.mask) and a.score == pytest.approx(b.score, abs=1e-5)


def test_prompts_outside_the_image_are_rejected(tiny_predictor, photo) -> None:
    f = tiny_predictor.encode([photo])[0]
    h, w = photo.shape[:2]
    for bad in (Point(w, 10), Point(-1, 5), Box(0, 0, w + 5, 10), Scribble(((1, 1), (2, h))),
                Polygon(((1, 1), (2, 2)))):
        with pytest.raises(PromptError):
            tiny_predictor.decode(f, Prompts(spatial=(bad,)))
    with pytest.raises(PromptError, match="shape"):
        tiny_predictor.decode(f, Prompts(spatial=(MaskPrompt(np.ones((3, 3), dtype=bool)),)))
    with pytest.raises(ValueError):
        Prompts(text="   ")


def test_rasterised_prompts_land_where_the_user_pointed() -> None:
    r = PromptRasterizer((100, 200), (128, 256))  # 1.28x upscale
    m = r.rasterize(Point(100, 50))
    ys, xs = np.nonzero(m)
    assert m.sum() == 9 and abs(xs.mean() - (100.5 * 1.28 - 0.5)) <= 0.5 and abs(ys.mean() - (50.5 * 1.28 - 0.5)) <= 0.5
    b = r.rasterize(Box(10, 20, 29, 39))  # 20 x 20 original pixels
    ys, xs = np.nonzero(b)
    assert xs.min() == 12 and xs.max() == 38 and ys.min() == 25 and ys.max() == 51


def test_resize_rule_is_shortest_edge_with_cap() -> None:
    assert resized_size(512, 683, 512) == (512, 683)
    assert resized_size(1000, 500, 512) == (1024, 512)
    assert resized_size(100, 1000, 256, 512) == (51, 512)
    assert resized_size(200, 240, None) == (200, 240)


def test_backbone_stage_features_materialise_to_the_same_masks(tiny_predictor, photo) -> None:
    full = tiny_predictor.encode([photo])[0]
    early = tiny_predictor.encode([photo], stage="backbone")[0]
    assert early.nbytes < full.nbytes
    a = tiny_predictor.decode(full, Prompts(spatial=(Point(60, 50),)))
    b = tiny_predictor.decode(early, Prompts(spatial=(Point(60, 50),)))
    assert np.array_equal(a.masks[0].mask, b.masks[0].mask)


def test_panoptic_and_instances_cover_the_image_consistently(tiny_predictor, photo) -> None:
    f = tiny_predictor.encode([photo])[0]
    pan = tiny_predictor.panoptic(f, ["circle", "square", "sky"], semantic=True)
    assert pan.segment_map.shape == photo.shape[:2]
    assert pan.semantic.shape == (3, *photo.shape[:2])
    for seg in pan.segments:
        assert isinstance(seg, PanopticSegment) and seg.label in ("circle", "square", "sky")
        assert np.array_equal(seg.mask, pan.segment_map == seg.id) and seg.area == int(seg.mask.sum())
        assert seg.isthing == (seg.label != "sky") and seg.score == seg.label_score
    inst = tiny_predictor.instances(f, ["circle", "square"], top_k=5)
    assert len(inst) == 5 and all(i.mask.shape == photo.shape[:2] for i in inst)


@pytest.mark.skipif(not TINY_FIXTURE.is_dir(), reason="reference fixtures (shared/seem-reference) not present")
def test_predictor_reproduces_the_reference_round_two() -> None:
    """The predictor's own path (rasterised clicks, selection, resizing to the original size)
    gives the reference's interactive masks, with the reference's draws injected."""
    cfg = load_config_file(TINY_FIXTURE / "config.yaml")
    cfg = cfg.replace(inference=replace(cfg.inference, resize_shortest_edge=None))
    model = Seem(cfg)
    load_checkpoint(model, TINY_FIXTURE / "weights.safetensors")
    predictor = SeemPredictor(model, device="cpu")
    spec = json.loads((TINY_FIXTURE / "spec.json").read_text())
    image = np.load(TINY_FIXTURE / "inputs.npz")["image"]
    f = predictor.encode([image])[0]
    # The fixture's final masks are at a simulated original size: resize the features' geometry.
    f = replace(f, original_size=tuple(spec["orig_hw"]))
    cy, cx = spec["prompts"]["click"]["yx"]
    ny, nx = spec["prompts"]["neg_click"]["yx"]
    scale = spec["orig_hw"][0] / image.shape[0]
    r1 = np.load(TINY_FIXTURE / "spatial_point.npz")
    r2 = np.load(TINY_FIXTURE / "spatial_point_round2.npz")
    click = Point((cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5)
    first = predictor.decode(f, Prompts(spatial=(click,)),
                             draws=Draws(query_source=torch.from_numpy(r1["spatial_query_source_idx"])))
    assert (first.masks[0].mask != r1["final_mask"][0]).sum() <= 5
    neg = Point((nx + 0.5) * scale - 0.5, (ny + 0.5) * scale - 0.5, positive=False)
    second = predictor.decode(f, Prompts(spatial=(click, neg)), previous_mask=first.memory,
                              draws=Draws(query_source=torch.from_numpy(r2["spatial_query_source_idx"]),
                                          memory_prompt=torch.from_numpy(r2["memory_indices"])))
    assert (second.masks[0].mask != r2["final_mask"][0]).sum() <= 5


def test_prompted_mask_labels_from_matching_object_queries(tiny_model, photo) -> None:
    """`prompted_mask_labels="object_match"` changes where labels come from, nothing else;
    an unknown setting is refused when the config is made."""
    import dataclasses

    from model.config import InferenceConfig

    vocab = ["circle", "square", "sky"]
    prompts = [Prompts(spatial=(Point(60, 50),)), Prompts(text="circle"), Prompts(text="circle", spatial=(Point(60, 50),))]
    by_mode = {}
    for mode in ("query", "object_match"):
        predictor = SeemPredictor(tiny_model, device="cpu")
        predictor.cfg = predictor.cfg.replace(
            inference=dataclasses.replace(predictor.cfg.inference, prompted_mask_labels=mode))
        f = predictor.encode([photo])[0]
        by_mode[mode] = [predictor.decode(f, p, vocabulary=vocab, max_masks=2) for p in prompts]
    for a, b in zip(by_mode["query"], by_mode["object_match"]):
        for x, y in zip(a.masks, b.masks):
            assert np.array_equal(x.mask, y.mask) and x.score == pytest.approx(y.score, abs=1e-5)
            assert y.label in vocab
    with pytest.raises(ValueError, match="prompted_mask_labels"):
        InferenceConfig(prompted_mask_labels="nearest")


def test_negated_pieces_are_the_ones_a_negative_click_is_on_and_no_positive_prompt_touches() -> None:
    from model.postprocess import negated_pieces

    mask = np.zeros((40, 60), dtype=bool)
    mask[5:20, 5:20] = True  # piece A
    mask[5:20, 35:50] = True  # piece B, apart from A
    pos = PromptRasterizer((40, 60), (40, 60))

    def click(x: int, y: int) -> np.ndarray:
        return pos.rasterize(Point(x, y))

    a, b = mask.copy(), mask.copy()
    a[:, 30:] = False
    b[:, :30] = False
    assert np.array_equal(negated_pieces(mask, click(10, 10), [click(40, 10)]), b)
    # A click at the edge of a piece, its square partly outside, is no request to drop it.
    assert not negated_pieces(mask, click(10, 10), [click(35, 10)]).any()
    # A piece a positive prompt touches stays, whatever negative click is on it too.
    assert not negated_pieces(mask, click(10, 10) | click(45, 15), [click(40, 10)]).any()
    # No positive prompt at all (a phrase with a negative click): the clicked piece goes.
    assert np.array_equal(negated_pieces(mask, np.zeros_like(mask), [click(10, 10)]), a)
    # Diagonal neighbours are one piece.
    chain = np.zeros((10, 10), dtype=bool)
    chain[2:5, 2:5] = True
    chain[5:8, 5:8] = True
    small = PromptRasterizer((10, 10), (10, 10))
    assert np.array_equal(negated_pieces(chain, np.zeros_like(chain), [small.rasterize(Point(6, 6))]), chain)


def test_drop_negated_pieces_only_removes_and_is_off_for_the_reference(tiny_model, photo) -> None:
    """With `drop_negated_pieces` on, a mask is the network's mask less whole pieces (and the
    memory agrees); official configs keep it off."""
    import dataclasses

    from model.build import get_config

    prompts = Prompts(spatial=(Point(60, 50), Point(200, 150, positive=False), Point(30, 140, positive=False)))
    results = {}
    for on in (False, True):
        predictor = SeemPredictor(tiny_model, device="cpu")
        predictor.cfg = predictor.cfg.replace(
            inference=dataclasses.replace(predictor.cfg.inference, drop_negated_pieces=on))
        f = predictor.encode([photo])[0]
        results[on] = predictor.decode(f, prompts, max_masks=3)
    for off, on in zip(results[False].masks, results[True].masks):
        assert not (on.mask & ~off.mask).any()
        assert on.score == pytest.approx(off.score, abs=1e-6)
    assert (results[True].memory <= results[False].memory).all()
    assert not get_config("seem-focalt-v1").inference.drop_negated_pieces
    assert get_config("seem-tiny").inference.drop_negated_pieces


def test_warming_an_image_makes_its_first_phrase_find_the_projections(tiny_model, photo) -> None:
    """`warm` computes what a phrase keeps (layer by layer, as a server does between requests):
    the phrase then adds nothing to the cache and answers exactly as on a cold image."""
    predictor = SeemPredictor(tiny_model, device="cpu")
    cold, warmed = (predictor.encode([photo], object_pass=False)[0] for _ in range(2))
    for layer in range(tiny_model.cfg.decoder.num_layers):
        assert predictor.warm(warmed, [layer])
    kept = predictor.decoder_caches.nbytes
    assert kept > 0
    phrase = Prompts(text="circle")
    got = predictor.decode(warmed, phrase, vocabulary=["circle", "square"], max_masks=2)
    assert predictor.decoder_caches.nbytes == kept  # the phrase found everything it projects
    want = predictor.decode(cold, phrase, vocabulary=["circle", "square"], max_masks=2)
    assert torch.equal(got.memory, want.memory)
    assert [(m.score, m.label) for m in got.masks] == [(m.score, m.label) for m in want.masks]
    assert not SeemPredictor(tiny_model, device="cpu", decoder_cache_mb=0).warm(cold)
