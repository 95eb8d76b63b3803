"""Feature-store object formats: bytes per image, write time, read+decode time, error.

The feature store leaves the stored dtype and compression to measurement. This script stores one
image's `ImageFeatures` in every (dtype x codec) combination through the real
`FeatureStore` code path and prints a table; `--json` keeps the numbers for
docs/benchmarks.md.

    .venv/bin/python bench/store_formats.py                       # synthetic Focal-T v1 features
    .venv/bin/python bench/store_formats.py --features f.safetensors   # real ones
    .venv/bin/python bench/store_formats.py --store s3://bucket/bench --endpoint-url http://…
    .venv/bin/python bench/store_formats.py --model seem-tiny --image photo.jpg   # real features + mask IoU

Synthetic features have the Focal-T v1 shapes for a 512 x 683 image (mask_features
512x128x176, ms0 512x16x22, ms1 512x32x44, ms2 512x64x88) with smooth random content;
how well real features compress can only be judged with `--features`. A features file
is either an object written by the store or any safetensors file whose metadata is
`ImageFeatures.metadata()`.

Columns: `MB` stored bytes per image; `encode`/`decode` CPU time to (de)serialise
(including the checksum, compression and the cast to float32 on read); `write`/`read`
time of the backend put/get; `rel_err` RMS error relative to the features' RMS (0 for
lossless float32); `serve ms` what serving's encoder spends per upload to store the object and
get the features it hands its decoders (`FeatureStore.put_and_read`), `put+as_st.` the same
the way it did before (`put`, then `as_stored`: the quantiser twice), alternating with it;
medians (or `--stat min`) over `--repeat` runs.

`--model NAME --image PATH` (optionally `--weights`; "random" = seeded random weights)
encodes a real image with the predictor and measures both things a store object can
hold: the pixel-decoder outputs (`stage pixel_decoder`), and the backbone outputs
(`stage backbone`), from which the pixel decoder is re-run on read (`materialize ms`).
For every (stage, dtype) the object read back is decoded into masks and compared with
the masks of the float32 pixel-decoder features (the reference): `click IoU` (a 3 x 3
grid of single clicks, one mask each; `--click-grid N`: N x N, and `click flips` counts the
clicks under 0.95 IoU, whose mask changed rather than its edge), `inst IoU` (top-10 instance masks, each matched to
its best reference mask of the same label) and `pan IoU` (panoptic segments likewise;
"-" when the model finds none, as random weights do); `--all-prompts` adds box, scribble,
phrase and memory-round IoU (`MaskProbe`). `load ms` = read + decode + materialize: the
cost of one cache miss in the decoder. Format 4 ("axes") objects are written along the
model's `predictor.mask_axes()` and loaded along them (no rotation back: the predictor
reads them so).
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
from storage import LocalStore, open_store  # noqa: E402
from training.prompt_sampling import iou  # noqa: E402
from store.feature_store import (  # noqa: E402
    CODECS,
    CorruptObject,
    FeatureStore,
    as_stored,
    content_sha256,
    deserialize_features,
    feature_key,
    serialize_features,
)

DTYPES = ("float32", "float16", "bfloat16", "int8")  # int8: per-channel quantisation (format 2)
# How repeated timings are summarised (--stat): the median, or the minimum, which is the
# better estimate on a machine shared with other jobs (interference only adds time).
_STAT = statistics.median
# The clock (--clock): wall time, or this process's CPU time, which with one torch thread
# (BENCH_THREADS=1) is the work itself, unaffected by other jobs waiting for the same cores.
_CLOCK = time.perf_counter
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
    ref = ref.in_frame(got.mask_axes)  # (a rotation keeps sums of squares)
    num = sum(float(((got.tensors[k] - v) ** 2).sum()) for k, v in ref.tensors.items())
    den = sum(float((v**2).sum()) for v in ref.tensors.values())
    return (num / den) ** 0.5 if den else 0.0


def measure(features: ImageFeatures, store, dtype: str, codec: str, repeat: int, mask_axes=None) -> dict:
    """`mask_axes`: the model's (`predictor.mask_axes()`), for dtype "axes"."""
    sha = content_sha256(f"{dtype}/{codec}".encode())
    key = feature_key(features.model_id, sha)
    encode_s, write_s, read_s, decode_s = [], [], [], []
    size = 0
    got = None
    for _ in range(repeat):
        t0 = _CLOCK()
        data = serialize_features(features, sha, dtype=dtype, compress=codec, mask_axes=mask_axes)
        t1 = _CLOCK()
        store.put_atomic(key, data)
        t2 = _CLOCK()
        back = store.get(key)
        t3 = _CLOCK()
        got = deserialize_features(back, uri=store.uri(key), dtype=torch.float32, expect_sha256=sha,
                                   mask_axes=lambda _: mask_axes)
        t4 = _CLOCK()
        size = len(data)
        encode_s.append(t1 - t0)
        write_s.append(t2 - t1)
        read_s.append(t3 - t2)
        decode_s.append(t4 - t3)
    store.delete(key)
    assert got is not None
    return {**_serve_path_ms(features, store, dtype, codec, repeat, mask_axes), **{
        "dtype": dtype,
        "codec": codec,
        "bytes": size,
        "encode_ms": 1e3 * _STAT(encode_s),
        "write_ms": 1e3 * _STAT(write_s),
        "read_ms": 1e3 * _STAT(read_s),
        "decode_ms": 1e3 * _STAT(decode_s),
        "rel_err": rel_rms_error(features, got),
    }}


