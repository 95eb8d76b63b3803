"""GPU figures: encoder throughput, decoder latency, matmul roofline fraction, device parity.

What it measures (issue 6 point 5), all on one device in one run:

1. `matmul`: the device's measured dense matrix-multiply rate (TFLOP/s) in bf16 (and fp32),
   square n x n products, 2 n^3 FLOPs each.
2. `encoder`: images/s of the image encoder (backbone + pixel decoder) of `--model`
   (default seem-focalt-v1, random weights: throughput does not depend on the values) at
   `--size` px (default 512 x 512), fp32 and bf16 autocast, over a batch-size sweep. The
   input batch is already normalised on the device: this is the network's rate, not the
   JPEG/resize path. One extra row times `SeemPredictor.encode` end to end (resize on the
   host, copy to the device, features back as fp32) at one batch size.
3. `flops`: the encoder's FLOPs per image counted with `torch.utils.flop_counter`
   (matmuls, convolutions, attention; grid_sample and element-wise ops are not counted,
   so the fraction below is a lower bound), and the fraction of the measured bf16 matmul
   rate the best bf16 encoder throughput reaches.
4. `decoder`: latency of one `SeemPredictor.decode` call on cached features, per prompt
   type (point, box, scribble, polygon, text, text-first, text+point, round-2 with the previous mask),
   with the model's default vocabulary labelling the mask.
5. `parity`: the reference fixture folder (`--fixture`, default ../shared/seem-reference/tiny)
   run case by case with the model on the device, every output compared with the
   reference's as `seem parity` does; and CPU vs device on one image: the encoder's
   features and a point prompt's mask (fp32 on both; bf16 autocast on the device too).

    python bench/gpu.py --device cuda --json out/gpu.json --markdown out/gpu.md   # a CUDA machine
    .venv/bin/python bench/gpu.py --device cpu --quick                          # small sizes (the test)

Needs only `model/` and its dependencies (torch, numpy, pillow, safetensors, pyyaml,
regex, pycocotools, scipy): no Ray, so it runs on a bare GPU box with the checkout.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from model import Box, Point, Polygon, Prompts, Scribble, SeemPredictor, build_model, get_config  # noqa: E402
from model.parity import FixtureRunner, Tolerance  # noqa: E402

DEFAULT_FIXTURE = REPO.parent / "shared" / "seem-reference" / "tiny"
# "text" is a phrase on an image the predictor has decoded before (it keeps the image's decoder
# projections); "text-first" the first phrase on a features object, as after a cache miss.
PROMPT_TYPES = ("point", "box", "scribble", "polygon", "text", "text-first", "text+point", "round-2")
SECTIONS = ("matmul", "encoder", "decoder", "parity")


@dataclasses.dataclass
class Plan:
    """Sizes of one run: the full figures, or `--quick` ones small enough for a CPU test."""

    size: int
    batches: tuple[int, ...]
    matmul_n: int
    min_time_s: float  # each timed configuration runs at least this long (after warm-up)
    warmup: int
    decode_repeat: int
    e2e_batch: int

    @classmethod
    def full(cls, size: int) -> "Plan":
        return cls(size, (1, 2, 4, 8, 16, 32, 64), 8192, 3.0, 3, 20, 8)

    @classmethod
    def quick(cls, size: int) -> "Plan":
        return cls(size, (1, 2), 256, 0.0, 1, 1, 2)


# --------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, min_time_s: float,
          min_iters: int = 1) -> list[float]:
    """Seconds per call of `fn`: `warmup` untimed calls, then calls until both `min_iters`
    calls and `min_time_s` seconds are done. The device is synchronised around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - started < min_time_s:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- 1. matmul
