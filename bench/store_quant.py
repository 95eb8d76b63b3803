"""Rate/distortion of candidate feature quantisations (issue 17 item 4: <= 8 MB per stored
Focal-T image with <= 0.5 point of click-IoU and instance-IoU drift, cache-miss load <= 100 ms).

The store's own formats (`store:float16`, `store:int8`, `store:int10`, `store:axes`) go
through the real serialize/deserialize code (`store:axes` along the predictor's mask axes
from `--axes-image`); every other candidate is a prototype of a format the store could
adopt, measured here before any of it is written into store/ (the `axes` prototype became
format version 4, with the changes docs/benchmarks.md, "Format version 4", lists):

- `symB` / `asymB`: B-bit levels per channel, symmetric around 0 (scale = max |x| / (2^(B-1) - 1),
  what format version 2 does at B = 8) or asymmetric (lowest value + step = range / (2^B - 1));
- `pixelB`: asymmetric B-bit levels per spatial position (all channels of a pixel share a step);
- `uniformS`: one step S for the whole tensor, after removing each channel's mean;
- predictors on the integer levels (lossless, so exactly inverted on load): `left`
  (difference with the left neighbour) or `planar` (left + up - up-left: a 2-D difference);
- the residuals are stored as an int8 stream (-128 marks an escape) + the escaped values as
  int16, each compressed with zstd (level 3), as the store's codec would.

A candidate is `MF_SCHEME/MS_SCHEME/PREDICTOR`: the scheme of `mask_features` (stride 4,
3/4 of the values), of `ms0..ms2`, and the predictor, e.g. `asym9/asym8/left`.

`reluB/MS_SCHEME/CODING` stores, instead of `mask_features`, the pixel decoder's activation
before its last convolution (`layer_1`'s ReLU output y: >= 0, about half exactly 0; the
model's `mask_features` conv turns it into `mask_features`): B-bit levels per channel over
[0, the channel's max] (0 is exact), coded as `zeromap` (a bit map of the non-zero values +
their levels as byte planes, each zstd'd), `planes` (the levels, zeros included, as byte
planes, each zstd'd) or `up` (levels minus the level above, zeros
included, the int8 + escapes stream); `ms0..ms2` as format 3 stores them (B-bit levels,
differences with the row above), the object queries' pass (if any) float16. Its load is
the decode of all of them; the IoU columns
project y back to `mask_features` with the model's conv (outside the timing), which is
what the decoder's consumers compute lazily.

`kltS/MS_SCHEME/PREDICTOR` rotates `mask_features`' 512 channels into the principal axes
of another image's (`--basis-image`; a basis that would ship with the model, so no bytes
per image), after removing that image's channel means, and quantises every component with
one step, S times the features' RMS (equal steps give the least squared error for the bytes
at high rate). A reader would keep the features rotated and rotate the few vectors that meet
them instead (mask embeddings, sampled prompt points), so the load stops at the rotated
levels; the IoU columns rotate back outside the timing.

`axesS/MS_SCHEME/PREDICTOR` weighs errors by what they do to mask logits instead: a logit is
a mask embedding's dot product with `mask_features`, so an error e moves the logits by e' M e
on average, M the second moment of the mask embeddings the model produces (`mask_axes`: from
a calibration image, `--axes-image`, encoded and decoded with clicks, a box and a phrase; a
basis that would be computed once per model, so no bytes per image). The 512 channels are
rotated into M's eigenvectors and component k gets the step S * rms * sqrt(mean weight /
weight_k) (`axesS_CAP`: at most CAP * S * rms): fine where the embeddings point, coarse where
they do not. Levels of the finest
components exceed int16, so their escapes are int32. `load ms` stops at the rotated levels
(a reader that rotated the few vectors meeting them, as for `klt`); what rotating them back
costs (a 512 x 512 product over every position, today's consumers) is printed beside it.

Columns: `MB` bytes per image; `rel_err` RMS error relative to the features' RMS; `load ms`
CPU time to turn the bytes back into float32 tensors (prototypes: zstd + escapes + the
inverse predictor + dequantisation; store rows: `deserialize_features`, which also
verifies the checksum), minimum of `--repeat`; click / instance IoU as in
bench/store_formats.py (`MaskProbe`: fp32 features are the reference).

    BENCH_THREADS=1 .venv/bin/python bench/store_quant.py --model seem-focalt-v1 --weights random \\
        --image pipeline/samples/astronaut.jpg --json quant.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_formats import MaskProbe, _load_predictor, rel_rms_error  # noqa: E402

from model.types import OBJECT_PASS_TENSORS, ImageFeatures  # noqa: E402
from store.feature_store import (content_sha256, dequantize_levels, deserialize_features,  # noqa: E402
                                 quantize_levels, serialize_features)

DEFAULT_CANDIDATES = (
    "store:int8", "store:int10", "store:float16", "asym8/asym8/left", "asym8/asym7/planar", "asym9/asym8/left",
    "asym10/asym8/left", "pixel8/asym8/left", "asym8/asym8/planar", "uniform0.005/asym8/left",
    "relu8/asym8/zeromap", "relu9/asym8/zeromap", "relu10/asym8/zeromap", "relu10/asym8/up", "relu10/asym8/planes",
    "relu10/asym9/zeromap",
)
_SCHEME = re.compile(r"^(sym|asym|pixel)(\d+)$|^uniform([0-9.]+)$")


def quantize(x: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C x H x W float -> (integer levels, offset, step): value = level * step + offset, with
    offset and step float32 arrays that broadcast against the C x H x W levels."""
    m = _SCHEME.match(scheme)
    if not m:
        raise ValueError(f"unknown scheme {scheme!r}")
    c, h, w = x.shape
    flat = x.reshape(c, -1).astype(np.float64)
    if m.group(3):  # uniform step after removing the channel means
        lo = flat.mean(1, keepdims=True)
        step = np.full_like(lo, float(m.group(3)))
    else:
        kind, bits = m.group(1), int(m.group(2))
        axis = 0 if kind == "pixel" else 1  # statistics over channels (per pixel) or over pixels (per channel)
        if kind == "sym":
            peak = np.abs(flat).max(axis, keepdims=True)
            lo, step = np.zeros_like(peak), np.where(peak > 0, peak / (2 ** (bits - 1) - 1), 1.0)
        else:
            low, high = flat.min(axis, keepdims=True), flat.max(axis, keepdims=True)
            lo, step = low, np.where(high > low, (high - low) / (2**bits - 1), 1.0)
    lo, step = lo.astype(np.float32), step.astype(np.float32)  # stored as float32: quantise against those
    q = np.round((flat - lo) / step).astype(np.int32).reshape(c, h, w)
    shape = (c, 1, 1) if lo.shape[0] == c else (1, h, w)
    return q, lo.reshape(shape), step.reshape(shape)