def _serve_path_ms(features: ImageFeatures, store, dtype: str, codec: str, repeat: int, mask_axes=None) -> dict:
    """What serving's encoder spends per upload once the image is encoded: storing the object
    and getting the features its decoders are handed, `FeatureStore.put_and_read`
    (`serve_ms`), against `put` then `as_stored`, which it ran before (`put_as_stored_ms`);
    the two alternate, each on a new image key."""
    fs = FeatureStore("", backend=store)
    serve_s, before_s = [], []
    for i in range(repeat):
        for way, times in (("after", serve_s), ("before", before_s)):
            sha = content_sha256(f"serve/{dtype}/{codec}/{way}/{i}".encode())
            t0 = _CLOCK()
            if way == "after":
                fs.put_and_read(features, sha, dtype=dtype, compress=codec, mask_axes=mask_axes)
            else:
                fs.put(features, sha, dtype=dtype, compress=codec, mask_axes=mask_axes)
                as_stored(features, dtype, mask_axes)
            times.append(_CLOCK() - t0)
            store.delete(fs.key(features.model_id, sha))
    return {"serve_ms": 1e3 * _STAT(serve_s), "put_as_stored_ms": 1e3 * _STAT(before_s)}


# --------------------------------------------------------------------------- real features
def _load_predictor(model: str, weights: str | None):
    from model import SeemPredictor

    if weights == "random":
        # Seeded, so the model id (a hash of the weights) is the same on every run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return SeemPredictor.from_pretrained(model, weights=None)
    return SeemPredictor.from_pretrained(model, weights=weights or "default")


def _matched_iou(ref: list, got: list) -> float | None:
    """Mean over reference masks of the best IoU with a mask of the same label."""
    if not ref:
        return None
    scores = []
    for r in ref:
        same = [g for g in got if g.label == r.label]
        scores.append(max((iou(r.mask, g.mask) for g in same), default=0.0))
    return sum(scores) / len(scores)


#: `--all-prompts`: phrases asked of every image (whatever it shows, each picks some mask).
PROBE_PHRASES = ("the person", "the sky", "a flag", "the helmet", "a face", "the suit", "the wall", "a hand")