def matmul_rate(device: torch.device, n: int, dtype: torch.dtype, plan: Plan) -> dict:
    """Measured TFLOP/s of an n x n @ n x n product in `dtype` (2 n^3 FLOPs)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times = timed(lambda: torch.mm(a, b), device, plan.warmup, plan.min_time_s, min_iters=3)
    best = min(times)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "ms": 1e3 * statistics.median(times),
            "tflops": 2 * n ** 3 / best / 1e12}


# --------------------------------------------------------------------------- 2./3. encoder
def random_pixels(model, batch: int, size: int, device: torch.device) -> torch.Tensor:
    """A normalised, padded B x 3 x size x size batch on the device (what the encoder sees)."""
    g = torch.Generator(device="cpu").manual_seed(batch)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g).to(device) for _ in range(batch)]
    return model.normalize_and_pad(images)


def encoder_forward(model, pixels: torch.Tensor, bf16: bool) -> None:
    with torch.inference_mode(), torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
        feats = model.encode_backbone(pixels)
        model.encode_pixels(feats)


def encoder_flops(model, size: int, device: torch.device) -> int:
    """FLOPs of one image through backbone + pixel decoder, counted on fp32 ops."""
    pixels = random_pixels(model, 1, size, device)
    with FlopCounterMode(display=False) as counter:
        encoder_forward(model, pixels, bf16=False)
    return int(counter.get_total_flops())


def encoder_sweep(model, plan: Plan, device: torch.device, dtypes: tuple[str, ...]) -> list[dict]:
    rows = []
    for dtype in dtypes:
        bf16 = dtype == "bf16"
        for batch in plan.batches:
            row = {"dtype": dtype, "batch": batch, "size": plan.size}
            try:
                pixels = random_pixels(model, batch, plan.size, device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times = timed(lambda: encoder_forward(model, pixels, bf16), device, plan.warmup, plan.min_time_s)
                best = min(times)
                row.update(ms_per_batch=1e3 * statistics.median(times), images_per_s=batch / best,
                           images_per_s_median=batch / statistics.median(times), iters=len(times))
                if device.type == "cuda":
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                del pixels
            except RuntimeError as exc:
                if not is_oom(exc):
                    raise
                row["error"] = "out of memory"
                free_memory(device)
                rows.append(row)
                break  # larger batches will not fit either
            rows.append(row)
            print(f"  encoder {dtype} batch {batch}: {row['images_per_s']:.2f} images/s", file=sys.stderr)
        free_memory(device)
    return rows


def encoder_end_to_end(predictor: SeemPredictor, plan: Plan, bf16: bool) -> dict:
    """`SeemPredictor.encode` on uint8 host images (resize, normalise, copy, features to fp32)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (plan.size, plan.size, 3), dtype=np.uint8) for _ in range(plan.e2e_batch)]
    predictor.encode_batch_size = plan.e2e_batch
    predictor.autocast_bf16 = bf16
    times = timed(lambda: predictor.encode(images), predictor.device, plan.warmup, plan.min_time_s)
    return {"dtype": "bf16" if bf16 else "fp32", "batch": plan.e2e_batch, "size": plan.size,
            "images_per_s": plan.e2e_batch / min(times), "ms_per_batch": 1e3 * statistics.median(times)}


