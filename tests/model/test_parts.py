"""Per-part semantics of the network, on CPU in seconds (random weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.decoder import GROUNDING, OBJECT, SPATIAL, ImageDecoderCache
from model.heads import LevelResampler, resize_bilinear
from model.text_encoder import PROMPT_TEMPLATES, clean_class_name
from model.tokenizer import get_tokenizer
from model.transformer import MultiheadAttention


def test_tokenizer_matches_clip_ids() -> None:
    tok = get_tokenizer()
    assert tok.tokenize_ids("a photo of a dog", 77) == [49406, 320, 1125, 539, 320, 1929, 49407]
    ids, mask = tok(["the red circle", "x " * 100], 77)
    assert ids.shape == (2, 77) and int(mask[0].sum()) == 5
    assert ids[1, -1] == tok.eot_token_id and int(mask[1].sum()) == 77  # truncated, EOT kept
    assert tok.decode(tok.encode("Hello, world!")) == "hello , world !"


@pytest.mark.parametrize("text,ids", [
    # ids of the hand-written tokenizer this one replaced (equal on 4,138 strings: COCO and
    # Shapes World names and phrases, 3,000 random strings with accents, CJK and emoji)
    ("the small red circle on the left", [518, 2442, 736, 7117, 525, 518, 1823]),
    ("Traffic-Light &amp; Stop sign!", [3399, 268, 1395, 261, 1691, 2292, 256]),
    ("café 🐶 42", [15304, 10631, 275, 273]),
    ("it's   a\tTEST", [585, 568, 320, 1628]),
])
def test_tokenizer_is_hf_tokenizers_with_clip_ids(text: str, ids: list[int]) -> None:
    from tokenizers import Tokenizer

    tok = get_tokenizer()
    assert isinstance(tok.tokenizer, Tokenizer) and tok.vocab_size == 49408
    assert tok.encode(text) == ids


def test_fully_masked_attention_row_gives_zero_update() -> None:
    torch.manual_seed(0)
    attn = MultiheadAttention(16, 2).eval()
    x = torch.randn(1, 4, 16)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 2] = True  # row 2 blocked everywhere
    with torch.no_grad():
        out = attn(x, x, x, mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 2], attn.out_proj.bias)  # zero attention, then the bias


def test_input_space_attention_equals_projected_attention() -> None:
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    q, k, v = torch.randn(2, 3, 32), torch.randn(2, 400, 32), torch.randn(2, 400, 32)
    mask = torch.rand(2, 1, 3, 400) > 0.7
    with torch.no_grad():
        fast = attn(q, k, v, mask)  # few queries, long memory: the input-space path
    slow = attn(q, k, v, mask)  # with grad enabled: the projected path
    assert torch.allclose(fast, slow, atol=1e-5)


def test_level_resampler_equals_bilinear_resize_of_full_masks() -> None:
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 40, 56)
    emb = torch.randn(1, 5, 8)
    full = torch.einsum("bqc,bchw->bqhw", emb, feats)
    for size in ((5, 7), (10, 14), (20, 28)):
        expected = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        assert torch.allclose(LevelResampler(feats, size)(emb), expected, atol=1e-5)


def test_resize_bilinear_equals_interpolate_at_every_size() -> None:
    """Level sizes (exact even factors: strided 2 x 2 means) and any other size (torch's kernel)."""
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 48, 64)
    for size in ((24, 32), (12, 16), (6, 8), (8, 16), (16, 21), (48, 64), (96, 128)):
        expected = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        assert torch.allclose(resize_bilinear(feats, size), expected, rtol=0, atol=1e-6), size


def test_masks_on_demand_equal_the_final_masks(tiny_model, tiny_predictor, photo) -> None:
    """A pass without stride-4 masks (callers that keep a few of many queries) and the masks
    of the kept queries computed afterwards: the same as the pass that computes them all."""
    m = tiny_model
    mf, ms, _, grounding = _decoder_inputs(m, tiny_predictor, photo)
    with torch.no_grad():
        full = m.decoder(ms, mf, object_queries=True, grounding=grounding).final
        lean = m.decoder(ms, mf, object_queries=True, grounding=grounding, full_masks="none").final
        for group in (OBJECT, GROUNDING):
            assert lean[group].masks is None
            kept = torch.tensor([3, 0, 7])
            assert torch.allclose(m.decoder.mask_logits(lean[group].mask_emb[:, kept], mf), full[group].masks[:, kept],
                                  atol=1e-4), group