class MaskProbe:
    """Masks of one image under fixed prompts, to compare feature variants. `all_prompts`
    adds the other prompt types: 12 boxes and 12 three-point scribbles on a 4 x 3 grid, the
    8 `PROBE_PHRASES` and a second click with the first click's memory (`box_iou`,
    `scribble_iou`, `phrase_iou`, `memory_iou`: mean IoU with the reference's masks)."""

    def __init__(self, predictor, reference: ImageFeatures, all_prompts: bool = False, click_grid: int = 3) -> None:
        from model import Box, Point, Prompts, Scribble

        self.predictor = predictor
        h, w = reference.original_size
        n = click_grid  # 3: the 3 x 3 grid every table before format 4 used, at quarters of the image
        self.clicks = [Point(w * (i + 1) / (n + 1), h * (j + 1) / (n + 1)) for j in range(n) for i in range(n)]
        grid = [(a, b) for a in (0.05, 0.25, 0.45, 0.6) for b in (0.05, 0.3, 0.55)]
        self.others = {} if not all_prompts else {
            "box": [Prompts(spatial=(Box(w * a, h * b, w * (a + 0.35), h * (b + 0.4)),)) for a, b in grid],
            "scribble": [Prompts(spatial=(Scribble(((w * a, h * b), (w * (a + 0.2), h * (b + 0.1)),
                                                    (w * (a + 0.3), h * (b + 0.3)))),)) for a, b in grid],
            "phrase": [Prompts(text=t) for t in PROBE_PHRASES],
        }
        self.rounds = (Point(w * 0.5, h * 0.4), Point(w * 0.45, h * 0.6)) if all_prompts else None
        self.ref = self.masks(reference)

    def masks(self, features: ImageFeatures) -> dict:
        from model import Prompts

        p = self.predictor
        clicks = [p.decode(features, Prompts(spatial=(c,))).masks[0] for c in self.clicks]
        out = {"click": clicks, "inst": p.instances(features, top_k=10), "pan": p.panoptic(features).masks}
        for kind, prompts in self.others.items():
            out[kind] = [p.decode(features, prompt).masks[0] for prompt in prompts]
        if self.rounds is not None:
            first = p.decode(features, Prompts(spatial=(self.rounds[0],)))
            out["memory"] = [p.decode(features, Prompts(spatial=(self.rounds[1],)), previous_mask=first.memory).masks[0]]
        return out

    def compare(self, features: ImageFeatures) -> dict:
        got = self.masks(features)
        clicks = [iou(a.mask, b.mask) for a, b in zip(self.ref["click"], got["click"])]
        out = {
            "click_iou": sum(clicks) / len(clicks),
            "click_flips": int(sum(v < 0.95 for v in clicks)),  # clicks whose mask changed, not just its edge
            "inst_iou": _matched_iou(self.ref["inst"], got["inst"]),
            "pan_iou": _matched_iou(self.ref["pan"], got["pan"]),
            "pan_segments": len(self.ref["pan"]),
        }
        for kind in (*self.others, *(["memory"] if self.rounds else [])):
            out[f"{kind}_iou"] = sum(iou(a.mask, b.mask) for a, b in zip(self.ref[kind], got[kind])) / len(got[kind])
        return out


def run_model(args: argparse.Namespace, store) -> tuple[list[dict], dict]:
    """Real features of `args.image` at both stages, every dtype x codec, with mask IoU."""
    from model.image_io import decode_image

    predictor = _load_predictor(args.model, args.weights)
    image = decode_image(Path(args.image).read_bytes())
    reference = predictor.encode([image], stage="pixel_decoder")[0]
    probe = MaskProbe(predictor, reference, args.all_prompts, args.click_grid)
    axes = predictor.mask_axes() if "axes" in args.dtypes.split(",") else None
    rows = []
    for stage in args.stages.split(","):
        features = reference if stage == "pixel_decoder" else predictor.encode([image], stage="backbone")[0]
        for dtype in args.dtypes.split(","):
            if dtype == "axes" and stage == "backbone":
                continue  # mask axes are a pixel-decoder-stage format
            agreement = None
            for codec in args.codecs.split(","):
                row = measure(features, store, dtype, codec, args.repeat, axes)
                row["stage"] = stage
                # The object as a reader gets it, then (backbone) the pixel decoder on top.
                data = serialize_features(features, content_sha256(b"probe"), dtype=dtype, compress=codec,
                                          mask_axes=axes)
                got = deserialize_features(data, dtype=torch.float32, mask_axes=lambda _: axes)
                times = []
                for _ in range(args.repeat):
                    t0 = _CLOCK()
                    full = predictor.materialize(got)
                    times.append(_CLOCK() - t0)
                row["materialize_ms"] = 1e3 * _STAT(times) if stage == "backbone" else 0.0
                row["load_ms"] = row["read_ms"] + row["decode_ms"] + row["materialize_ms"]
                if agreement is None:  # codecs are lossless: masks depend on (stage, dtype) only
                    agreement = probe.compare(full)
                row.update(agreement)
                rows.append(row)
                print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    meta = {
        "model": args.model, "model_id": predictor.model_id, "weights": args.weights or "default",
        "image": args.image, "image_size": list(image.shape[:2]), "input_size": list(reference.input_size),
        "click_grid": args.click_grid,
        "shapes": {stage: {k: list(v.shape) for k, v in f.tensors.items()} for stage, f in
                   (("pixel_decoder", reference), ("backbone", predictor.encode([image], stage="backbone")[0]))},
    }
    return rows, meta