# --------------------------------------------------------------------------- 4. decoder
def scene(size: int) -> np.ndarray:
    """A size x size RGB picture with a few flat shapes on a gradient (something to segment)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 90)], -1).astype(np.uint8)
    c = size // 2
    img[(yy - int(0.3 * size)) ** 2 + (xx - int(0.3 * size)) ** 2 < (size // 7) ** 2] = (220, 30, 30)
    img[int(0.55 * size):int(0.85 * size), int(0.55 * size):int(0.9 * size)] = (30, 40, 210)
    img[c - size // 16:c + size // 16, int(0.1 * size):int(0.45 * size)] = (40, 190, 40)
    return img


def prompt_set(size: int) -> dict[str, Prompts]:
    s = float(size)
    click = Point(0.3 * s, 0.3 * s)
    return {
        "point": Prompts(spatial=(click,)),
        "box": Prompts(spatial=(Box(0.55 * s, 0.55 * s, 0.9 * s, 0.85 * s),)),
        "scribble": Prompts(spatial=(Scribble(((0.6 * s, 0.6 * s), (0.7 * s, 0.75 * s), (0.85 * s, 0.7 * s))),)),
        "polygon": Prompts(spatial=(Polygon(((0.12 * s, 0.45 * s), (0.44 * s, 0.45 * s), (0.44 * s, 0.55 * s),
                                             (0.12 * s, 0.55 * s))),)),
        "text": Prompts(text="the red circle"),
        "text+point": Prompts(text="the red circle", spatial=(click,)),
    }


def decoder_latency(predictor: SeemPredictor, plan: Plan) -> list[dict]:
    features = predictor.encode([scene(plan.size)])[0]
    prompts = prompt_set(plan.size)
    first = predictor.decode(features, prompts["point"])
    second_round = Prompts(spatial=(Point(0.3 * plan.size, 0.3 * plan.size),
                                    Point(0.05 * plan.size, 0.05 * plan.size, positive=False)))
    calls: dict[str, Callable[[], Any]] = {name: (lambda p=p: predictor.decode(features, p))
                                           for name, p in prompts.items()}
    calls["round-2"] = lambda: predictor.decode(features, second_round, previous_mask=first.memory)
    calls["text-first"] = lambda: predictor.decode(dataclasses.replace(features), prompts["text"])
    rows = []
    for name in PROMPT_TYPES:
        times = timed(calls[name], predictor.device, plan.warmup, plan.min_time_s, min_iters=plan.decode_repeat)
        result = calls[name]()
        rows.append({"prompt": name, "ms_median": 1e3 * statistics.median(times), "ms_p90": 1e3 * _quantile(times, 0.9),
                     "ms_min": 1e3 * min(times), "calls": len(times), "label": result.masks[0].label})
        print(f"  decoder {name}: {rows[-1]['ms_median']:.1f} ms", file=sys.stderr)
    return rows


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --------------------------------------------------------------------------- 5. parity
class DeviceFixtureRunner(FixtureRunner):
    """`seem parity`'s runner with the model moved to `device` after its weights are loaded."""

    def __init__(self, folder: Path, tol: Tolerance, device: torch.device) -> None:
        super().__init__(folder, tol)
        self.model.to(device)


FIXTURE_BASE_FILES = ("config.yaml", "weights.safetensors", "spec.json", "inputs.npz")


