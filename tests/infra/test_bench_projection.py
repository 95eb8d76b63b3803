"""bench/projected_mask_features.py: the projected form of mask features (what a store holding
the pixel decoder's pre-projection activation would decode from) equals the dense one, so the
costs bench/store_projection.py reports are those of a correct computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize("kernel", [1, 3])  # the deformable pixel decoder's projection, the FPN one's
def test_projected_mask_features_equal_the_dense_map(kernel: int) -> None:
    """Mask features kept as the pre-projection activation (what a store can hold instead of
    the map) give the dense map's logits, level logits and prompt means: in float64 to 1e-9,
    so no tolerance hides a tap or a bias that is wrong only at the borders or empty prompts."""
    from bench.projected_mask_features import DenseMaskFeatures, ProjectedMaskFeatures
    from model.visual_sampler import PromptPixels

    g = torch.Generator().manual_seed(0)
    y = F.relu(torch.randn(2, 6, 16, 12, generator=g, dtype=torch.float64))  # >= 0, about half zeros
    weight = torch.randn(5, 6, kernel, kernel, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    dense = DenseMaskFeatures(F.conv2d(y, weight, bias, padding=kernel // 2))
    lazy = ProjectedMaskFeatures(y, weight, bias)
    emb = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and float((a - b).abs().max()) <= 1e-9 * float(b.abs().max())

    assert close(lazy.logits(emb), dense.logits(emb))
    for size in [(8, 6), (4, 3), (2, 3), (5, 7)]:  # strided means, and F.interpolate's sizes
        assert close(lazy.level_logits(emb, size), dense.level_logits(emb, size)), size
    masks = torch.zeros(3, 64, 48, dtype=torch.bool)  # prompts on the padded input (stride 4 = 16 x 12)
    masks[0, 0, 0] = masks[0, 63, 47] = True  # the two corners: border taps
    masks[2, 10:30, 5:9] = True  # prompt 1 has no points
    pts = PromptPixels(masks).sample(1000)
    for image in (0, 1):
        got = lazy.prompt_means(pts.coords, pts.prompt, 3, -1.0, image)
        assert close(got, dense.prompt_means(pts.coords, pts.prompt, 3, -1.0, image))
        assert bool((got[1] == -1).all())  # an empty prompt keeps its marker, not the bias

