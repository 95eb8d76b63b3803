"""Content-addressed store of encoded image features (docs/architecture.md, "The feature store format").

Layout under the store root (a local directory or `s3://bucket/prefix`)::

    {model_id}/features/{sha256[:2]}/{sha256}.safetensors   one object per (model, image)
    {model_id}/mask_axes/{axes_id}.safetensors             the model's mask axes (format 4; store.mask_axes)
    {model_id}/manifest/part-….parquet                      see store.manifest

`sha256` is the hash of the *image bytes*, so the same bytes under two URIs are encoded
and stored once, and an object never changes once written (put() never rewrites it).

Object format: a plain safetensors file (readable by any safetensors reader; loading it
never executes code, unlike pickle). Its string metadata holds `ImageFeatures.metadata()`
plus `store.*` keys:

- `store.format`      "seem-ray-features/1" (float tensors), "seem-ray-features/2"
                      (version 1 + int8 tensors), "seem-ray-features/3" (version 1 +
                      level tensors) or "seem-ray-features/4" (version 3 with
                      `mask_features` along the model's mask axes); readers take all four,
                      so older objects keep loading
- `store.image_sha256` the image hash the object is filed under (checked on read)
- `store.codec`       "none", "zlib", "zstd", "shuffle+zlib" or "shuffle+zstd"
- `store.tensors`     JSON {name: {"dtype", "shape"}} of the *logical* tensors
- `store.checksum`    "sha256:<hex>" over the other metadata and every stored tensor's bytes
- `store.quant`       (version 2 only) JSON {name: "int8-per-channel"}: tensor `name` is
                      stored as int8 (C x ...) with a float32 scale per channel in tensor
                      `name.scale` (both listed in `store.tensors`); value = int8 * scale.
                      (version 3) {name: "levels<B>-per-channel-up"}: B-bit levels between
                      each channel's min and max, as differences with the one above in
                      tensor `name` (int8, -128 = escape), the escaped differences in
                      `name.escapes` (int16, in order), float32 `name.offset` and `name.step`
                      per channel; value = level * step + offset (`quantize_levels`).
                      (version 4) {"mask_features": "axes-levels"} and the other maps as in
                      version 3: `mask_features` holds components along the store's mask
                      axes, coded as store.mask_axes describes (int32 `name.escapes`).
- `store.mask_axes`   (version 4 only) the id of the mask axes the object is written along:
                      the object `{model_id}/mask_axes/{id}.safetensors` of the same store
                      (store.mask_axes); readers attach them as `ImageFeatures.mask_axes`

Tensors: the maps of `ImageFeatures` and, when the features carry it, the object queries'
pass (`object_class_emb`, `object_mask_emb`: Q x D each, `model.types.OBJECT_PASS_TENSORS`),
in the object's float dtype, or float16 in quantised objects (never quantised); objects
without it (all written before it existed) load as before and the predictor computes it.

Quantisation (`dtype="int8"`): every floating C x H x W map is rounded to 255 levels per
channel, symmetric around 0 (scale = the channel's max |value| / 127). Bytes per value
drop from 2 (float16) to 1 before compression; bench/store_formats.py measures what that
does to masks (docs/benchmarks.md, "Feature store format").

`dtype="int10"` (version 3) gives `mask_features` 10-bit levels and the other maps 8: the
finer step the click-IoU bound needs where every mask is read (bench/store_quant.py).

`dtype="axes"` (version 4) keeps `mask_features` along the model's mask axes
(model.mask_axes, store.mask_axes), with steps by how much the mask embeddings use each axis,
and the other maps as int10 does: for Focal-T at 512 x 512, 7.78 MB (0.73x int10's) at about
int10's click-IoU drift, and a load that stops at the components (the predictor reads them
as they are; docs/benchmarks.md, "Format version 4").

Uncompressed, each feature map is stored as itself (dtype float16/bfloat16/float32).
Compressed, each one is stored as a 1-D uint8 tensor holding the codec's output for the
tensor's raw bytes; "shuffle" first groups the bytes by significance (all first bytes,
then all second bytes, …), which is what lets general-purpose codecs find redundancy in
floating-point data. zlib is the standard library's; zstd is the codec bundled in pyarrow
(a hard dependency), so neither adds a package.

Reads verify the safetensors header (offsets, sizes, no trailing bytes) and the checksum
before decompressing anything, and raise `CorruptObject` naming the object otherwise.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import struct
import zlib
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import torch

from model.mask_axes import MaskAxes
from model.types import OBJECT_PASS_TENSORS, ImageFeatures
from storage import CorruptObject, ObjectStore, open_store
from storage import NotFound as ObjectNotFound
from store.backends import check_model_id
from store.formats import FLOAT_STORE_DTYPES, STORE_CODECS, STORE_DTYPES, check_store_dtype
from store.manifest import Manifest
from store.mask_axes import (dequantize_components, deserialize_mask_axes, mask_axes_key, quantize_components,
                             serialize_mask_axes)

__all__ = [
    "FeatureStore",
    "as_stored",
    "PutResult",
    "serialize_features",
    "deserialize_features",
    "content_sha256",
    "feature_key",
    "CODECS",
    "OBJECT_FORMAT",
    "STORE_DTYPES",
]

FORMAT_V1 = "seem-ray-features/1"
FORMAT_V2 = "seem-ray-features/2"
FORMAT_V3 = "seem-ray-features/3"
FORMAT_V4 = "seem-ray-features/4"
#: The newest; float objects are still written as version 1, int8 as 2, int10 as 3.
OBJECT_FORMAT = FORMAT_V4
_FORMATS = (FORMAT_V1, FORMAT_V2, FORMAT_V3, FORMAT_V4)
QUANT_AXES = "axes-levels"
QUANT_INT8 = "int8-per-channel"
#: Version 3's scheme: B-bit levels per channel between the channel's min and max, stored as
#: differences with the neighbour above (an int8 stream, -128 = escape, + the escaped ones).
QUANT_LEVELS = re.compile(r"^levels(\d+)-per-channel-up$")
#: Bits of levels per tensor in an "int10" object: `mask_features` is what every mask is a
#: dot product with, so it gets the 10 bits the IoU bounds need; the other maps only feed
#: the decoder's attention and stay at 8 (docs/benchmarks.md, "Format version 3").
INT10_BITS = {"mask_features": 10}
_INT10_OTHER_BITS = 8
CODECS = STORE_CODECS
#: The object queries' pass (`OBJECT_PASS_TENSORS`, ~0.4 MB float32 for Focal-T) is never
#: quantised: in int8 / int10 objects it is float16 (docs/benchmarks.md, "Third round: the
#: object-query pass at encode"); float objects store it in their own dtype, like the maps.
OBJECT_PASS_DTYPE = torch.float16


@functools.lru_cache(maxsize=1)
def _zstd_available() -> bool:
    try:
        import pyarrow as pa

        return bool(pa.Codec.is_available("zstd"))
    except Exception:
        return False


#: What `compress=True` means. Provisional: on synthetic features (bench/store_formats.py)
#: shuffle+zstd gave the fewest bytes and was the fastest codec both ways; confirm with
#: real features and record in docs/benchmarks.md.
DEFAULT_CODEC = "shuffle+zstd" if _zstd_available() else "shuffle+zlib"

StoreDType = Literal["float16", "bfloat16", "float32", "int8", "int10", "axes"]
_QUANTIZED = ("int8", "int10", "axes")
_STORE_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in FLOAT_STORE_DTYPES}
# safetensors header dtype names <-> torch dtypes (only what the store writes/reads).
_ST_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}
_TORCH_NAMES: dict[torch.dtype, str] = {dt: str(dt).replace("torch.", "") for dt in _ST_DTYPES.values()}
_NAME_TO_TORCH: dict[str, torch.dtype] = {v: k for k, v in _TORCH_NAMES.items()}

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_HEADER = 100 << 20  # safetensors' own limit; a larger length field means garbage


def content_sha256(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of image bytes: the content address used by the store and the API."""
    return hashlib.sha256(data).hexdigest()


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ValueError(f"invalid image sha256 {sha256!r}: expected 64 lowercase hex digits")
    return sha256