def fixture_parity(folder: Path, device: torch.device, only: set[str] | None = None) -> list[dict]:
    """Each case of the fixture folder on the device, in its own runner (a case whose code
    path cannot run on the device is reported as such instead of hiding the others)."""
    rows = []
    cases = sorted(p for p in folder.glob("*.npz") if p.name != "inputs.npz" and (not only or p.stem in only))
    if only and len(cases) != len(only):
        raise SystemExit(f"--parity-cases: no case file for {sorted(only - {p.stem for p in cases})} in {folder}")
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
            for name in FIXTURE_BASE_FILES + (case.name,):
                os.symlink(folder / name, Path(tmp) / name)
            torch.manual_seed(0)
            try:
                checks = DeviceFixtureRunner(Path(tmp), Tolerance(), device).run()
            except Exception as exc:  # noqa: BLE001 - reported per case
                rows.append({"case": case.stem, "ok": False, "checks": 0, "failed": [],
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                continue
        failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
        rows.append({"case": case.stem, "ok": not failed, "checks": len(checks), "failed": failed})
    return rows


def cpu_vs_device(name: str, size: int, device: torch.device) -> list[dict]:
    """One model (seeded random weights) on the CPU and on the device: features and a mask."""
    torch.manual_seed(0)
    cfg = sized_config(name, size)
    cpu_model = build_model(cfg, weights=None)
    dev_model = copy.deepcopy(cpu_model)
    cpu = SeemPredictor(cpu_model, device="cpu", autocast_bf16=False, model_id="parity")
    image = scene(size)
    ref = cpu.encode([image])[0]
    prompt = prompt_set(size)["point"]
    ref_mask = cpu.decode(ref, prompt).masks[0].mask
    dev = SeemPredictor(dev_model, device=device, autocast_bf16=False, model_id="parity")
    rows = []
    for bf16 in (False, True):
        dev.autocast_bf16 = bf16
        got = dev.encode([image])[0]
        row: dict[str, Any] = {"device_dtype": "bf16 autocast" if bf16 else "fp32"}
        for key, t in ref.tensors.items():
            diff = (got.tensors[key].cpu().double() - t.double())
            row[f"{key}_rel_rms"] = float(diff.pow(2).mean().sqrt() / t.double().pow(2).mean().sqrt().clamp_min(1e-12))
            row[f"{key}_max_abs"] = float(diff.abs().max())
        mask = dev.decode(got, prompt).masks[0].mask
        union = np.logical_or(mask, ref_mask).sum()
        row["point_mask_iou"] = float(np.logical_and(mask, ref_mask).sum() / union) if union else 1.0
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- run
def sized_config(name: str, size: int):
    """The registered config with the predictor resizing the shortest edge to `size`."""
    cfg = get_config(name)
    return cfg.replace(inference=dataclasses.replace(cfg.inference, resize_shortest_edge=size, resize_max_size=None))


def environment(device: torch.device, argv: list[str]) -> dict:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/gpu.py " + " ".join(shlex.quote(a) for a in argv),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        (platform.processor() or platform.machine()) + f", {os.cpu_count()} CPUs, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   memory_gb=round(props.total_memory / 2 ** 30, 1), sm_count=props.multi_processor_count,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark)
    return env


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    plan = Plan.quick(args.size or 128) if args.quick else Plan.full(args.size or 512)
    if args.batches:
        plan.batches = tuple(int(b) for b in args.batches.split(","))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its kernels
    results: dict[str, Any] = {"env": environment(device, argv), "model": args.model, "size": plan.size,
                               "quick": args.quick}
    print(f"device: {results['env']['device_name']}", file=sys.stderr)
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)

    if "matmul" in sections:
        results["matmul"] = [matmul_rate(device, plan.matmul_n, dt, plan) for dt in (torch.bfloat16, torch.float32)]
    if sections & {"encoder", "decoder"}:
        torch.manual_seed(0)
        predictor = SeemPredictor(build_model(sized_config(args.model, plan.size), weights=None), device=device,
                                  model_id=f"{args.model}-random")
        model = predictor.model
    if "encoder" in sections:
        results["encoder_flops_per_image"] = encoder_flops(model, plan.size, device)
        results["encoder"] = encoder_sweep(model, plan, device, ("fp32", "bf16"))
        results["encoder_end_to_end"] = [encoder_end_to_end(predictor, plan, bf16) for bf16 in (False, True)]
        best_bf16 = max((r["images_per_s"] for r in results["encoder"] if r["dtype"] == "bf16" and "error" not in r),
                        default=None)
        bf16_matmul = next((m["tflops"] for m in results.get("matmul", []) if m["dtype"] == "bfloat16"), None)
        if best_bf16 and bf16_matmul:
            achieved = results["encoder_flops_per_image"] * best_bf16 / 1e12
            results["roofline"] = {"encoder_tflops_bf16": achieved, "matmul_tflops_bf16": bf16_matmul,
                                   "fraction": achieved / bf16_matmul}
    if "decoder" in sections:
        predictor.autocast_bf16 = device.type == "cuda"  # the predictor's own default for encoding
        results["decoder"] = decoder_latency(predictor, plan)
    if "parity" in sections:
        fixture = Path(args.fixture)
        if (fixture / "config.yaml").is_file():
            results["parity_fixture"] = {"folder": str(fixture), "cases": fixture_parity(
                fixture, device, set(args.parity_cases.split(",")) if args.parity_cases else None)}
        else:
            results["parity_fixture"] = {"folder": str(fixture), "cases": [], "error": "fixture folder not found"}
        results["parity_cpu_vs_device"] = cpu_vs_device(args.model, plan.size, device)
    return results