def _decoder_inputs(m, predictor, photo):  # noqa: ANN001, ANN202 - fixtures
    """Feature maps of `photo` and one spatial prompt (a rectangle) and one phrase for them."""
    f = predictor.encode([photo])[0]
    mf, ms = predictor._maps(f)
    with torch.no_grad():
        pos = torch.zeros(1, *f.padded_size, dtype=torch.bool)
        pos[0, 40:60, 50:90] = True
        tokens = m.spatial_tokens(pos, torch.zeros_like(pos), mf[0], [x[0] for x in ms])
        spatial = m.spatial_input([tokens], torch.tensor([0, 3, 5]))
        grounding, _ = m.grounding_input([["the red circle"]])
    return mf, ms, spatial, grounding


def test_object_queries_are_unaffected_by_prompts(tiny_model, tiny_predictor, photo) -> None:
    m = tiny_model
    mf, ms, spatial, grounding = _decoder_inputs(m, tiny_predictor, photo)
    with torch.no_grad():
        plain = m.decoder(ms, mf, object_queries=True).final[OBJECT]
        both = m.decoder(ms, mf, object_queries=True, spatial=spatial, grounding=grounding).final
    assert torch.allclose(plain.class_emb, both[OBJECT].class_emb, atol=1e-5)
    assert torch.allclose(plain.masks, both[OBJECT].masks, atol=1e-4)


def test_prompted_queries_are_unaffected_by_object_queries(tiny_model, tiny_predictor, photo) -> None:
    """The predictor adds the object queries to a prompt's pass to label its masks
    (`prompted_mask_labels="object_match"`); the prompt's own outputs must not change."""
    m = tiny_model
    mf, ms, spatial, grounding = _decoder_inputs(m, tiny_predictor, photo)
    with torch.no_grad():
        alone = m.decoder(ms, mf, object_queries=False, spatial=spatial, grounding=grounding).final
        with_objects = m.decoder(ms, mf, object_queries=True, spatial=spatial, grounding=grounding).final
    for kind in (SPATIAL, GROUNDING):
        assert torch.allclose(alone[kind].masks, with_objects[kind].masks, atol=1e-4), kind
        assert torch.allclose(alone[kind].class_emb, with_objects[kind].class_emb, atol=1e-5), kind


def test_fully_blocked_cross_attention_rows_are_unblocked(tiny_model, tiny_predictor, photo) -> None:
    """All masks negative blocks every row everywhere, which must behave like no mask at
    all; all masks positive blocks nothing. The queries' class embeddings (which only see
    the masks through attention) must then agree."""
    f = tiny_predictor.encode([photo])[0]
    mf, ms = tiny_predictor._maps(f)
    last = tiny_model.decoder.heads.mask_embed.layers[-1]
    saved = last.weight.detach().clone(), last.bias.detach().clone()
    outs = []
    try:
        with torch.no_grad():
            last.weight.zero_()
            for bias in (-50.0, 50.0):
                last.bias.fill_(bias)
                # Constant mask features: every mask logit has the sign of the bias.
                outs.append(tiny_model.decoder(ms, torch.ones_like(mf), object_queries=True).final[OBJECT].class_emb)
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])
    assert torch.isfinite(outs[0]).all()
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_vocabulary_prefix_cache_matches_full_encoding(tiny_model) -> None:
    te = tiny_model.text_encoder
    names = ["red circle", "t-shirt", "wall-other-merged", "a" * 30, "sky."]
    with torch.no_grad():
        te.clear_cache()
        fast = te.class_embeddings(names)
        prompts = [t.format(clean_class_name(n)) for n in names for t in PROMPT_TEMPLATES]
        full = te.encode_sentences(prompts).view(len(names), len(PROMPT_TEMPLATES), -1).mean(1)
    full = full / full.norm(dim=-1, keepdim=True)
    assert torch.allclose(fast, full, atol=1e-5)


