"""The samvit-tiny reference fixture exercises what makes seem-samvitb-v1 differ from the Focal
models (windows that need padding, global blocks, the deformable-attention pixel decoder).
Its parity run itself is in test_reference_fixtures.py, with every committed fixture."""
from __future__ import annotations

from pathlib import Path

from model.config import DeformPixelDecoderConfig, ViTConfig, load_config_file

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "samvit-tiny"


def test_tiny_vit_fixture_covers_padded_windows_and_global_blocks() -> None:
    cfg = load_config_file(FIXTURE / "config.yaml")
    vit = cfg.backbone
    assert isinstance(vit, ViTConfig) and isinstance(cfg.pixel_decoder, DeformPixelDecoderConfig)
    # The fixture exercises windows that need padding, global blocks, and a padded image.
    grid = vit.img_size // vit.patch_size
    assert grid % vit.window_size != 0 and vit.global_attn_indexes
