"""FeatureStore: round trips per dtype/codec, immutability, verification, dedup."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from model.mask_axes import MaskAxes
from model.types import OBJECT_PASS_TENSORS, ImageFeatures
from store import CorruptObject, FeatureStore, ObjectNotFound, content_sha256, deserialize_features, feature_key
from store.feature_store import CODECS, as_stored, serialize_features
from store.formats import STORE_DTYPES

MODEL = "seem-test-0123abcd"


def make_features(seed: int = 0, model_id: str = MODEL) -> ImageFeatures:
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish content like real feature maps, small enough to keep tests fast.
    base = torch.randn(8, 6, 8, generator=g)
    mask_features = torch.nn.functional.interpolate(base[None], size=(24, 32), mode="bilinear")[0]
    return ImageFeatures(
        model_id=model_id,
        original_size=(45, 61),
        input_size=(24, 32),
        padded_size=(32, 32),
        tensors={
            "mask_features": mask_features,
            "ms0": torch.randn(8, 1, 1, generator=g),
            "ms1": torch.randn(8, 2, 2, generator=g),
            "ms2": torch.randn(8, 4, 4, generator=g) * 100,
        },
    )


SHA = content_sha256(b"image bytes")


def test_key_layout(fstore):
    key = fstore.put(make_features(), SHA)
    assert key == f"{MODEL}/features/{SHA[:2]}/{SHA}.safetensors" == feature_key(MODEL, SHA)
    assert fstore.uri(MODEL, SHA).endswith(f"/{MODEL}/features/{SHA[:2]}/{SHA}.safetensors")
    assert fstore.has(MODEL, SHA) and not fstore.has(MODEL, content_sha256(b"other"))
    assert not fstore.has("other-model", SHA)


@pytest.mark.parametrize(
    "dtype, tol", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)]
)
@pytest.mark.parametrize("compress", [False, "zlib", "shuffle+zstd"])
def test_round_trip(tmp_path, dtype, tol, compress):
    fstore = FeatureStore(str(tmp_path))
    features = make_features()
    fstore.put(features, SHA, dtype=dtype, compress=compress)
    got = fstore.get(MODEL, SHA)
    assert got.model_id == MODEL and got.stage == "pixel_decoder"
    assert got.original_size == (45, 61) and got.input_size == (24, 32) and got.padded_size == (32, 32)
    assert set(got.tensors) == set(features.tensors)
    for name, want in features.tensors.items():
        have = got.tensors[name]
        assert have.dtype == torch.float32 and have.shape == want.shape
        if tol == 0.0:
            assert torch.equal(have, want)
        else:  # relative error of the format's mantissa
            assert torch.allclose(have, want, rtol=tol, atol=tol * want.abs().max().item())
    native = fstore.get(MODEL, SHA, dtype=None)
    assert native.dtype == getattr(torch, dtype)


def test_s3_round_trip(fstore):
    features = make_features()
    fstore.put(features, SHA, dtype="float32", compress=True)
    got = fstore.get(MODEL, SHA)
    assert all(torch.equal(got.tensors[k], v) for k, v in features.tensors.items())


def test_immutable(fstore):
    first = fstore.put_info(make_features(seed=0), SHA)
    assert first.written and first.size > 0
    version = fstore.backend.stat(first.key).version
    # A second put (even with different content/dtype) must not rewrite the object.
    second = fstore.put_info(make_features(seed=1), SHA, dtype="float32")
    assert second == (first.key, first.size, False)
    assert fstore.backend.stat(first.key).version == version
    got = fstore.get(MODEL, SHA)
    assert torch.allclose(got.tensors["ms2"], make_features(seed=0).tensors["ms2"], rtol=1e-3, atol=0.2)


def test_same_bytes_two_uris_stored_once(tmp_path):
    fstore = FeatureStore(str(tmp_path / "store"))
    keys = []
    for path in (tmp_path / "a" / "cat.png", tmp_path / "b" / "copy-of-cat.png"):
        path.parent.mkdir()
        path.write_bytes(b"\x89PNG same bytes in two folders")
        keys.append(fstore.put(make_features(), content_sha256(path.read_bytes())))
    assert keys[0] == keys[1]  # filed by the bytes, not by the name
    assert len(list(fstore.backend.list(f"{MODEL}/features/"))) == 1


def test_missing(fstore):
    with pytest.raises(ObjectNotFound) as info:
        fstore.get(MODEL, SHA)
    assert SHA in str(info.value)


@pytest.mark.parametrize("compress", [False, "shuffle+zlib"])
def test_corrupt_objects_detected(fstore, compress):
    key = fstore.put(make_features(), SHA, compress=compress)
    good = fstore.backend.get(key)
    damaged = {
        "truncated": good[: len(good) - 7],
        "truncated-header": good[:20],
        "empty": b"",
        "garbage": b"not a safetensors file at all" * 10,
        "bit-flip-data": good[:-10] + bytes([good[-10] ^ 0x01]) + good[-9:],
        "trailing-bytes": good + b"\0\0\0",
    }
    # A flipped digit in the metadata (header) must be caught too.
    at = good.index(b'"original_size":"[45, 61]"')
    damaged["metadata-edit"] = good[:at] + b'"original_size":"[46, 61]"' + good[at + 26 :]
    for name, data in damaged.items():
        fstore.backend.put_atomic(key, data)
        with pytest.raises(CorruptObject) as info:
            fstore.get(MODEL, SHA)
        assert key in str(info.value) or fstore.uri(MODEL, SHA) in str(info.value), name
    fstore.backend.put_atomic(key, good)
    fstore.get(MODEL, SHA)


def test_object_filed_under_wrong_hash(tmp_path):
    fstore = FeatureStore(str(tmp_path))
    other = content_sha256(b"other image")
    data = serialize_features(make_features(), other)
    fstore.backend.put_atomic(feature_key(MODEL, SHA), data)
    with pytest.raises(CorruptObject, match="expected"):
        fstore.get(MODEL, SHA)


def test_plain_safetensors_reader_and_no_pickle(tmp_path):
    """The object is a standard safetensors file: any reader loads it, no code runs."""
    from safetensors.torch import load

    data = serialize_features(make_features(), SHA, dtype="float32")
    assert b"pickle" not in data and not data.startswith(b"\x80")  # not a pickle stream
    tensors = load(data)
    assert torch.equal(tensors["ms1"], make_features().tensors["ms1"])


def test_validation():
    with pytest.raises(ValueError):
        feature_key(MODEL, "ABC")
    with pytest.raises(ValueError):
        feature_key("bad/model", SHA)
    with pytest.raises(ValueError):
        serialize_features(make_features(), SHA, compress="lzma")
    with pytest.raises(ValueError):
        serialize_features(make_features(), SHA, dtype="int4")
    assert set(CODECS) >= {"none", "zlib"}


def test_deserialize_bytes_directly():
    data = serialize_features(make_features(), SHA, dtype="bfloat16", compress="zstd")
    got = deserialize_features(data, dtype=torch.float16)
    assert got.tensors["mask_features"].dtype == torch.float16


def test_store_pickles(fstore):
    fstore.put(make_features(), SHA)
    clone = pickle.loads(pickle.dumps(fstore))
    assert clone.has(MODEL, SHA)


# ---------------------------------------------------------------- format versions
V1_OBJECT = Path(__file__).resolve().parents[1] / "fixtures" / "store" / "v1-float16-shuffle+zstd.safetensors"


def test_object_written_by_format_1_still_loads() -> None:
    """An object the store wrote before format version 2 existed (float16, shuffle+zstd,
    made from `make_features()` by the code of commit dcd52c1) reads back unchanged."""
    data = V1_OBJECT.read_bytes()
    got = deserialize_features(data, uri=str(V1_OBJECT), expect_sha256=SHA, expect_model_id=MODEL)
    want = make_features()
    assert got.original_size == want.original_size and got.padded_size == want.padded_size
    for name, t in want.tensors.items():
        assert torch.equal(got.tensors[name], t.half().float()), name
    # Writing the same features as float16 still gives a version-1 object with the same
    # header and tensor bytes (safetensors orders the header's keys freely: compare parsed).
    again = serialize_features(want, SHA, dtype="float16", compress="shuffle+zstd")
    assert _header(again) == _header(data) and again[-2000:] == data[-2000:]


V2_OBJECT = V1_OBJECT.with_name("v2-int8-shuffle+zstd.safetensors")


def test_object_written_by_format_2_still_loads() -> None:
    """An int8 object written by format version 2's code (commit c7ff6b9, from
    `make_features()`) reads back as its levels times its per-channel scales, however the
    int8 writer changes later."""
    data = V2_OBJECT.read_bytes()
    assert _header(data)["__metadata__"]["store.format"] == "seem-ray-features/2"
    got = deserialize_features(data, uri=str(V2_OBJECT), expect_sha256=SHA, expect_model_id=MODEL)
    for name, t in make_features().tensors.items():
        peak = t.flatten(1).abs().amax(1)
        scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak)).view(-1, 1, 1)  # version 2's levels
        assert torch.equal(got.tensors[name], torch.round(t / scale).clamp(-127, 127) * scale), name


V3_OBJECT = V1_OBJECT.with_name("v3-int10-shuffle+zstd.safetensors")


def test_object_written_by_format_3_still_loads() -> None:
    """An int10 object written by format version 3's first code (from `make_features()`)
    reads back as each channel's lowest value + its levels times its step."""
    data = V3_OBJECT.read_bytes()
    assert _header(data)["__metadata__"]["store.format"] == "seem-ray-features/3"
    got = deserialize_features(data, uri=str(V3_OBJECT), expect_sha256=SHA, expect_model_id=MODEL)
    for name, t in make_features().tensors.items():
        flat = t.flatten(1)
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        step = torch.where(high > low, (high - low) / (2 ** (10 if name == "mask_features" else 8) - 1), 1.0)
        want = torch.round((flat - low) / step) * step + low
        assert torch.allclose(got.tensors[name].flatten(1), want, rtol=0, atol=1e-5 * float(t.abs().max())), name