def test_spatial_queries_only_see_their_own_prompt(tiny_model, tiny_predictor, photo) -> None:
    """Two prompts in one pass give each prompt the same answer as alone (v1 multi-object)."""
    f = tiny_predictor.encode([photo])[0]
    mf, ms = tiny_predictor._maps(f)
    m = tiny_model
    a = torch.zeros(1, *f.padded_size, dtype=torch.bool)
    a[0, 40:43, 50:53] = True
    b = torch.zeros_like(a)
    b[0, 100:140, 150:200] = True
    none = torch.zeros_like(a)
    with torch.no_grad():
        tok_a = m.spatial_tokens(a, none, mf[0], [x[0] for x in ms])
        alone = m.decoder(ms, mf, object_queries=False, spatial=m.spatial_input([tok_a], torch.tensor([1, 2, 3])))
        tok_ab = m.spatial_tokens(torch.cat([a, b]), torch.cat([none, none]), mf[0], [x[0] for x in ms])
        pair = m.decoder(ms, mf, object_queries=False,
                         spatial=m.spatial_input([tok_ab], torch.tensor([1, 2, 3, 4, 5, 6])))
    assert torch.allclose(alone.final[SPATIAL].masks[0], pair.final[SPATIAL].masks[0, :3], atol=1e-4)


def test_a_fully_blocked_attention_row_leaves_training_gradients_finite() -> None:
    """Self-attention rows of padding tokens are blocked everywhere: their output is zero,
    and in training their softmax's NaN must not reach the gradients (it did once, through
    an additive -inf bias: seem train diverged to NaN at the first step)."""
    torch.manual_seed(0)
    attn = MultiheadAttention(16, 2)
    x = torch.randn(1, 5, 16, requires_grad=True)
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[..., 3, :] = True  # row 3 attends nowhere
    out = attn(x, x, x, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    with torch.no_grad():  # the inference path (a bias, in place) gives the same output
        assert torch.allclose(attn(x, x, x, mask), out, atol=1e-6)


def test_an_image_cache_keeps_the_many_query_projections_and_changes_no_output(tiny_model, tiny_predictor,
                                                                            photo) -> None:
    """A phrase's 101 grounding queries project every level's keys and values; with an image
    cache the second call takes them from it and answers bitwise alike. A click's few queries
    attend in the keys' input space and leave no projections behind; a batch cannot share one."""
    m = tiny_model
    mf, ms, spatial, grounding = _decoder_inputs(m, tiny_predictor, photo)
    cache = ImageDecoderCache()
    with torch.inference_mode():
        m.decoder(ms, mf, object_queries=False, spatial=spatial, image_cache=cache)
        assert cache.nbytes == 0
        plain = m.decoder(ms, mf, object_queries=False, grounding=grounding)
        first = m.decoder(ms, mf, object_queries=False, grounding=grounding, image_cache=cache)
        kept = {i: dict(kv) for i, kv in cache.projections.items()}
        again = m.decoder(ms, mf, object_queries=False, grounding=grounding, image_cache=cache)
        with pytest.raises(ValueError, match="batch size 1"):
            m.decoder([x.expand(2, -1, -1, -1) for x in ms], mf.expand(2, -1, -1, -1), image_cache=cache)
    assert sorted(kept) == list(range(m.cfg.decoder.num_layers)) and all(set(kv) == {"k", "v"} for kv in kept.values())
    assert all(again_kv["k"] is kept[i]["k"] for i, again_kv in cache.projections.items())  # read, not recomputed
    for out in (first, again):
        for a, b in zip(plain.rounds, out.rounds, strict=True):
            assert torch.equal(a[GROUNDING].class_emb, b[GROUNDING].class_emb)
            assert torch.equal(a[GROUNDING].mask_emb, b[GROUNDING].mask_emb)