def feature_key(model_id: str, sha256: str) -> str:
    """The object key (relative to the store root) of one image's features."""
    check_model_id(model_id)
    _check_sha256(sha256)
    return f"{model_id}/features/{sha256[:2]}/{sha256}.safetensors"


# --------------------------------------------------------------------------- codecs
def _raw_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a uint8 array (no copy for contiguous CPU tensors)."""
    flat = t.contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return flat.view(torch.uint8).numpy()


def _resolve_codec(compress: bool | str) -> str:
    if compress is False or compress is None:
        return "none"
    if compress is True:
        return DEFAULT_CODEC
    if compress not in CODECS:
        raise ValueError(f"unknown compression {compress!r}; choose one of {CODECS} or True/False")
    if str(compress).endswith("zstd") and not _zstd_available():
        raise ValueError("zstd compression needs a pyarrow built with zstd; use 'shuffle+zlib'")
    return str(compress)


def _encode_blob(raw: np.ndarray, itemsize: int, codec: str, level: int | None) -> bytes:
    shuffle, _, name = codec.rpartition("+")
    if shuffle and itemsize > 1:
        raw = np.ascontiguousarray(raw.reshape(-1, itemsize).T)  # byte planes: all 1st bytes, all 2nd, ...
    if name == "zlib":
        return zlib.compress(raw, 1 if level is None else level)
    if name == "zstd":
        import pyarrow as pa

        codec_obj = pa.Codec("zstd", compression_level=3 if level is None else level)
        return codec_obj.compress(pa.py_buffer(raw), asbytes=True)
    raise AssertionError(codec)


def _decode_blob(blob: memoryview | bytes, nbytes: int, itemsize: int, codec: str) -> np.ndarray:
    shuffle, _, name = codec.rpartition("+")
    if name == "zlib":
        raw = zlib.decompress(blob, bufsize=max(nbytes, 1))
    elif name == "zstd":
        import pyarrow as pa

        raw = pa.Codec("zstd").decompress(blob, decompressed_size=nbytes, asbytes=True)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if len(raw) != nbytes:
        raise ValueError(f"decompressed {len(raw)} bytes, expected {nbytes}")
    arr = np.frombuffer(raw, dtype=np.uint8)
    if shuffle and itemsize > 1:
        return arr.reshape(itemsize, -1).T.reshape(-1)  # back to element order (a writable copy)
    return arr.copy()  # frombuffer(bytes) is read-only; torch wants writable memory


def _delta_rows(raw: np.ndarray, width: int) -> np.ndarray:
    """1-byte values -> each one minus its left neighbour (mod 256), per row of `width`:
    neighbouring feature values are alike, so the differences compress better (7% on
    int8 Focal-T features, docs/benchmarks.md)."""
    if raw.size == 0:
        return raw
    rows = raw.reshape(-1, width)
    out = rows.copy()
    out[:, 1:] -= rows[:, :-1]  # uint8 arithmetic wraps mod 256
    return out.reshape(-1)


def _undelta_rows(raw: np.ndarray, width: int) -> np.ndarray:
    """Inverse of `_delta_rows` (a running sum mod 256 per row)."""
    if raw.size == 0:
        return raw
    return np.cumsum(raw.reshape(-1, width), axis=1, dtype=np.uint8).reshape(-1)


# --------------------------------------------------------------------------- checksum
def _checksum(metadata: dict[str, str], chunks: list[tuple[str, Any]]) -> str:
    """sha256 over the metadata (minus the checksum itself) and every stored tensor.

    Covering the metadata too means a flipped digit in e.g. `original_size` is caught,
    not only damage to the tensor bytes.
    """
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != "store.checksum"}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name, data in sorted(chunks, key=lambda c: c[0]):
        view = memoryview(data).cast("B")
        h.update(b"\0" + name.encode() + b"\0" + struct.pack("<Q", len(view)))
        h.update(view)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- quantisation
def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C x ... float -> (int8 values, float32 scale per channel), symmetric per channel.

    A channel of zeros gets scale 1 (its values quantise to 0 either way)."""
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"cannot quantise a tensor of shape {tuple(t.shape)} per channel")
    flat = t.to(torch.float32).reshape(t.shape[0], -1)
    peak = flat.abs().amax(1) if flat.shape[1] else torch.zeros(t.shape[0])
    if not bool(torch.isfinite(peak).all()):
        raise ValueError("cannot quantise features with inf or nan values")
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape).contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_int8` (up to the rounding): float32, the shape of `q`."""
    if q.dtype != torch.int8 or scale.dtype != torch.float32 or tuple(scale.shape) != tuple(q.shape[:1]):
        raise ValueError(f"int8 tensor {tuple(q.shape)} {q.dtype} with scale {tuple(scale.shape)} {scale.dtype}")
    return q.to(torch.float32) * scale.view(-1, *([1] * (q.dim() - 1)))


def _as_rows(t: torch.Tensor | np.ndarray) -> tuple[int, int, int]:
    """C x H x ... -> the (C, H, rest) view level differences run over (along H: then
    decoding adds whole rows, which is 2-3x faster than a running sum along W)."""
    shape = tuple(t.shape)
    rows = shape[1] if len(shape) > 1 else 1
    return shape[0], rows, int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1


def quantize_levels(t: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """C x ... float -> version 3's tensors: `""` the int8 residual stream (C x ...), `.escapes`
    (int16, the residuals outside -127..127, in order), `.offset` and `.step` (float32 per
    channel; value = level * step + offset). Level = round((value - min) / step), step =
    (max - min) / (2^bits - 1); residual = level - the level above it (the previous index of
    dimension 1)."""
    if not 2 <= bits <= 14 or t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"cannot quantise a tensor of shape {tuple(t.shape)} to {bits}-bit levels")
    flat = t.to(torch.float32).reshape(t.shape[0], -1)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("cannot quantise features with inf or nan values")
    low = flat.amin(1) if flat.shape[1] else torch.zeros(t.shape[0])
    high = flat.amax(1) if flat.shape[1] else torch.zeros(t.shape[0])
    step = torch.where(high > low, (high - low) / (2**bits - 1), torch.ones_like(low))
    levels = torch.round((flat - low[:, None]) / step[:, None]).to(torch.int32).reshape(_as_rows(t))
    residual = torch.cat([levels[:, :1], levels[:, 1:] - levels[:, :-1]], 1).reshape(-1)
    escaped = (residual < -127) | (residual > 127)
    stream = torch.where(escaped, torch.full_like(residual, -128), residual).to(torch.int8)
    return {"": stream.reshape(t.shape), ".escapes": residual[escaped].to(torch.int16).contiguous(),
            ".offset": low.contiguous(), ".step": step.contiguous()}


def dequantize_levels(stream: torch.Tensor, escapes: torch.Tensor, offset: torch.Tensor,
                      step: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_levels` (up to the rounding): float32, the shape of `stream`."""
    if stream.dtype != torch.int8 or escapes.dtype != torch.int16 or tuple(offset.shape) != tuple(stream.shape[:1]):
        raise ValueError(f"level stream {tuple(stream.shape)} {stream.dtype} with escapes {escapes.dtype}")
    raw = stream.reshape(-1).numpy()
    levels = raw.astype(np.float32)  # float32 holds every level (< 2^14) and partial sum exactly
    where = np.flatnonzero(raw == -128) if escapes.numel() else np.empty(0, dtype=np.int64)
    if where.size != escapes.numel():
        raise ValueError(f"{where.size} escapes in the stream, {escapes.numel()} escaped values")
    levels[where] = escapes.numpy()
    rows = levels.reshape(_as_rows(stream))
    for i in range(1, rows.shape[1]):  # the running sum over rows, one vectorised add per row
        rows[:, i] += rows[:, i - 1]
    view = (-1, *([1] * (stream.dim() - 1)))
    return torch.from_numpy(levels).reshape(stream.shape).mul_(step.view(view)).add_(offset.view(view))


def _int10_bits(name: str) -> int:
    return INT10_BITS.get(name, _INT10_OTHER_BITS)


def _in_store_frame(features: ImageFeatures, dtype: StoreDType | torch.dtype,
                    mask_axes: MaskAxes | None) -> ImageFeatures:
    """`features` with their mask features in the frame an object of `dtype` holds them in:
    along the mask axes for "axes" (`mask_axes`, else the ones they are already along),
    channels for every other dtype."""
    if dtype != "axes":
        return features.in_frame(None)
    axes = mask_axes if mask_axes is not None else features.mask_axes
    if axes is None:
        raise ValueError("the 'axes' store dtype needs the model's mask axes (FeatureStore.put takes "
                         "mask_axes=predictor.mask_axes)")
    return features.in_frame(axes)


def as_stored(features: ImageFeatures, dtype: StoreDType, mask_axes: MaskAxes | None = None) -> ImageFeatures:
    """`features` as `FeatureStore.get(..., dtype=None)` returns them from an object written
    with `dtype` (along `mask_axes` for "axes"), without a store: the float dtype itself, or
    float16 after the quantisation round trip (float32 for components along mask axes, whose
    finest steps are below float16's rounding). Benchmarks decode what a cache miss loads
    with it; a server that stores features takes them from `FeatureStore.put_and_read`."""
    check_store_dtype(dtype)
    features = _in_store_frame(features, dtype, mask_axes)
    logical, quant = _logical_tensors(features, dtype)
    meta = {**features.metadata(), "store.format": _format_version(dtype, quant), "store.quant": json.dumps(quant)}
    return _features_of(logical, meta, None, features.mask_axes)


# --------------------------------------------------------------------------- (de)serialise
def _logical_tensors(features: ImageFeatures, dtype: StoreDType | torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors an object of `dtype` holds (before compression), and {name: scheme} of
    the quantised ones."""
    quantize = isinstance(dtype, str) and dtype in _QUANTIZED
    store_dtype = torch.float32 if quantize else _STORE_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if store_dtype not in _STORE_DTYPES.values():
        raise ValueError(f"unsupported store dtype {dtype!r}; choose one of {STORE_DTYPES}")
    logical: dict[str, torch.Tensor] = {}
    quant: dict[str, str] = {}
    for name, t in features.tensors.items():
        t = t.detach().to("cpu")
        if quantize and name in OBJECT_PASS_TENSORS:
            logical[name] = t.to(OBJECT_PASS_DTYPE).contiguous()
        elif t.is_floating_point() and dtype == "int8":
            logical[name], logical[f"{name}.scale"] = quantize_int8(t)
            quant[name] = QUANT_INT8
        elif name == "mask_features" and dtype == "axes":
            logical.update({name + suffix: part for suffix, part in
                            quantize_components(t, features.mask_axes.weights).items()})
            quant[name] = QUANT_AXES
        elif t.is_floating_point() and quantize:
            bits = _int10_bits(name) if dtype == "int10" else _INT10_OTHER_BITS
            logical.update({name + suffix: part for suffix, part in quantize_levels(t, bits).items()})
            quant[name] = f"levels{bits}-per-channel-up"
        else:
            logical[name] = (t.to(store_dtype) if t.is_floating_point() else t).contiguous()
    return logical, quant


def serialize_features(
    features: ImageFeatures,
    image_sha256: str,
    *,
    dtype: StoreDType | torch.dtype = "float16",
    compress: bool | str = False,
    level: int | None = None,
    mask_axes: MaskAxes | None = None,
) -> bytes:
    """The store object for `features`: safetensors bytes (see the module docstring).

    Floating tensors are cast to `dtype` ("int8": quantised per channel, format version
    2; "int10": version 3; "axes": version 4, along `mask_axes`, or the axes the features are
    already along); other tensors keep theirs. `compress` is False, True (the default codec)
    or a codec name from `CODECS`; `level` is the codec's compression level (zlib 1, zstd 3
    when None).
    """
    return _encode_object(features, image_sha256, dtype, compress, level, mask_axes)[0]


def _encode_object(features: ImageFeatures, image_sha256: str, dtype: StoreDType | torch.dtype,
                   compress: bool | str, level: int | None,
                   mask_axes: MaskAxes | None) -> tuple[bytes, dict[str, torch.Tensor], dict[str, str]]:
    """`serialize_features`, also returning what a reader decodes from the bytes: the
    object's tensors before compression and its metadata (`_features_of` reads them)."""
    from safetensors.torch import save

    _check_sha256(image_sha256)
    check_model_id(features.model_id)
    codec = _resolve_codec(compress)
    if not features.tensors:
        raise ValueError("ImageFeatures has no tensors")
    features = _in_store_frame(features, dtype, mask_axes)
    logical, quant = _logical_tensors(features, dtype)
    version = _format_version(dtype, quant)
    delta = sorted(quant) if version == FORMAT_V2 and codec != "none" else []
    metadata = _object_metadata(features, image_sha256, version, codec, logical, quant, delta)
    if quant:  # quantised objects name their scheme, float ones the first tensor's stored dtype
        metadata["dtype"] = str(dtype)
    stored, chunks = _stored_tensors(logical, codec, level, delta)
    metadata["store.checksum"] = _checksum(metadata, chunks)
    return save(stored, metadata=metadata), logical, metadata


def _format_version(dtype: StoreDType | torch.dtype, quant: dict[str, str]) -> str:
    """The format version of an object of `dtype` whose quantised tensors are `quant`."""
    if not quant:
        return FORMAT_V1
    return {"int8": FORMAT_V2, "int10": FORMAT_V3}.get(str(dtype), FORMAT_V4)


def _object_metadata(features: ImageFeatures, image_sha256: str, version: str, codec: str,
                     logical: dict[str, torch.Tensor], quant: dict[str, str], delta: list[str]) -> dict[str, str]:
    """An object's metadata, the checksum aside (see the module docstring)."""
    metadata = dict(features.metadata())
    first = next(iter(logical.values()))  # the first feature's stored dtype, as version 1 wrote it
    metadata["dtype"] = str(first.dtype).replace("torch.", "")
    metadata.update({
        "store.format": version,
        "store.image_sha256": image_sha256,
        "store.codec": codec,
        "store.tensors": json.dumps(
            {n: {"dtype": _TORCH_NAMES[t.dtype], "shape": list(t.shape)} for n, t in logical.items()}, sort_keys=True),
    })
    if quant:
        metadata["store.quant"] = json.dumps(quant, sort_keys=True)
        metadata["store.delta"] = json.dumps(delta)
    if version == FORMAT_V4:
        metadata["store.mask_axes"] = features.mask_axes.id
    return metadata


def _stored_tensors(logical: dict[str, torch.Tensor], codec: str, level: int | None,
                    delta: list[str]) -> tuple[dict[str, torch.Tensor], list[tuple[str, Any]]]:
    """The tensors as the object stores them (raw, or each one's compressed bytes as uint8)
    and the bytes the checksum covers, by name."""
    stored: dict[str, torch.Tensor] = {}
    chunks: list[tuple[str, Any]] = []
    for name, t in logical.items():
        if codec == "none":
            stored[name] = t
            chunks.append((name, _raw_bytes(t)))
        else:
            raw = _delta_rows(_raw_bytes(t), t.shape[-1]) if name in delta else _raw_bytes(t)
            blob = _encode_blob(raw, t.element_size(), codec, level)
            stored[name] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
            chunks.append((name, blob))
    return stored, chunks


class _Header(NamedTuple):
    metadata: dict[str, str]
    entries: dict[str, dict[str, Any]]
    data_start: int


def _parse_header(data: bytes, uri: str) -> _Header:
    """Validate the safetensors framing ourselves so a damaged object gets a clear error."""
    if len(data) < 8:
        raise CorruptObject(uri, f"only {len(data)} bytes (truncated)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > _MAX_HEADER or 8 + header_len > len(data):
        raise CorruptObject(uri, f"header length {header_len} does not fit in {len(data)} bytes (truncated or not safetensors)")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptObject(uri, f"unreadable safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CorruptObject(uri, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptObject(uri, "safetensors metadata is not a str -> str map")
    data_len = len(data) - 8 - header_len
    end_max = 0
    for name, entry in header.items():
        try:
            dt = _ST_DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptObject(uri, f"bad header entry for tensor {name!r}") from None
        numel = 1
        for s in shape:
            if s < 0:
                raise CorruptObject(uri, f"negative dimension in tensor {name!r}")
            numel *= s
        itemsize = torch.empty(0, dtype=dt).element_size()
        if not 0 <= begin <= end or end - begin != numel * itemsize:
            raise CorruptObject(uri, f"tensor {name!r}: offsets {begin}..{end} do not match shape {shape}")
        if end > data_len:
            raise CorruptObject(uri, f"tensor {name!r} ends at byte {end} of a {data_len}-byte data section (truncated)")
        end_max = max(end_max, end)
    if end_max != data_len:
        raise CorruptObject(uri, f"data section has {data_len} bytes, tensors cover {end_max} (trailing garbage)")
    return _Header(metadata, header, 8 + header_len)


def deserialize_features(
    data: bytes,
    *,
    uri: str = "<bytes>",
    dtype: torch.dtype | None = torch.float32,
    expect_sha256: str | None = None,
    expect_model_id: str | None = None,
    mask_axes: "Callable[[str], MaskAxes] | None" = None,
) -> ImageFeatures:
    """Verify and decode a store object (format version 1 to 4). Floating tensors are cast
    to `dtype` (None keeps the stored dtype; quantised ones then come back as float16,
    whose rounding is far below the quantiser's step, except components along mask axes:
    float32). Version 4 objects come back along their mask axes, which `mask_axes` gives by
    id (`FeatureStore.get` reads them from the store). Raises `CorruptObject` (naming `uri`)
    when verification fails."""
    header = _parse_header(data, uri)
    meta = header.metadata
    _verify_object(data, header, uri, expect_sha256, expect_model_id)
    axes = _object_axes(meta, uri, mask_axes)
    try:
        return _features_of(_decoded_tensors(data, header), meta, dtype, axes)
    except CorruptObject:
        raise
    except Exception as e:  # checksum passed, so this is a foreign/inconsistent object
        raise CorruptObject(uri, f"cannot decode: {type(e).__name__}: {e}") from e


def _features_of(logical: dict[str, torch.Tensor], meta: dict[str, str], dtype: torch.dtype | None,
                 axes: MaskAxes | None) -> ImageFeatures:
    """The features of an object whose tensors before compression are `logical` (see
    `deserialize_features` for `dtype`; `axes`: those of a version 4 object)."""
    tensors, quantized = _dequantized(logical, meta)
    for name, t in tensors.items():
        want = torch.float16 if dtype is None and name in quantized else dtype
        if axes is not None and name == "mask_features" and want in (torch.float16, torch.bfloat16):
            want = None  # components stay float32: their finest steps are below a 16-bit float's rounding
        if want is not None and t.is_floating_point() and t.dtype != want:
            tensors[name] = t.to(want)
    features = ImageFeatures.from_parts(tensors, meta)
    if axes is not None and axes.channels != features.tensors["mask_features"].shape[0]:
        raise ValueError(f"{axes.channels} mask axes for {features.tensors['mask_features'].shape[0]} channels")
    return dataclasses.replace(features, mask_axes=axes)


def _object_axes(meta: dict[str, str], uri: str, mask_axes: "Callable[[str], MaskAxes] | None") -> MaskAxes | None:
    """The mask axes a version 4 object is written along (None for older versions)."""
    if meta["store.format"] != FORMAT_V4:
        return None
    axes_id = meta.get("store.mask_axes", "")
    if mask_axes is None:
        raise ValueError(f"{uri} is along the mask axes {axes_id} of its store; read it with FeatureStore.get, "
                         "or pass mask_axes= to deserialize_features")
    try:
        return mask_axes(axes_id)
    except ObjectNotFound:
        raise CorruptObject(uri, f"its mask axes {axes_id} are missing from the store") from None


def _verify_object(data: bytes, header: _Header, uri: str, expect_sha256: str | None,
                   expect_model_id: str | None) -> None:
    """A known format, an intact checksum, and (when given) the expected image and model."""
    meta = header.metadata
    if meta.get("store.format") not in _FORMATS:
        raise CorruptObject(uri, f"not a seem-ray feature object (format {meta.get('store.format')!r})")
    view = memoryview(data)
    chunks = []
    for name, entry in header.entries.items():
        begin, end = entry["data_offsets"]
        chunks.append((name, view[header.data_start + begin : header.data_start + end]))
    if _checksum(meta, chunks) != meta.get("store.checksum"):
        raise CorruptObject(uri, "checksum mismatch (object damaged)")
    if expect_sha256 is not None and meta.get("store.image_sha256") != expect_sha256:
        raise CorruptObject(uri, f"object holds image {meta.get('store.image_sha256')!r}, expected {expect_sha256!r}")
    if expect_model_id is not None and meta.get("model_id") != expect_model_id:
        raise CorruptObject(uri, f"object holds model {meta.get('model_id')!r}, expected {expect_model_id!r}")


def _decoded_tensors(data: bytes, header: _Header) -> dict[str, torch.Tensor]:
    """The object's tensors as the metadata's `store.tensors` lists them: stored ones as they
    are, coded ones decompressed (and, in version 2, their row deltas undone). Raises
    ValueError where the metadata and the stored tensors disagree."""
    from safetensors.torch import load

    meta = header.metadata
    codec = meta.get("store.codec", "none")
    delta = set(json.loads(meta.get("store.delta", "[]"))) if meta["store.format"] == FORMAT_V2 else set()
    logical = json.loads(meta["store.tensors"])
    if set(logical) != set(header.entries):
        raise ValueError("tensor list does not match the header")
    stored = load(bytes(data) if not isinstance(data, bytes) else data)
    tensors: dict[str, torch.Tensor] = {}
    for name, spec in logical.items():
        want = _NAME_TO_TORCH[spec["dtype"]]
        shape = tuple(int(s) for s in spec["shape"])
        t = stored[name]
        if codec == "none":
            if t.dtype != want or tuple(t.shape) != shape:
                raise ValueError(f"tensor {name!r} is {t.dtype}{tuple(t.shape)}, metadata says {want}{shape}")
        else:
            itemsize = torch.empty(0, dtype=want).element_size()
            nbytes = itemsize * int(np.prod(shape, dtype=np.int64))
            raw = _decode_blob(t.numpy().data, nbytes, itemsize, codec)
            if name in delta:
                raw = _undelta_rows(raw, shape[-1])
            # (an empty array's stride is 0, which view() refuses: e.g. no escapes)
            t = torch.from_numpy(raw).view(want).reshape(shape) if nbytes else torch.empty(shape, dtype=want)
        tensors[name] = t
    return tensors


def _dequantized(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Logical tensors of an object -> (feature tensors, the names quantised to levels that
    float16 holds); version 2 turns int8 + scale into float32, versions 3 and 4 levels +
    offset + step, version 4 `mask_features` components too."""
    if meta.get("store.format") == FORMAT_V1:
        return tensors, set()
    quant = json.loads(meta.get("store.quant", "{}"))
    out = dict(tensors)
    for name, scheme in quant.items():
        if scheme == QUANT_INT8:
            out[name] = dequantize_int8(tensors[name], out.pop(f"{name}.scale"))
        elif QUANT_LEVELS.match(scheme) and meta["store.format"] in (FORMAT_V3, FORMAT_V4):
            parts = [out.pop(f"{name}{suffix}") for suffix in (".escapes", ".offset", ".step")]
            out[name] = dequantize_levels(tensors[name], *parts)
        elif scheme == QUANT_AXES and meta["store.format"] == FORMAT_V4 and name == "mask_features":
            parts = [out.pop(f"{name}{suffix}") for suffix in (".escapes", ".offset", ".step")]
            out[name] = dequantize_components(tensors[name], *parts)
        else:
            raise ValueError(f"tensor {name!r}: unknown quantisation {scheme!r}")
    return out, {name for name, scheme in quant.items() if scheme != QUANT_AXES}


# --------------------------------------------------------------------------- store
class PutResult(NamedTuple):
    """Outcome of `FeatureStore.put_info`: the key, the object's size, and whether this
    call wrote it (False when it already existed)."""

    key: str
    size: int
    written: bool


class FeatureStore:
    """Image features by (model id, image sha256) under `root_uri` (see the module docstring).

    Picklable (Ray ships it to actors); S3 clients are re-created in each process.
    """

    def __init__(self, root_uri: str, endpoint_url: str | None = None, *, backend: ObjectStore | None = None) -> None:
        self.backend = backend if backend is not None else open_store(root_uri, endpoint_url=endpoint_url)
        self.root_uri = self.backend.root_uri
        self._axes: dict[tuple[str, str], MaskAxes] = {}  # (model id, axes id) -> verified axes
        self._writing_axes: dict[str, MaskAxes] = {}  # model id -> the axes new objects are written along

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships stores to actors: the axes (1 MB each for Focal-T) are read again there.
        return {**self.__dict__, "_axes": {}, "_writing_axes": {}}

    def __repr__(self) -> str:
        return f"FeatureStore({self.root_uri!r})"

    def key(self, model_id: str, sha256: str) -> str:
        """Object key of one image's features, relative to the store root."""
        return feature_key(model_id, sha256)

    def uri(self, model_id: str, sha256: str) -> str:
        """Full URI (or path) of one image's features object."""
        return self.backend.uri(self.key(model_id, sha256))

    def has(self, model_id: str, sha256: str) -> bool:
        """Whether features of this image are stored for this model."""
        return self.backend.exists(self.key(model_id, sha256))

    def put(
        self,
        features: ImageFeatures,
        sha256: str,
        *,
        dtype: StoreDType | torch.dtype = "float16",
        compress: bool | str = False,
        mask_axes: "MaskAxes | Callable[[], MaskAxes] | None" = None,
    ) -> str:
        """Store `features` of the image whose bytes hash to `sha256`; returns the key.

        Content-addressed and immutable: when the object exists nothing is written.
        `mask_axes` (dtype "axes" only): how to measure the model's mask axes when the store
        has none for it yet (`predictor.mask_axes`; see `writing_axes`).
        """
        return self.put_info(features, sha256, dtype=dtype, compress=compress, mask_axes=mask_axes).key

    def put_info(
        self,
        features: ImageFeatures,
        sha256: str,
        *,
        dtype: StoreDType | torch.dtype = "float16",
        compress: bool | str = False,
        mask_axes: "MaskAxes | Callable[[], MaskAxes] | None" = None,
    ) -> PutResult:
        """As `put`, also returning the object's size (the manifest's `bytes`) and
        whether this call wrote it."""
        return self._put(features, sha256, dtype, compress, mask_axes)[0]

    def put_and_read(
        self,
        features: ImageFeatures,
        sha256: str,
        *,
        dtype: StoreDType = "float16",
        compress: bool | str = False,
        mask_axes: "MaskAxes | Callable[[], MaskAxes] | None" = None,
    ) -> tuple[PutResult, ImageFeatures]:
        """As `put_info`, also returning the features exactly as `get(..., dtype=None)` reads
        the object back: a server hands these to its decoders, so that masks do not depend on
        whether an image's features came from its encoder or from the store.

        Made from the tensors just written, before compression, as a reader decodes them (a
        quantised dtype's quantiser runs once); an object that was there already is read."""
        check_store_dtype(dtype)
        result, written = self._put(features, sha256, dtype, compress, mask_axes)
        if written is None:
            return result, self.get(features.model_id, sha256, dtype=None)
        logical, meta = written
        uri, axes_of = self.backend.uri(result.key), functools.partial(self.get_mask_axes, features.model_id)
        return result, _features_of(logical, meta, None, _object_axes(meta, uri, axes_of))

    def _put(self, features: ImageFeatures, sha256: str, dtype: StoreDType | torch.dtype, compress: bool | str,
             mask_axes: "MaskAxes | Callable[[], MaskAxes] | None",
             ) -> tuple[PutResult, tuple[dict[str, torch.Tensor], dict[str, str]] | None]:
        """`put_info`, also returning the written object's tensors before compression and its
        metadata (None when this call wrote nothing)."""
        key = self.key(features.model_id, sha256)
        try:
            return PutResult(key, self.backend.stat(key).size, False), None
        except ObjectNotFound:
            pass
        axes = None
        if dtype == "axes" and features.mask_axes is None:
            if mask_axes is None:
                raise ValueError("the 'axes' store dtype needs mask_axes= (e.g. predictor.mask_axes)")
            axes = self.writing_axes(features.model_id, mask_axes)
        elif dtype == "axes":  # already along axes (read from another store): written along them, so store them
            self.put_mask_axes(features.model_id, features.mask_axes)
        data, logical, meta = _encode_object(features, sha256, dtype, compress, None, axes)
        if self.backend.put_atomic(key, data, overwrite=False):
            return PutResult(key, len(data), True), (logical, meta)
        # Lost a race to another writer of the same image: its object stands.
        return PutResult(key, self.backend.stat(key).size, False), None

    def get(self, model_id: str, sha256: str, *, dtype: torch.dtype | None = torch.float32) -> ImageFeatures:
        """Load and verify features; raises `ObjectNotFound` or `CorruptObject`."""
        key = self.key(model_id, sha256)
        data = self.backend.get(key)
        return deserialize_features(
            data, uri=self.backend.uri(key), dtype=dtype, expect_sha256=sha256, expect_model_id=model_id,
            mask_axes=functools.partial(self.get_mask_axes, model_id),
        )

    def get_mask_axes(self, model_id: str, axes_id: str) -> MaskAxes:
        """The mask axes `axes_id` of `model_id` in this store (verified; kept once read).
        Raises `ObjectNotFound` or `CorruptObject`."""
        axes = self._axes.get((model_id, axes_id))
        if axes is None:
            key = mask_axes_key(model_id, axes_id)
            try:
                data = self.backend.get(key)
            except ObjectNotFound:
                if getattr(self._writing_axes.get(model_id), "id", None) == axes_id:
                    del self._writing_axes[model_id]  # gone: the next writer stores axes again
                raise
            axes = deserialize_mask_axes(data, uri=self.backend.uri(key), expect_id=axes_id, expect_model_id=model_id)
            self._axes[(model_id, axes_id)] = axes
        return axes

    def put_mask_axes(self, model_id: str, axes: MaskAxes) -> str:
        """Store `axes` for `model_id` (immutable, like features); returns the key."""
        key = mask_axes_key(model_id, axes.id)
        if (model_id, axes.id) not in self._axes and not self.backend.exists(key):
            self.backend.put_atomic(key, serialize_mask_axes(axes, model_id), overwrite=False)
        self._axes[(model_id, axes.id)] = axes  # read or written here: known to be in this store
        return key

    def writing_axes(self, model_id: str, calibrate: "MaskAxes | Callable[[], MaskAxes]") -> MaskAxes:
        """The mask axes new "axes" objects of `model_id` are written along: the ones already in
        the store (the first by id, so that every writer settles on the same), else `calibrate`
        (axes, or how to measure them: `predictor.mask_axes`), stored now. Any axes of the
        model serve every image; keeping to one keeps a store at one 1 MB axes object."""
        axes = self._writing_axes.get(model_id)
        if axes is None:
            prefix = mask_axes_key(model_id, "x")[: -len("x.safetensors")]
            stored = sorted(key for key, _ in self.backend.list(prefix) if key.endswith(".safetensors"))
            if stored:
                axes = self.get_mask_axes(model_id, stored[0][len(prefix):-len(".safetensors")])
            else:
                axes = calibrate if isinstance(calibrate, MaskAxes) else calibrate()
                self.put_mask_axes(model_id, axes)
            self._writing_axes[model_id] = axes
        return axes

    def delete(self, model_id: str, sha256: str) -> None:
        """Remove one object (e.g. one that failed verification, before re-encoding it)."""
        self.backend.delete(self.key(model_id, sha256))

    def manifest(self, model_id: str) -> Manifest:
        """The manifest of `model_id` in this store."""
        return Manifest(self.backend, model_id)

