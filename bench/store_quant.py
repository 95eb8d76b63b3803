"""Rate/distortion of candidate feature quantisations (issue 17 item 4: <= 8 MB per stored
Focal-T image with <= 0.5 point of click-IoU and instance-IoU drift, cache-miss load <= 100 ms).

The store's own formats (`store:float16`, `store:int8`) go through the real
serialize/deserialize code; every other candidate is a prototype of a format the store
could adopt, measured here before any of it is written into store/:

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
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_formats import MaskProbe, _load_predictor, rel_rms_error  # noqa: E402

from model.types import ImageFeatures  # noqa: E402
from store.feature_store import content_sha256, deserialize_features, serialize_features  # noqa: E402

DEFAULT_CANDIDATES = (
    "store:int8", "store:int10", "store:float16", "asym8/asym8/left", "asym8/asym7/planar", "asym9/asym8/left",
    "asym10/asym8/left", "pixel8/asym8/left", "asym8/asym8/planar", "uniform0.005/asym8/left",
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


def encode_residuals(r: np.ndarray) -> tuple[bytes, bytes]:
    """int8 stream (-128 = escape) and the escaped values as int16, each zstd-compressed."""
    import pyarrow as pa

    zstd = pa.Codec("zstd", compression_level=3)
    flat = r.reshape(-1)
    escaped = (flat < -127) | (flat > 127)
    stream = np.where(escaped, -128, flat).astype(np.int8)
    return (zstd.compress(pa.py_buffer(stream), asbytes=True),
            zstd.compress(pa.py_buffer(flat[escaped].astype(np.int16)), asbytes=True))


def decode_residuals(blobs: tuple[bytes, bytes], shape: tuple[int, ...], predictor: str,
                     lo: np.ndarray, step: np.ndarray) -> torch.Tensor:
    """The load path of a prototype: bytes -> float32 tensor (what `load ms` times)."""
    import pyarrow as pa

    zstd = pa.Codec("zstd")
    n = int(np.prod(shape))
    stream = np.frombuffer(zstd.decompress(blobs[0], decompressed_size=n, asbytes=True), dtype=np.int8)
    r = stream.astype(np.int16)
    where = np.flatnonzero(stream == -128)
    if where.size:
        r[where] = np.frombuffer(zstd.decompress(blobs[1], decompressed_size=2 * where.size, asbytes=True), np.int16)
    q = np.cumsum(r.reshape(shape), axis=-1, dtype=np.int16)  # int16 wraps, and the levels fit in it
    if predictor == "planar":
        q = np.cumsum(q, axis=-2, dtype=np.int16)
    return torch.from_numpy(q).to(torch.float32).mul_(torch.from_numpy(step)).add_(torch.from_numpy(lo))


def measure_candidate(features: ImageFeatures, name: str, repeat: int) -> tuple[dict, ImageFeatures]:
    """Bytes, load time and the features a reader would get, for one candidate."""
    if name.startswith("store:"):
        data = serialize_features(features, content_sha256(name.encode()), dtype=name[6:], compress="shuffle+zstd")
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            got = deserialize_features(data, dtype=torch.float32)
            times.append(time.process_time() - t0)
        return {"candidate": name, "bytes": len(data), "load_ms": 1e3 * min(times)}, got
    mf_scheme, ms_scheme, predictor = name.split("/")
    nbytes, encoded = 0, {}
    for key, t in features.tensors.items():
        q, lo, step = quantize(t.numpy(), mf_scheme if key == "mask_features" else ms_scheme)
        blobs = encode_residuals(residuals(q, predictor))
        nbytes += sum(map(len, blobs)) + 4 * (lo.size + step.size)
        encoded[key] = (blobs, q.shape, predictor, lo, step)
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        tensors = {key: decode_residuals(*args) for key, args in encoded.items()}
        times.append(time.process_time() - t0)
    got = ImageFeatures.from_parts(tensors, features.metadata())
    return {"candidate": name, "bytes": nbytes, "load_ms": 1e3 * min(times)}, got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seem-focalt-v1")
    parser.add_argument("--weights", default="random", help="a checkpoint, 'random' (seeded) or 'default'")
    parser.add_argument("--image", default="pipeline/samples/astronaut.jpg")
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    from model.image_io import decode_image

    predictor = _load_predictor(args.model, args.weights)
    reference = predictor.encode([decode_image(Path(args.image).read_bytes())], stage="pixel_decoder")[0]
    reference = reference.to(dtype=torch.float32)
    probe = MaskProbe(predictor, reference)
    print(f"{args.model} ({predictor.model_id}), {args.image}, input {reference.input_size}; load: "
          f"{os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}", flush=True)
    print(f"{'candidate':<26} {'MB':>6} {'rel_err':>8} {'load ms':>8} {'click IoU':>9} {'inst IoU':>8}", flush=True)
    rows = []
    for name in args.candidates.split(","):
        row, got = measure_candidate(reference, name, args.repeat)
        row["rel_err"] = rel_rms_error(reference, got)
        row.update(probe.compare(got.to(dtype=torch.float32)))
        rows.append(row)
        print(f"{name:<26} {row['bytes'] / 1e6:6.2f} {row['rel_err']:8.1e} {row['load_ms']:8.1f} "
              f"{row['click_iou']:9.4f} {row['inst_iou'] or 0:8.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
