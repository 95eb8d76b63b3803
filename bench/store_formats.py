"""Feature-store object formats: bytes per image, write time, read+decode time, error.

DESIGN §5 leaves the stored dtype and compression to measurement. This script stores one
image's `ImageFeatures` in every (dtype x codec) combination through the real
`FeatureStore` code path and prints a table; `--json` keeps the numbers for
docs/benchmarks.md.

    .venv/bin/python bench/store_formats.py                       # synthetic Focal-T v1 features
    .venv/bin/python bench/store_formats.py --features f.safetensors   # real ones
    .venv/bin/python bench/store_formats.py --store s3://bucket/bench --endpoint-url http://…

Synthetic features have the Focal-T v1 shapes for a 512 x 683 image (mask_features
512x128x176, ms0 512x16x22, ms1 512x32x44, ms2 512x64x88) with smooth random content;
how well real features compress can only be judged with `--features`. A features file
is either an object written by the store or any safetensors file whose metadata is
`ImageFeatures.metadata()`.

Columns: `MB` stored bytes per image; `encode`/`decode` CPU time to (de)serialise
(including the checksum, compression and the cast to float32 on read); `write`/`read`
time of the backend put/get; `rel_err` RMS error relative to the features' RMS (0 for
lossless float32); medians over `--repeat` runs. Mask IoU against float32 is measured on
the model side (decode masks from each variant), not here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from model.types import ImageFeatures  # noqa: E402
from store.backends import LocalStore, open_store  # noqa: E402
from store.feature_store import (  # noqa: E402
    CODECS,
    CorruptObject,
    content_sha256,
    deserialize_features,
    feature_key,
    serialize_features,
)

DTYPES = ("float32", "float16", "bfloat16")
FOCAL_T_SHAPES = {
    "mask_features": (512, 128, 176),
    "ms0": (512, 16, 22),
    "ms1": (512, 32, 44),
    "ms2": (512, 64, 88),
}


def synthetic_features(seed: int = 0) -> ImageFeatures:
    """Focal-T v1 pixel-decoder outputs for a 512 x 683 image, smooth random content:
    noise at 1/8 resolution upsampled bilinearly, plus a little per-pixel noise."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (c, h, w) in FOCAL_T_SHAPES.items():
        coarse = torch.randn(1, c, max(h // 8, 2), max(w // 8, 2), generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        tensors[name] = (smooth + 0.05 * torch.randn(c, h, w, generator=g)).contiguous()
    return ImageFeatures(
        model_id="bench-focalt-v1",
        original_size=(512, 683),
        input_size=(512, 683),
        padded_size=(512, 704),
        tensors=tensors,
    )


def load_features(path: str) -> ImageFeatures:
    data = Path(path).read_bytes()
    try:
        return deserialize_features(data, uri=path, dtype=torch.float32)
    except CorruptObject:
        from safetensors import safe_open
        from safetensors.torch import load

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = {k: v.float() for k, v in load(data).items()}
        return ImageFeatures.from_parts(tensors, metadata)


def rel_rms_error(ref: ImageFeatures, got: ImageFeatures) -> float:
    num = sum(float(((got.tensors[k] - v) ** 2).sum()) for k, v in ref.tensors.items())
    den = sum(float((v**2).sum()) for v in ref.tensors.values())
    return (num / den) ** 0.5 if den else 0.0


def measure(features: ImageFeatures, store, dtype: str, codec: str, repeat: int) -> dict:
    sha = content_sha256(f"{dtype}/{codec}".encode())
    key = feature_key(features.model_id, sha)
    encode_s, write_s, read_s, decode_s = [], [], [], []
    size = 0
    got = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = serialize_features(features, sha, dtype=dtype, compress=codec)
        t1 = time.perf_counter()
        store.put_atomic(key, data)
        t2 = time.perf_counter()
        back = store.get(key)
        t3 = time.perf_counter()
        got = deserialize_features(back, uri=store.uri(key), dtype=torch.float32, expect_sha256=sha)
        t4 = time.perf_counter()
        size = len(data)
        encode_s.append(t1 - t0)
        write_s.append(t2 - t1)
        read_s.append(t3 - t2)
        decode_s.append(t4 - t3)
    store.delete(key)
    assert got is not None
    return {
        "dtype": dtype,
        "codec": codec,
        "bytes": size,
        "encode_ms": 1e3 * statistics.median(encode_s),
        "write_ms": 1e3 * statistics.median(write_s),
        "read_ms": 1e3 * statistics.median(read_s),
        "decode_ms": 1e3 * statistics.median(decode_s),
        "rel_err": rel_rms_error(features, got),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="a features .safetensors file (default: synthetic Focal-T v1 features)")
    parser.add_argument("--store", help="store root to write to (default: a temporary local directory)")
    parser.add_argument("--endpoint-url", help="S3 endpoint for --store s3://…")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="local store without fsync (isolates CPU cost)")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)

    features = load_features(args.features) if args.features else synthetic_features()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        if args.store:
            store = open_store(args.store, endpoint_url=args.endpoint_url)
        else:
            store = LocalStore(tmp, fsync=not args.no_fsync)
        rows = []
        for dtype in args.dtypes.split(","):
            for codec in args.codecs.split(","):
                rows.append(measure(features, store, dtype, codec, args.repeat))
                print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)

    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in features.tensors.items())
    print(f"features: {'--features ' + args.features if args.features else 'synthetic Focal-T v1'} ({shapes}); "
          f"fp32 in memory {features.nbytes / 1e6:.1f} MB")
    print(f"store: {args.store or 'local temp dir'}{' (no fsync)' if args.no_fsync else ''}; repeat {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    header = f"{'dtype':<9} {'codec':<13} {'MB':>7} {'ratio':>6} {'encode ms':>10} {'write ms':>9} {'read ms':>8} {'decode ms':>10} {'rel_err':>9}"
    print(header)
    print("-" * len(header))
    base = max(r["bytes"] for r in rows)
    for r in rows:
        print(
            f"{r['dtype']:<9} {r['codec']:<13} {r['bytes'] / 1e6:7.2f} {base / r['bytes']:6.2f} "
            f"{r['encode_ms']:10.1f} {r['write_ms']:9.1f} {r['read_ms']:8.1f} {r['decode_ms']:10.1f} {r['rel_err']:9.2e}"
        )
    if args.json:
        meta = {"features": args.features or "synthetic-focalt-v1", "store": args.store or "local-tmp",
                "fsync": not args.no_fsync, "repeat": args.repeat, "cpus": os.cpu_count(), "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