def _header(data: bytes) -> dict:
    import json
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


@pytest.mark.parametrize("compress", [False, "shuffle+zstd"])
def test_int8_objects_are_format_2_and_round_trip(fstore, compress) -> None:
    features = make_features()
    features.tensors["ms0"] = torch.zeros(8, 1, 1)  # a channel of zeros must not divide by zero
    key = fstore.put_info(features, SHA, dtype="int8", compress=compress).key
    data = fstore.backend.get(key)
    assert _header(data)["__metadata__"]["store.format"] == "seem-ray-features/2"
    assert len(data) < len(serialize_features(features, SHA, dtype="float16", compress=compress))
    got = fstore.get(MODEL, SHA)
    for name, t in features.tensors.items():
        step = t.flatten(1).abs().amax(1).clamp(min=1e-12) / 127  # one quantisation step per channel
        err = (got.tensors[name] - t).abs().flatten(1).amax(1)
        assert bool((err <= step / 2 + 1e-6).all()), name
        assert got.tensors[name].dtype == torch.float32
    assert fstore.get(MODEL, SHA, dtype=None).tensors["mask_features"].dtype == torch.float16


def test_int8_object_damage_is_detected(tmp_path) -> None:
    data = bytearray(serialize_features(make_features(), SHA, dtype="int8", compress="shuffle+zstd"))
    data[-5] ^= 0x40
    with pytest.raises(CorruptObject, match="checksum"):
        deserialize_features(bytes(data))