def residuals(q: np.ndarray, predictor: str) -> np.ndarray:
    """Integer levels minus their prediction from already-decoded neighbours."""
    r = q.copy()
    r[..., 1:] -= q[..., :-1]
    if predictor == "planar":
        r[..., 1:, :] -= r[..., :-1, :].copy()
    elif predictor != "left":
        raise ValueError(f"unknown predictor {predictor!r}")
    return r


def encode_residuals(r: np.ndarray, wide: bool = False) -> tuple[bytes, bytes]:
    """int8 stream (-128 = escape) and the escaped values as int16 (int32 if `wide`), each
    zstd-compressed."""
    import pyarrow as pa

    zstd = pa.Codec("zstd", compression_level=3)
    flat = r.reshape(-1)
    escaped = (flat < -127) | (flat > 127)
    stream = np.where(escaped, -128, flat).astype(np.int8)
    return (zstd.compress(pa.py_buffer(stream), asbytes=True),
            zstd.compress(pa.py_buffer(flat[escaped].astype(np.int32 if wide else np.int16)), asbytes=True))


def decode_residuals(blobs: tuple[bytes, bytes], shape: tuple[int, ...], predictor: str,
                     lo: np.ndarray, step: np.ndarray, wide: bool = False) -> torch.Tensor:
    """The load path of a prototype: bytes -> float32 tensor (what `load ms` times)."""
    import pyarrow as pa

    zstd = pa.Codec("zstd")
    n = int(np.prod(shape))
    levels = np.int32 if wide else np.int16  # int16 wraps, and the levels of the B-bit schemes fit in it
    stream = np.frombuffer(zstd.decompress(blobs[0], decompressed_size=n, asbytes=True), dtype=np.int8)
    r = stream.astype(levels)
    where = np.flatnonzero(stream == -128)
    if where.size:
        width = np.dtype(levels).itemsize
        r[where] = np.frombuffer(zstd.decompress(blobs[1], decompressed_size=width * where.size, asbytes=True), levels)
    if predictor == "up":  # differences with the row above (y's `up` coding)
        q = np.cumsum(r.reshape(shape), axis=-2, dtype=levels)
    else:
        q = np.cumsum(r.reshape(shape), axis=-1, dtype=levels)
    if predictor == "planar":
        q = np.cumsum(q, axis=-2, dtype=levels)
    return torch.from_numpy(q).to(torch.float32).mul_(torch.from_numpy(step)).add_(torch.from_numpy(lo))


