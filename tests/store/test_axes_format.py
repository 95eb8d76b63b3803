"""Store format version 4 ("axes"): mask features along the model's mask axes, the axes stored
once per (store, model), objects that name them, and damage or loss of either caught."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from model.mask_axes import MaskAxes
from model.types import OBJECT_PASS_TENSORS, ImageFeatures
from store import CorruptObject, FeatureStore, content_sha256, deserialize_features
from store.feature_store import as_stored, serialize_features
from store.mask_axes import (AXES_RELATIVE_STEP, AXES_STEP_CAP, component_steps, deserialize_mask_axes, mask_axes_key,
                             quantize_components, serialize_mask_axes)

MODEL = "seem-test-0123abcd"
SHA = content_sha256(b"image bytes")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "store"


def make_features(seed: int = 0) -> ImageFeatures:
    """Smooth 16-channel maps whose energy sits in a few directions, as real ones do."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(16, 6, 8, generator=g) * torch.logspace(1, -2, 16)[:, None, None]
    mix, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    smooth = torch.nn.functional.interpolate(base[None], size=(24, 32), mode="bilinear")[0]
    mask_features = (mix.float() @ smooth.reshape(16, -1)).reshape(16, 24, 32) + 3.0
    tensors = {"mask_features": mask_features, "ms0": torch.randn(16, 1, 1, generator=g),
               "ms1": torch.randn(16, 2, 2, generator=g), "ms2": torch.randn(16, 4, 4, generator=g)}
    tensors.update({name: torch.randn(5, 16, generator=g) for name in OBJECT_PASS_TENSORS})
    return ImageFeatures(MODEL, (45, 61), (24, 32), (32, 32), tensors)


def make_axes(seed: int = 1) -> MaskAxes:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    return MaskAxes(q.to(torch.float32).contiguous(), torch.logspace(0, -4, 16))