@pytest.mark.parametrize("dtype", STORE_DTYPES)
def test_as_stored_is_what_a_reader_of_the_object_gets(tmp_path, dtype) -> None:
    """A server hands fresh features to its decoders as `as_stored` makes them: equal to a
    later cache miss's load, so masks do not depend on where the features came from."""
    fs = FeatureStore(str(tmp_path / "store"))
    features = make_features()
    axes = _with_pass_and_axes(features, dtype)  # ("axes": format 4, tests/store/test_axes_format.py)
    fs.put(features, SHA, dtype=dtype, compress="shuffle+zstd", mask_axes=axes)
    got, fresh = fs.get(MODEL, SHA, dtype=None), as_stored(features, dtype, axes)
    assert set(got.tensors) == set(features.tensors) and got.has_object_pass
    for name, t in got.tensors.items():
        assert t.dtype == fresh.tensors[name].dtype and torch.equal(t, fresh.tensors[name]), name
    in_frame = features.in_frame(axes)
    for name in OBJECT_PASS_TENSORS:  # never quantised: float16 in quantised objects, else their dtype
        quantised = dtype in ("int8", "int10", "axes")
        want = in_frame.tensors[name].to(torch.float16 if quantised else getattr(torch, dtype))
        assert torch.equal(got.tensors[name], want), name
    with pytest.raises(ValueError, match="choose one of float16, bfloat16, float32, int8"):
        as_stored(features, "int4")