def _zstd(data: np.ndarray) -> bytes:
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=3).compress(pa.py_buffer(np.ascontiguousarray(data)), asbytes=True)


def _unzstd(blob: bytes, nbytes: int, dtype) -> np.ndarray:
    import pyarrow as pa

    return np.frombuffer(pa.Codec("zstd").decompress(blob, decompressed_size=nbytes, asbytes=True), dtype=dtype)


def quantize_relu(y: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """C x H x W values >= 0 -> (levels, step per channel): value = level * step, 0 exact."""
    peak = y.reshape(y.shape[0], -1).max(1)
    step = np.where(peak > 0, peak / (2**bits - 1), 1.0).astype(np.float32)
    return np.round(y / step[:, None, None]).astype(np.int32), step


def encode_zeromap(q: np.ndarray) -> list[bytes]:
    """Levels -> [bit map of the non-zero ones, low bytes of level - 1, high bytes]."""
    nonzero = q > 0
    values = (q[nonzero] - 1).astype(np.uint16)
    low, high = values.astype(np.uint8), (values >> 8).astype(np.uint8)
    return [_zstd(np.packbits(nonzero.reshape(-1))), _zstd(low), _zstd(high)]


def decode_zeromap(blobs: list[bytes], shape: tuple[int, ...], step: np.ndarray) -> torch.Tensor:
    n = int(np.prod(shape))
    nonzero = torch.from_numpy(np.unpackbits(_unzstd(blobs[0], (n + 7) // 8, np.uint8), count=n).view(np.bool_))
    count = int(nonzero.sum())
    low = torch.from_numpy(_unzstd(blobs[1], count, np.uint8).copy())
    high = torch.from_numpy(_unzstd(blobs[2], count, np.uint8).copy())
    levels = torch.zeros(n, dtype=torch.float32)
    levels[nonzero] = (high.to(torch.float32) * 256 + low.to(torch.float32)).add_(1)
    return levels.view(shape).mul_(torch.from_numpy(step)[:, None, None])


def encode_planes(q: np.ndarray) -> list[bytes]:
    """Levels (zeros included) -> [low bytes, high bytes], each zstd'd."""
    return [_zstd((q & 255).astype(np.uint8)), _zstd((q >> 8).astype(np.uint8))]


def decode_planes(blobs: list[bytes], shape: tuple[int, ...], step: np.ndarray) -> torch.Tensor:
    n = int(np.prod(shape))
    high = torch.from_numpy(_unzstd(blobs[1], n, np.uint8).copy()).to(torch.float32)
    levels = high.mul_(256).add_(torch.from_numpy(_unzstd(blobs[0], n, np.uint8).copy()))
    return levels.view(shape).mul_(torch.from_numpy(step)[:, None, None])


def _project(predictor, y: torch.Tensor) -> torch.Tensor:
    """The model's `mask_features` of activation y (C x H x W)."""
    with torch.no_grad():
        return predictor.model.pixel_decoder.mask_features(y[None])[0]


def _relu_coding(q: np.ndarray, step: np.ndarray, coding: str) -> tuple[list[bytes], Callable[[], torch.Tensor]]:
    """The compressed blobs of the levels `q` in `coding`, and how to read y back from them."""
    if coding == "zeromap":
        blobs = encode_zeromap(q)
        return blobs, functools.partial(decode_zeromap, blobs, q.shape, step)
    if coding == "planes":
        blobs = encode_planes(q)
        return blobs, functools.partial(decode_planes, blobs, q.shape, step)
    if coding == "up":
        blobs = list(encode_residuals(np.swapaxes(residuals(np.swapaxes(q, 1, 2), "left"), 1, 2)))
        zero = np.zeros_like(step)[:, None, None]
        return blobs, functools.partial(decode_residuals, blobs, q.shape, "up", zero, step[:, None, None])
    raise ValueError(f"unknown coding {coding!r}")


def measure_relu_candidate(features: ImageFeatures, y: torch.Tensor, predictor, name: str,
                           repeat: int) -> tuple[dict, ImageFeatures]:
    """A `reluB/MS_SCHEME/CODING` candidate: y instead of `mask_features` (module docstring)."""
    bits, ms_scheme, coding = int(name.split("/")[0][4:]), *name.split("/")[1:]
    q, step = quantize_relu(y.numpy().astype(np.float64), bits)
    blobs, decode = _relu_coding(q, step, coding)
    nbytes = sum(map(len, blobs)) + 4 * step.size
    if not ms_scheme.startswith("asym"):
        raise ValueError(f"{name}: the other maps take the store's asymB levels (format 3's code)")
    encoded = {}
    passed = {}  # the object queries' pass (when encode made one): float16, never quantised
    for key in OBJECT_PASS_TENSORS:
        if key in features.tensors:
            raw = features.tensors[key].to(torch.float16).numpy()
            passed[key] = (_zstd(raw.view(np.uint8)), raw.shape)
            nbytes += len(passed[key][0])
    for key, t in features.tensors.items():  # the other maps as format 3 stores them (rows above)
        if key != "mask_features" and key not in OBJECT_PASS_TENSORS:
            parts = quantize_levels(t, int(ms_scheme[4:]))
            encoded[key] = (_zstd(parts[""].numpy()), _zstd(parts[".escapes"].numpy()), parts, t.shape)
            nbytes += len(encoded[key][0]) + len(encoded[key][1]) + 8 * t.shape[0]

    def decode_maps() -> dict[str, torch.Tensor]:
        out = {}
        for key, (stream, escapes, parts, shape) in encoded.items():
            s = torch.from_numpy(_unzstd(stream, parts[""].numel(), np.int8).copy()).view(shape)
            e = torch.from_numpy(_unzstd(escapes, 2 * parts[".escapes"].numel(), np.int16).copy())
            out[key] = dequantize_levels(s, e, parts[".offset"], parts[".step"])
        for key, (blob, shape) in passed.items():
            raw = _unzstd(blob, 2 * int(np.prod(shape)), np.float16).reshape(shape)
            out[key] = torch.from_numpy(raw.astype(np.float32))
        return out

    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        tensors = decode_maps()
        y_read = decode()
        times.append(time.process_time() - t0)
    tensors["mask_features"] = _project(predictor, y_read)
    got = ImageFeatures.from_parts(tensors, features.metadata())
    row = {"candidate": name, "bytes": nbytes, "load_ms": 1e3 * min(times),
           "y_rel_err": float(((y_read - y) ** 2).sum() / (y**2).sum()) ** 0.5,
           "y_zero_fraction": float((q == 0).mean())}
    return row, got


def klt_basis(features: ImageFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes (C x C, columns by falling variance) and channel means (C x 1) of the
    `mask_features` of `features`."""
    mask_features = features.tensors["mask_features"].numpy().astype(np.float64)
    x = mask_features.reshape(mask_features.shape[0], -1)
    mean = x.mean(1, keepdims=True)
    variance, axes = np.linalg.eigh((x - mean) @ (x - mean).T / x.shape[1])
    return axes[:, np.argsort(variance)[::-1]].astype(np.float32), mean.astype(np.float32)


def quantize_rotated(x: np.ndarray, basis: tuple[np.ndarray, np.ndarray], relative_step: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C x H x W -> (levels of the rotated components, offset 0, one step), as `quantize`."""
    axes, mean = basis
    rotated = axes.T @ (x.reshape(x.shape[0], -1) - mean)
    step = np.float32(relative_step * np.sqrt((x.astype(np.float64) ** 2).mean()))
    q = np.round(rotated / step).astype(np.int32).reshape(x.shape)
    return q, np.zeros((1, 1, 1), np.float32), np.full((1, 1, 1), step, np.float32)


def rotate_back(rotated: torch.Tensor, basis: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """Components along `axes` (C x H x W) -> channels: axes @ rotated + mean."""
    axes, mean = basis
    c = rotated.shape[0]
    return torch.addmm(torch.from_numpy(mean), torch.from_numpy(axes), rotated.reshape(c, -1)).reshape(rotated.shape)


def mask_axes(predictor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axes along which errors in `mask_features` move mask logits, from one calibration image:
    the eigenvectors (C x C, columns by falling weight) and eigenvalues (C) of the second
    moment of every mask embedding the heads produce while the image is encoded (the object
    queries' pass, every round) and decoded with 9 clicks, a box and a phrase; and the
    image's channel means (C x 1). A logit is mask_emb . mask_features, so an error e in the
    features moves the logits of those embeddings by e' M e on average (M that moment)."""
    from dataclasses import replace

    from model import Box, Point, Prompts

    embeddings = []
    heads = predictor.model.decoder.heads
    hook = heads.register_forward_hook(
        lambda module, inputs, out: embeddings.append(out.mask_emb.detach().reshape(-1, out.mask_emb.shape[-1])))
    try:
        features = predictor.encode([image], stage="pixel_decoder")[0]
        h, w = image.shape[:2]
        prompts = [Prompts(spatial=(Point(w * (i + 1) / 4, h * (j + 1) / 4),)) for j in range(3) for i in range(3)]
        prompts += [Prompts(spatial=(Box(w * 0.2, h * 0.2, w * 0.6, h * 0.7),)), Prompts(text="the animal")]
        for prompt in prompts:
            predictor.decode(replace(features), prompt)
    finally:
        hook.remove()
    e = torch.cat(embeddings).to(torch.float64).numpy()
    weight, axes = np.linalg.eigh(e.T @ e / e.shape[0])
    order = np.argsort(weight)[::-1]
    mask_features = features.tensors["mask_features"].to(torch.float64).numpy()
    mean = mask_features.reshape(mask_features.shape[0], -1).mean(1, keepdims=True)
    return axes[:, order].astype(np.float32), weight[order], mean.astype(np.float32)


def quantize_along_axes(x: np.ndarray, basis: tuple[np.ndarray, np.ndarray, np.ndarray], relative_step: float,
                        cap: float = float("inf")) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C x H x W -> (levels of the components along `mask_axes`, offset 0, a step per
    component): step_k = S * rms * min(cap, sqrt(mean weight / weight_k)), the steps that give
    every component the same share of the logits' squared error (the least bytes for that
    error at high rate); `cap` bounds how much coarser than S * rms a step may get, for the
    consumers that read the features along every axis (sampled prompt points)."""
    axes, weight, mean = basis
    weight = np.maximum(weight, weight[0] * 1e-12)
    rms = np.sqrt((x.astype(np.float64) ** 2).mean())
    step = (relative_step * rms * np.minimum(cap, np.sqrt(weight.mean() / weight))).astype(np.float32)[:, None]
    rotated = axes.T @ (x.reshape(x.shape[0], -1) - mean)
    q = np.round(rotated / step).astype(np.int64).reshape(x.shape)
    return q, np.zeros((x.shape[0], 1, 1), np.float32), step[:, :, None]


def measure_candidate(features: ImageFeatures, name: str, repeat: int,
                      basis: tuple[np.ndarray, np.ndarray] | None = None,
                      axes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                      store_axes=None) -> tuple[dict, ImageFeatures]:
    """Bytes, load time and the features a reader would get, for one candidate (`basis`:
    `klt_basis` of another image, for `klt` candidates; `axes`: `mask_axes`, for `axes` ones;
    `store_axes`: the predictor's `MaskAxes`, for `store:axes`)."""
    if name.startswith("store:"):
        data = serialize_features(features, content_sha256(name.encode()), dtype=name[6:], compress="shuffle+zstd",
                                  mask_axes=store_axes)
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            got = deserialize_features(data, dtype=torch.float32, mask_axes=lambda _: store_axes)
            times.append(time.process_time() - t0)
        return {"candidate": name, "bytes": len(data), "load_ms": 1e3 * min(times)}, got
    mf_scheme, ms_scheme, predictor = name.split("/")
    nbytes, encoded = 0, {}
    for key, t in features.tensors.items():
        if key in OBJECT_PASS_TENSORS:
            continue  # (as in the relu candidates; the float16 pass is left out of these rows' bytes)
        wide = key == "mask_features" and mf_scheme.startswith("axes")
        if key == "mask_features" and mf_scheme.startswith("klt"):
            q, lo, step = quantize_rotated(t.numpy(), basis, float(mf_scheme[3:]))
        elif wide:
            step_and_cap = [float(v) for v in mf_scheme[4:].split("_")]  # axesS or axesS_CAP
            q, lo, step = quantize_along_axes(t.numpy(), axes, *step_and_cap)
        else:
            q, lo, step = quantize(t.numpy(), mf_scheme if key == "mask_features" else ms_scheme)
        blobs = encode_residuals(residuals(q, predictor), wide)
        nbytes += sum(map(len, blobs)) + 4 * (lo.size + step.size)
        encoded[key] = (blobs, q.shape, predictor, lo, step, wide)
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        tensors = {key: decode_residuals(*args) for key, args in encoded.items()}
        times.append(time.process_time() - t0)
    tensors.update({k: v for k, v in features.tensors.items() if k in OBJECT_PASS_TENSORS})
    row = {"candidate": name, "bytes": nbytes, "load_ms": 1e3 * min(times)}
    if mf_scheme.startswith("klt"):  # what the rotated consumers would see, for the IoU columns
        tensors["mask_features"] = rotate_back(tensors["mask_features"], basis)
    elif mf_scheme.startswith("axes"):  # also timed: what a reader with today's consumers adds to the load
        rotated, times = tensors["mask_features"], []
        for _ in range(repeat):
            t0 = time.process_time()
            tensors["mask_features"] = rotate_back(rotated, (axes[0], axes[2]))
            times.append(time.process_time() - t0)
        row["rotate_back_ms"] = 1e3 * min(times)
    got = ImageFeatures.from_parts(tensors, features.metadata())
    return row, got


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seem-focalt-v1")
    parser.add_argument("--weights", default="random", help="a checkpoint, 'random' (seeded) or 'default'")
    parser.add_argument("--image", default="pipeline/samples/astronaut.jpg")
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--basis-image", default="pipeline/samples/chelsea.jpg",
                        help="the image whose mask features give `klt` candidates their axes")
    parser.add_argument("--axes-image", default="pipeline/samples/chelsea.jpg",
                        help="the calibration image whose mask embeddings give `axes` candidates their axes")
    parser.add_argument("--json", help="write the rows here")
    return parser


def _reference_and_activation(predictor, image) -> tuple[ImageFeatures, torch.Tensor]:
    """The image's float32 pixel-decoder features and its layer_1 output: the y that `relu`
    candidates store (both pixel decoders name it so)."""
    activation = {}
    hook = predictor.model.pixel_decoder.layer_1.register_forward_hook(
        lambda module, inputs, out: activation.__setitem__("y", out.detach()[0].clone()))
    reference = predictor.encode([image], stage="pixel_decoder")[0]
    hook.remove()
    return reference.to(dtype=torch.float32), activation["y"].to(torch.float32)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    from model.image_io import decode_image

    predictor = _load_predictor(args.model, args.weights)
    reference, y = _reference_and_activation(predictor, decode_image(Path(args.image).read_bytes()))
    probe = MaskProbe(predictor, reference)
    basis = None
    if any(name.startswith("klt") for name in args.candidates.split(",")):
        basis = klt_basis(predictor.encode([decode_image(Path(args.basis_image).read_bytes())],
                                           stage="pixel_decoder")[0].to(dtype=torch.float32))
    axes = store_axes = None
    if any(name.startswith("axes") for name in args.candidates.split(",")):
        axes = mask_axes(predictor, decode_image(Path(args.axes_image).read_bytes()))
    if "store:axes" in args.candidates.split(","):  # format 4, along the predictor's own calibration
        store_axes = predictor.mask_axes([decode_image(Path(args.axes_image).read_bytes())])
    print(f"{args.model} ({predictor.model_id}), {args.image}, input {reference.input_size}; load: "
          f"{os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}", flush=True)
    print(f"{'candidate':<26} {'MB':>6} {'rel_err':>8} {'load ms':>8} {'click IoU':>9} {'inst IoU':>8}", flush=True)
    rows = []
    for name in args.candidates.split(","):
        if name.startswith("relu"):
            row, got = measure_relu_candidate(reference, y, predictor, name, args.repeat)
        else:
            row, got = measure_candidate(reference, name, args.repeat, basis, axes, store_axes)
        row["rel_err"] = rel_rms_error(reference, got)
        row.update(probe.compare(got.to(dtype=torch.float32)))
        rows.append(row)
        print(f"{name:<26} {row['bytes'] / 1e6:6.2f} {row['rel_err']:8.1e} {row['load_ms']:8.1f} "
              f"{row['click_iou']:9.4f} {row['inst_iou'] or 0:8.4f}"
              + (f"  (+ rotate back {row['rotate_back_ms']:.1f} ms)" if "rotate_back_ms" in row else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