def header(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


class Calibration:
    """`predictor.mask_axes` as a writer passes it: counts how often the store asks."""

    def __init__(self, axes: MaskAxes) -> None:
        self.axes, self.calls = axes, 0

    def __call__(self) -> MaskAxes:
        self.calls += 1
        return self.axes


def test_axes_objects_are_format_4_and_hold_components_within_half_a_step(fstore) -> None:
    features, axes = make_features(), make_axes()
    calibration = Calibration(axes)
    key = fstore.put_info(features, SHA, dtype="axes", compress="shuffle+zstd", mask_axes=calibration).key
    meta = header(fstore.backend.get(key))["__metadata__"]
    assert meta["store.format"] == "seem-ray-features/4" and meta["store.mask_axes"] == axes.id
    assert json.loads(meta["store.tensors"])["mask_features.escapes"]["dtype"] == "int32"
    got = fstore.get(MODEL, SHA)
    assert got.mask_axes is not None and got.mask_axes.id == axes.id
    exact = axes.components(features.tensors["mask_features"])
    step = component_steps(exact, axes.weights, AXES_RELATIVE_STEP, AXES_STEP_CAP)
    err = (got.tensors["mask_features"] - exact).abs().flatten(1).amax(1)
    assert bool((err <= step / 2 * 1.001 + 1e-6).all())
    # Steps follow the weights: the most used axis is quantised the finest.
    assert float(step[0]) < float(step[-1]) / 50
    # The object pass's mask embeddings are in the same frame (float16, as in int10 objects).
    want = axes.in_frame(features.tensors["object_mask_emb"]).half()
    torch.testing.assert_close(got.tensors["object_mask_emb"], want.float(), atol=2e-3, rtol=2e-3)
    # Read as stored: components stay float32 (their finest steps are below float16's rounding).
    assert fstore.get(MODEL, SHA, dtype=None).tensors["mask_features"].dtype == torch.float32
    assert calibration.calls == 1


def test_the_axes_are_stored_once_and_every_writer_settles_on_them(fstore) -> None:
    first = Calibration(make_axes(1))
    for i in range(3):
        fstore.put(make_features(i), content_sha256(bytes([i])), dtype="axes", mask_axes=first)
    assert first.calls == 1
    stored = [k for k, _ in fstore.backend.list(f"{MODEL}/mask_axes/")]
    assert stored == [mask_axes_key(MODEL, first.axes.id)]
    # Another writer (a new process, another machine) with a calibration of its own uses the store's.
    other_writer, other = FeatureStore(fstore.root_uri, backend=fstore.backend), Calibration(make_axes(2))
    other_writer.put(make_features(7), content_sha256(b"seven"), dtype="axes", mask_axes=other)
    assert other.calls == 0
    assert other_writer.get(MODEL, content_sha256(b"seven")).mask_axes.id == first.axes.id


def test_as_stored_gives_what_a_reader_gets(tmp_path) -> None:
    fs = FeatureStore(str(tmp_path / "store"))
    features, axes = make_features(), make_axes()
    fs.put(features, SHA, dtype="axes", compress="shuffle+zstd", mask_axes=axes)
    got, fresh = fs.get(MODEL, SHA, dtype=None), as_stored(features, "axes", axes)
    assert fresh.mask_axes is axes
    for name, t in got.tensors.items():
        assert t.dtype == fresh.tensors[name].dtype and torch.equal(t, fresh.tensors[name]), name


def test_features_along_axes_are_written_as_channels_in_the_older_formats(tmp_path) -> None:
    features, axes = make_features(), make_axes()
    rotated = features.in_frame(axes)
    for dtype in ("float32", "int10"):
        data = serialize_features(rotated, SHA, dtype=dtype)
        got = deserialize_features(data)
        assert got.mask_axes is None
        tol = 1e-4 if dtype == "float32" else 0.05
        torch.testing.assert_close(got.tensors["mask_features"], features.tensors["mask_features"], atol=tol, rtol=0)
    # Already along axes: written along them without asking for any.
    again = deserialize_features(serialize_features(rotated, SHA, dtype="axes"), mask_axes=lambda _: axes)
    assert again.mask_axes.id == axes.id


def test_an_axes_object_needs_its_axes(fstore) -> None:
    features, axes = make_features(), make_axes()
    with pytest.raises(ValueError, match="needs mask_axes"):
        fstore.put(features, SHA, dtype="axes")
    key = fstore.put(features, SHA, dtype="axes", mask_axes=axes)
    data = fstore.backend.get(key)
    with pytest.raises(ValueError, match="FeatureStore.get"):
        deserialize_features(data)
    fstore.backend.delete(mask_axes_key(MODEL, axes.id))
    with pytest.raises(CorruptObject, match=f"mask axes {axes.id} are missing"):
        FeatureStore(fstore.root_uri, backend=fstore.backend).get(MODEL, SHA)


def test_damaged_axes_are_caught(tmp_path) -> None:
    fs = FeatureStore(str(tmp_path / "store"))
    axes = make_axes()
    fs.put(make_features(), SHA, dtype="axes", mask_axes=axes)
    key = mask_axes_key(MODEL, axes.id)
    data = bytearray(fs.backend.get(key))
    data[-3] ^= 0x10  # a bit of the last weight
    fs.backend.put_atomic(key, bytes(data))
    with pytest.raises(CorruptObject, match="expected"):
        FeatureStore(fs.root_uri).get(MODEL, SHA)
    fs.backend.put_atomic(key, b"not safetensors at all")
    with pytest.raises(CorruptObject, match="unreadable mask axes"):
        FeatureStore(fs.root_uri).get(MODEL, SHA)
    with pytest.raises(CorruptObject, match="not the mask axes of model"):
        deserialize_mask_axes(serialize_mask_axes(axes, "other-model"), uri="x", expect_id=axes.id,
                              expect_model_id=MODEL)


def test_levels_stay_exact_when_a_component_is_huge_next_to_its_step() -> None:
    """float32 sums levels exactly only below 2^24: a component spread too wide for its step
    gets a coarser one rather than wrong values."""
    from store.mask_axes import dequantize_components

    components = torch.linspace(-1.0, 1.0, 2 * 4 * 5).reshape(2, 4, 5)
    components[0, 2, 3] = 1e3
    parts = quantize_components(components, torch.tensor([1.0, 1e-12]), relative_step=1e-9)
    back = dequantize_components(*parts.values())
    spread = (components[0] - components[0].mean()).abs().max()
    assert float(parts[".step"][0]) >= float(spread) / 2**23  # coarsened to fit
    assert bool(((back - components).abs() <= parts[".step"].view(-1, 1, 1) / 2 * 1.001).all())


V4_OBJECT = FIXTURES / "v4-axes-shuffle+zstd.safetensors"
V4_AXES = FIXTURES / "v4-mask-axes.safetensors"


def test_object_written_by_format_4_still_loads() -> None:
    """An axes object written by format version 4's first code (from `make_features()` along
    `make_axes()`, with its axes object) reads back within half a step of each component."""
    data = V4_OBJECT.read_bytes()
    meta = header(data)["__metadata__"]
    axes = deserialize_mask_axes(V4_AXES.read_bytes(), uri=str(V4_AXES), expect_id=meta["store.mask_axes"],
                                 expect_model_id=MODEL)
    got = deserialize_features(data, uri=str(V4_OBJECT), expect_sha256=SHA, expect_model_id=MODEL,
                               mask_axes=lambda _: axes)
    exact = axes.components(make_features().tensors["mask_features"])
    step = component_steps(exact, axes.weights, 0.0045, 32.0)  # the first code's S and cap
    assert bool(((got.tensors["mask_features"] - exact).abs().flatten(1).amax(1) <= step / 2 * 1.001 + 1e-6).all())


def test_features_copied_into_another_store_bring_their_axes(tmp_path) -> None:
    first, second = FeatureStore(str(tmp_path / "a")), FeatureStore(str(tmp_path / "b"))
    axes = make_axes()
    first.put(make_features(), SHA, dtype="axes", mask_axes=axes)
    loaded = first.get(MODEL, SHA)
    second.put(loaded, SHA, dtype="axes")  # along the axes they came with: no calibration needed
    copied = FeatureStore(second.root_uri).get(MODEL, SHA)
    assert copied.mask_axes.id == axes.id
    # Quantised once more: within half a step of what was copied (the steps follow the values).
    step = component_steps(loaded.tensors["mask_features"], axes.weights, AXES_RELATIVE_STEP, AXES_STEP_CAP)
    err = (copied.tensors["mask_features"] - loaded.tensors["mask_features"]).abs().flatten(1).amax(1)
    assert bool((err <= step / 2 * 1.001 + 1e-6).all())