def _with_pass_and_axes(features: ImageFeatures, dtype: str, seed: int = 1) -> MaskAxes | None:
    """Adds the object queries' pass to `features` (as encode() makes them); the mask axes an
    "axes" object is written along (None for other dtypes)."""
    g = torch.Generator().manual_seed(seed)
    features.tensors.update({name: torch.randn(5, 8, generator=g) for name in OBJECT_PASS_TENSORS})
    if dtype != "axes":
        return None
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    return MaskAxes(q.to(torch.float32).contiguous(), torch.logspace(0, -3, 8))


@pytest.mark.parametrize("dtype", STORE_DTYPES)
def test_put_and_read_gives_what_a_later_reader_gets(tmp_path, dtype) -> None:
    """What serving's encoder hands its decoders: the features a cache miss loads later (a
    new FeatureStore on the same root, as another process has), bit for bit; and, when the
    image was stored already, the stored features rather than the new ones."""
    fs = FeatureStore(str(tmp_path / "store"))
    features = make_features()
    axes = _with_pass_and_axes(features, dtype)
    result, fresh = fs.put_and_read(features, SHA, dtype=dtype, compress="shuffle+zstd", mask_axes=axes)
    assert result.written and result.size == fs.backend.stat(result.key).size
    got = FeatureStore(str(tmp_path / "store")).get(MODEL, SHA, dtype=None)
    assert set(fresh.tensors) == set(got.tensors)
    assert getattr(fresh.mask_axes, "id", None) == getattr(got.mask_axes, "id", None) == getattr(axes, "id", None)
    for name, t in got.tensors.items():
        assert t.dtype == fresh.tensors[name].dtype and torch.equal(t, fresh.tensors[name]), name
    other = make_features(seed=5)
    again, stored = fs.put_and_read(other, SHA, dtype=dtype, compress="shuffle+zstd", mask_axes=axes)
    assert not again.written and torch.equal(stored.tensors["mask_features"], got.tensors["mask_features"])
    with pytest.raises(ValueError, match="choose one of float16"):
        fs.put_and_read(features, content_sha256(b"other"), dtype="int4")


@pytest.mark.parametrize("compress", [False, "shuffle+zstd"])
def test_int10_objects_are_format_3_and_round_trip(tmp_path, compress) -> None:
    """`int10`: mask_features within half a 10-bit step of each channel's range, the other
    maps within half an 8-bit one; residuals too wide for int8 survive as escapes."""
    fs = FeatureStore(str(tmp_path / "store"))
    features = make_features()
    features.tensors["ms0"] = torch.zeros(8, 1, 1)  # a constant channel must not divide by zero
    data = fs.backend.get(fs.put_info(features, SHA, dtype="int10", compress=compress).key)
    header = _header(data)
    assert header["__metadata__"]["store.format"] == "seem-ray-features/3"
    assert json.loads(header["__metadata__"]["store.tensors"])["ms2.escapes"]["shape"][0] > 0  # some escaped
    assert len(data) < len(serialize_features(features, SHA, dtype="float16", compress=compress))
    got = fs.get(MODEL, SHA)
    for name, t in features.tensors.items():
        flat = t.flatten(1)
        step = (flat.amax(1) - flat.amin(1)) / (2 ** (10 if name == "mask_features" else 8) - 1)
        err = (got.tensors[name] - t).abs().flatten(1).amax(1)
        assert bool((err <= step / 2 + 1e-5).all()), name