# --------------------------------------------------------------------------- report
def markdown(r: dict) -> str:
    env = r["env"]
    out = [f"Device: **{env['device_name']}** (`{env['device']}`), torch {env['torch']}"
           + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if "cuda" in env else "")
           + f"; {env['date']}; model `{r['model']}` (random weights), {r['size']} x {r['size']} px"
           + (" (--quick sizes)" if r["quick"] else "") + ".",
           f"Command: `{env['command']}`", ""]
    if "matmul" in r:
        out += ["| matmul | n | TFLOP/s |", "|---|---:|---:|"]
        out += [f"| {m['dtype']} | {m['n']} | {m['tflops']:.1f} |" for m in r["matmul"]] + [""]
    if "encoder" in r:
        out += [f"Encoder FLOPs per image (counted): {r['encoder_flops_per_image'] / 1e9:.1f} GFLOP.", "",
                "| encoder | batch | images/s | ms/batch | peak GiB |", "|---|---:|---:|---:|---:|"]
        for e in r["encoder"]:
            if "error" in e:
                out.append(f"| {e['dtype']} | {e['batch']} | {e['error']} | | |")
            else:
                out.append(f"| {e['dtype']} | {e['batch']} | {e['images_per_s']:.1f} | {e['ms_per_batch']:.1f} | "
                           f"{e.get('peak_mem_gb', float('nan')):.1f} |")
        for e in r["encoder_end_to_end"]:
            out.append(f"| {e['dtype']} `SeemPredictor.encode` end to end | {e['batch']} | {e['images_per_s']:.1f} | "
                       f"{e['ms_per_batch']:.1f} | |")
        out.append("")
        if "roofline" in r:
            f = r["roofline"]
            out += [f"bf16 encoder reaches {f['encoder_tflops_bf16']:.1f} TFLOP/s = **{100 * f['fraction']:.1f}%** "
                    f"of the measured bf16 matmul rate ({f['matmul_tflops_bf16']:.1f} TFLOP/s).", ""]
    if "decoder" in r:
        out += ["| decoder prompt | median ms | p90 ms | calls |", "|---|---:|---:|---:|"]
        out += [f"| {d['prompt']} | {d['ms_median']:.1f} | {d['ms_p90']:.1f} | {d['calls']} |" for d in r["decoder"]]
        out.append("")
    if "parity_fixture" in r:
        p = r["parity_fixture"]
        out += [f"Parity, fixture `{p['folder']}` on `{env['device']}`:", "", "| case | result |", "|---|---|"]
        for c in p["cases"]:
            result = (f"{c['checks']} outputs match" if c["ok"] else
                      c.get("error") or f"{len(c['failed'])} of {c['checks']} differ: " + "; ".join(c["failed"][:3]))
            out.append(f"| {c['case']} | {result} |")
        if p.get("error"):
            out.append(f"| - | {p['error']} |")
        out += ["", "| CPU fp32 vs device | mask_features rel RMS | ms0 rel RMS | point mask IoU |",
                "|---|---:|---:|---:|"]
        for c in r["parity_cpu_vs_device"]:
            out.append(f"| {c['device_dtype']} | {c['mask_features_rel_rms']:.2e} | {c['ms0_rel_rms']:.2e} | "
                       f"{c['point_mask_iou']:.4f} |")
        out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu (default cuda)")
    parser.add_argument("--model", default="seem-focalt-v1", help="registered model name (random weights)")
    parser.add_argument("--size", type=int, help="image side in px (default 512; 128 with --quick)")
    parser.add_argument("--batches", help="comma-separated encoder batch sizes (default 1..64; 1,2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes and single timings (CPU test)")
    parser.add_argument("--only", help="comma-separated subset of: matmul, encoder, decoder, parity")
    parser.add_argument("--fixture", default=str(DEFAULT_FIXTURE), help="parity fixture folder")
    parser.add_argument("--parity-cases", help="comma-separated case names of the fixture (default: all)")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--markdown", help="write the tables for docs/benchmarks.md here")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(SECTIONS):
        parser.error(f"--only: choose from {', '.join(SECTIONS)}")
    results = run(args, argv)
    text = markdown(results)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    failed = [c["case"] for c in results.get("parity_fixture", {}).get("cases", []) if not c["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
