"""seem-samvitb-v1's architecture against the reference: the SAM ViT backbone and the
deformable-attention pixel decoder, at a tiny configuration, through `seem parity`."""
from __future__ import annotations

import io
from pathlib import Path

from model import parity
from model.config import DeformPixelDecoderConfig, ViTConfig, load_config_file

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "samvit-tiny"


def test_tiny_vit_fixture_matches_the_reference() -> None:
    cfg = load_config_file(FIXTURE / "config.yaml")
    vit = cfg.backbone
    assert isinstance(vit, ViTConfig) and isinstance(cfg.pixel_decoder, DeformPixelDecoderConfig)
    # The fixture exercises windows that need padding, global blocks, and a padded image.
    grid = vit.img_size // vit.patch_size
    assert grid % vit.window_size != 0 and vit.global_attn_indexes
    report = io.StringIO()
    ok = parity.run(FIXTURE, out=report)
    assert ok, report.getvalue()
    summary = report.getvalue().splitlines()[-1]
    assert " 0 failed" in summary and "intermediates" in summary and "spatial_multi_round2" in summary