def print_model_table(rows: list[dict], meta: dict) -> None:
    print(f"model {meta['model']} ({meta['model_id']}, weights {meta['weights']}); image {meta['image']} "
          f"{meta['image_size'][1]}x{meta['image_size'][0]} -> input {meta['input_size'][1]}x{meta['input_size'][0]}")
    for stage, shapes in meta["shapes"].items():
        print(f"  {stage}: " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items()))
    header = (f"{'stage':<13} {'dtype':<9} {'codec':<13} {'MB':>6} {'write ms':>8} {'serve ms':>8} {'put+as_st.':>10} "
              f"{'load ms':>8} {'(mat.)':>7} "
              f"{'rel_err':>8} {'click IoU':>9} {'inst IoU':>8} {'pan IoU':>7}")
    others = [k for k in ("box_iou", "scribble_iou", "phrase_iou", "memory_iou") if rows and k in rows[0]]
    if rows and meta.get("click_grid", 3) != 3:
        others.insert(0, "click_flips")
    header += "".join(f" {'click flips' if k == 'click_flips' else k[:-4] + ' IoU':>12}" for k in others)
    print(header)
    print("-" * len(header))
    fmt = lambda v: "-" if v is None else str(v) if isinstance(v, int) else f"{v:.4f}"  # noqa: E731
    for r in rows:
        print(f"{r['stage']:<13} {r['dtype']:<9} {r['codec']:<13} {r['bytes'] / 1e6:6.2f} "
              f"{r['encode_ms'] + r['write_ms']:8.1f} {r['serve_ms']:8.1f} {r['put_as_stored_ms']:10.1f} "
              f"{r['load_ms']:8.1f} {r['materialize_ms']:7.1f} {r['rel_err']:8.1e} "
              f"{fmt(r['click_iou']):>9} {fmt(r['inst_iou']):>8} {fmt(r['pan_iou']):>7}"
              + "".join(f" {fmt(r[k]):>12}" for k in others))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    global _STAT, _CLOCK
    _STAT = statistics.median if args.stat == "median" else min
    _CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    if args.model and not args.image:
        parser.error("--model needs --image")
    return _main_model(args) if args.model else _main_features(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="a features .safetensors file (default: synthetic Focal-T v1 features)")
    parser.add_argument("--store", help="store root to write to (default: a temporary local directory)")
    parser.add_argument("--endpoint-url", help="S3 endpoint for --store s3://…")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="local store without fsync (isolates CPU cost)")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--model", help="encode --image with this model (real features, both stages, mask IoU)")
    parser.add_argument("--weights", help="weights for --model: a checkpoint, 'random' (seeded) or the default")
    parser.add_argument("--image", help="the image --model encodes")
    parser.add_argument("--stages", default="pixel_decoder,backbone", help="stages measured with --model")
    parser.add_argument("--click-grid", type=int, default=3,
                        help="with --model: N x N clicks for click IoU (and `flips`: clicks under 0.95 IoU)")
    parser.add_argument("--all-prompts", action="store_true",
                        help="with --model: also box, scribble, phrase and memory-round IoU (MaskProbe)")
    parser.add_argument("--stat", choices=("median", "min"), default="median", help="summary of the --repeat timings")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or process CPU time (use with BENCH_THREADS=1 on a shared machine)")
    return parser


def _main_model(args: argparse.Namespace) -> int:
    """--model: encode --image with the model, then every stage / dtype / codec, with mask IoU."""
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        store = open_store(args.store, endpoint_url=args.endpoint_url) if args.store else \
            LocalStore(tmp, fsync=not args.no_fsync)
        rows, meta = run_model(args, store)
    print(f"store: {args.store or 'local temp dir'}{' (no fsync)' if args.no_fsync else ''}; repeat {args.repeat}, "
          f"{args.stat} of {args.clock} times; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_model_table(rows, meta)
    if args.json:
        meta.update({"store": args.store or "local-tmp", "fsync": not args.no_fsync, "repeat": args.repeat,
                     "stat": args.stat, "clock": args.clock, "threads": torch.get_num_threads(),
                     "cpus": os.cpu_count(), "torch": torch.__version__})
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def _main_features(args: argparse.Namespace) -> int:
    """A features file (or synthetic Focal-T features) in every dtype / codec."""
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
    header = f"{'dtype':<9} {'codec':<13} {'MB':>7} {'ratio':>6} {'encode ms':>10} {'write ms':>9} {'read ms':>8} {'decode ms':>10} {'serve ms':>9} {'put+as_st.':>10} {'rel_err':>9}"
    print(header)
    print("-" * len(header))
    base = max(r["bytes"] for r in rows)
    for r in rows:
        print(
            f"{r['dtype']:<9} {r['codec']:<13} {r['bytes'] / 1e6:7.2f} {base / r['bytes']:6.2f} "
            f"{r['encode_ms']:10.1f} {r['write_ms']:9.1f} {r['read_ms']:8.1f} {r['decode_ms']:10.1f} "
            f"{r['serve_ms']:9.1f} {r['put_as_stored_ms']:10.1f} {r['rel_err']:9.2e}"
        )
    if args.json:
        meta = {"features": args.features or "synthetic-focalt-v1", "store": args.store or "local-tmp",
                "fsync": not args.no_fsync, "repeat": args.repeat, "cpus": os.cpu_count(), "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
