"""Weights: the official checkpoint layout (every key and shape of the reference's
state_dict listings), strict loading with clear errors, and no code execution on load."""
from __future__ import annotations

import gc
import io
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from model.build import get_config
from model.checkpoint import KNOWN_UNUSED, load_state, ours_to_reference
from model.decoder_v0 import SeemDecoderV0
from model.seem import Seem

from .conftest import REFERENCE


def reference_layout(name: str) -> dict[str, tuple[int, ...]]:
    rows = (REFERENCE / f"{name}_v1_state_dict.tsv").read_text().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, _ = row.split("\t")
        out[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return out


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference key listings (shared/seem-reference) not present")
@pytest.mark.parametrize("name", ["focalt", "focall"])
def test_official_layout_loads_every_tensor(name: str, tmp_path: Path) -> None:
    layout = reference_layout(name)
    model = build_model(f"seem-{name}-v1", weights=None)
    # The layout our module maps to must be exactly the reference's (minus training-only buffers).
    ours = {ours_to_reference(k): tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v for k, v in layout.items() if not k.startswith(KNOWN_UNUSED)}
    assert ours == expected

    # A checkpoint with every key of the listing, each tensor with distinct values, in the
    # official container (a flat torch.save of the state_dict).
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) if shape else torch.tensor(0.5) for k, shape in layout.items()}
    path = tmp_path / f"seem_{name}_v1.pt"
    torch.save(state, path)
    del model
    gc.collect()
    fresh = build_model(f"seem-{name}-v1", weights=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unexpected key" warning: every tensor is used or known
        load_checkpoint(fresh, path)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[ours_to_reference(key)]), key  # every parameter filled

    # One key removed: the error names it (in the reference's naming).
    missing = "sem_seg_head.predictor.query_feat.weight"
    del state[missing]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        load_checkpoint(fresh, path)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference key listings (shared/seem-reference) not present")
@pytest.mark.parametrize("model_name,listing,missing", [
    ("seem-samvitb-v1", "samvitb", "backbone.blocks.5.attn.rel_pos_h"),
    # The v0 checkpoints have the v1 key lists (shared/seem-reference/NOTES.md, section 1).
    ("seem-focalt-v0", "focalt", "sem_seg_head.predictor.query_feat.weight"),
    ("seem-focall-v0", "focall", "backbone.layers.2.blocks.17.modulation.h.weight"),
])
def test_official_layout_loads_strictly_in_memory(model_name: str, listing: str, missing: str) -> None:
    """seem-samvitb-v1 (SAM ViT-B backbone, deformable pixel decoder) takes seem_samvitb_v1.pt;
    seem-focalt-v0 / seem-focall-v0 (the seem_v0 decoder) take seem_focalt_v0.pt / seem_focall_v0.pt.

    Built on the meta device and then given uninitialised storage, and the state handed to
    the loader in memory: a random initialisation of 215-341 M parameters and 0.9-1.4 GB file
    round trips cost minutes on CI's cores, and reading files is covered by the test above."""
    layout = reference_layout(listing)
    with torch.device("meta"):
        model = Seem(get_config(model_name))
    ours = {ours_to_reference(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: v for k, v in layout.items() if not k.startswith(KNOWN_UNUSED)}
    assert isinstance(model.decoder, SeemDecoderV0) == model_name.endswith("-v0")
    model = model.to_empty(device="cpu")

    # Every tensor of the listing (training buffers included), each filled with its own index
    # (an expanded scalar: no gigabytes of values to allocate and compare).
    state = {k: torch.tensor(float(i)).expand(shape) for i, (k, shape) in enumerate(layout.items())}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor is used or a known training buffer
        load_state(model, state, name=f"{model_name.replace('-', '_')}.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[ours_to_reference(key)]), key  # every parameter filled

    # A missing key fails, naming it.
    assert missing in layout
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        load_state(model, {k: v for k, v in state.items() if k != missing})
    if listing == "samvitb":  # a wrong shape fails too, naming the key and both shapes
        wrong = "sem_seg_head.pixel_decoder.transformer.encoder.layers.2.self_attn.sampling_offsets.weight"
        with pytest.raises(CheckpointError, match=wrong.replace(".", r"\.") + r": checkpoint \(96, 512\)"):
            load_state(model, {**state, wrong: torch.zeros(96, 512)})


def test_wrapped_checkpoint_and_safetensors_round_trip(tiny_model, tmp_path: Path) -> None:
    ref_state = {ours_to_reference(k): v for k, v in tiny_model.state_dict().items()}
    for wrapper in ("model", "state_dict"):
        path = tmp_path / f"{wrapper}.pt"
        torch.save({wrapper: ref_state, "epoch": 3}, path)
        other = build_model("seem-tiny", weights=None)
        load_checkpoint(other, path)
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), tiny_model.state_dict().values()))
    for reference_names in (False, True):
        path = tmp_path / f"w{int(reference_names)}.safetensors"
        save_checkpoint(tiny_model, path, reference_names=reference_names)
        other = build_model("seem-tiny", weights=None)
        load_checkpoint(other, path)
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), tiny_model.state_dict().values()))


def test_shape_mismatch_and_unexpected_keys_are_named(tiny_model, tmp_path: Path) -> None:
    state = {ours_to_reference(k): v.clone() for k, v in tiny_model.state_dict().items()}
    state["sem_seg_head.predictor.level_embed.weight"] = torch.zeros(5, 7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"level_embed\.weight: checkpoint \(5, 7\)"):
        load_checkpoint(build_model("seem-tiny", weights=None), tmp_path / "bad.pt")

    state = {ours_to_reference(k): v.clone() for k, v in tiny_model.state_dict().items()}
    state["sem_seg_head.predictor.bbox_embed.weight"] = torch.zeros(3)
    state["criterion.empty_weight"] = torch.ones(3)  # known training buffer: quietly skipped
    torch.save(state, tmp_path / "extra.pt")
    with pytest.warns(UserWarning, match=r"bbox_embed\.weight") as record:
        load_checkpoint(build_model("seem-tiny", weights=None), tmp_path / "extra.pt")
    assert not any("criterion" in str(r.message) for r in record)


class _Exploit:
    """Pickles to a call of os.system: what a malicious checkpoint would contain."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_loading_never_executes_code_from_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save({"weight": _Exploit()}, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(build_model("seem-tiny", weights=None), tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
