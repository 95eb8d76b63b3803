"""One test per network part on tiny configs (as HF does for each model's parts): what
goes in, what comes out, and the invariants a part must keep on its own."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from model.backbone import FocalBackbone
from model.build import get_config
from model.config import FocalConfig, PixelDecoderConfig
from model.parity import Tolerance, compare, run
from model.pixel_decoder import PixelDecoder
from model.visual_sampler import prompt_means, sample_at

TINY_FOCAL = FocalConfig(variant="focal_dw", embed_dim=8, depths=(1, 1, 1, 1), focal_levels=(2, 2, 2, 2),
                         focal_windows=(3, 3, 3, 3), drop_path_rate=0.0)
TINY_PIXEL = PixelDecoderConfig(conv_dim=16, mask_dim=16, num_groups=4, transformer_layers=1, nheads=2,
                                dim_feedforward=32)


@pytest.fixture(scope="module")
def backbone() -> FocalBackbone:
    torch.manual_seed(0)
    return FocalBackbone(TINY_FOCAL).eval()


def test_backbone_gives_four_strides_and_batches_exactly(backbone) -> None:
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
        single = backbone(x[1:])
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for i, (name, t) in enumerate(out.items()):
        stride = 4 * 2 ** i
        assert t.shape == (2, backbone.out_channels[i], 64 // stride, 96 // stride), name
        torch.testing.assert_close(t[1:], single[name], atol=1e-5, rtol=1e-5)  # no cross-image leak


def test_pixel_decoder_gives_mask_features_at_stride_4_and_three_scales(backbone) -> None:
    torch.manual_seed(0)
    decoder = PixelDecoder(TINY_PIXEL, backbone.out_channels).eval()
    with torch.no_grad():
        mask_features, multi_scale = decoder(backbone(torch.randn(1, 3, 64, 96)))
    assert mask_features.shape == (1, TINY_PIXEL.mask_dim, 16, 24)
    assert [tuple(m.shape[-2:]) for m in multi_scale] == [(2, 3), (4, 6), (8, 12)]  # strides 32, 16, 8
    assert all(m.shape[1] == TINY_PIXEL.conv_dim for m in multi_scale)


def test_visual_sampler_reads_features_where_the_prompt_is() -> None:
    fmap = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    coords = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])  # normalised (y, x), corners aligned
    got = sample_at(fmap, coords)
    assert got.shape == (3, 2)
    torch.testing.assert_close(got[:2], torch.stack([fmap[:, 0, 0], fmap[:, 4, 6]]))
    torch.testing.assert_close(got[2], fmap[:, 2, 3])
    means = prompt_means(got, torch.tensor([0, 0, 1]), 3)
    torch.testing.assert_close(means[0], got[:2].mean(0))
    assert (means[2] == -1).all()  # a prompt without points


def test_config_fingerprint_follows_what_changes_the_features() -> None:
    cfg = get_config("seem-tiny")
    assert get_config("seem-tiny").fingerprint() == cfg.fingerprint()
    resized = cfg.replace(inference=replace(cfg.inference, resize_shortest_edge=128))
    assert resized.fingerprint() != cfg.fingerprint()  # preprocessing is part of the model id
    with pytest.raises(ValueError, match="unknown model"):
        get_config("no-such-model")


def test_parity_runner_compares_within_tolerance_and_names_the_failure(tmp_path) -> None:
    ref = torch.zeros(3, 4).numpy()
    assert compare("case", "x", ref + 1e-7, ref, Tolerance()).ok
    assert not compare("case", "x", ref + 1.0, ref, Tolerance()).ok
    shape = compare("case", "x", ref[:2], ref, Tolerance())
    assert not shape.ok and "shape" in shape.detail
    masks = ref.astype(bool)
    flipped = masks.copy()
    flipped[0, 0] = True
    assert compare("case", "m", masks, masks, Tolerance()).ok and "1 differing" in compare("case", "m", flipped, masks,
                                                                                          Tolerance()).detail
    out = io.StringIO()
    assert run(tmp_path, out=out) is False and "not a parity fixture" in out.getvalue()
