"""What decoding from the stored pre-projection activation costs (bench/projected_mask_features.py).

A store object that holds the pixel decoder's activation y instead of `mask_features`
(bench/store_quant.py's `relu` candidates) makes every consumer of mask features fold the
projection in: `ProjectedMaskFeatures` against `DenseMaskFeatures` on Focal-T's shapes at
512 px (y and the map 512 x 128 x 128), random values, CPU time of one torch thread,
minimum of `--repeat`:

- `logits`: stride-4 mask logits of N queries (a prompt's final masks; with few queries
  the decoder computes them in every round);
- `level setup`: resizing the map (dense) or every tap's view of y (projected) to the
  three level sizes, once per image;
- `level logits`: one round's attention-mask logits at the three level sizes;
- `prompt means`: a box's 512 sampled points averaged per prompt.

    BENCH_THREADS=1 .venv/bin/python bench/store_projection.py --kernel 3 --queries 3,101
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench.projected_mask_features import DenseMaskFeatures, ProjectedMaskFeatures  # noqa: E402

LEVELS = [(16, 16), (32, 32), (64, 64)]


def cpu_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return 1e3 * best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", type=int, default=3, help="projection kernel: 3 (Focal-T), 1 (SAM ViT-B)")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--queries", default="3,101")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    g = torch.Generator().manual_seed(0)
    c, s, k = args.channels, args.size, args.kernel
    y = F.relu(torch.randn(1, c, s, s, generator=g))
    weight = torch.randn(c, c, k, k, generator=g) / (c * k * k) ** 0.5
    bias = torch.randn(c, generator=g)
    t0 = time.process_time()
    with torch.no_grad():
        dense_map = F.conv2d(y, weight, bias, padding=k // 2)
    print(f"load: {os.getloadavg()[0]:.1f}; kernel {k}; the dense map from y once: "
          f"{1e3 * (time.process_time() - t0):.0f} ms")
    print(f"{'what':<28} {'N':>4} {'dense ms':>9} {'projected ms':>13} {'ratio':>6}")
    with torch.no_grad():
        for n in (int(q) for q in args.queries.split(",")):
            emb = torch.randn(1, n, c, generator=g)
            rows = []
            dense, lazy = DenseMaskFeatures(dense_map), ProjectedMaskFeatures(y, weight, bias)
            rows.append(("logits (stride 4)", cpu_ms(lambda: dense.logits(emb), args.repeat),
                         cpu_ms(lambda: lazy.logits(emb), args.repeat)))
            fresh = lambda cls, *a: [cls(*a).level_logits(emb, size) for size in LEVELS]  # noqa: E731
            rows.append(("level setup + 1 round", cpu_ms(lambda: fresh(DenseMaskFeatures, dense_map), args.repeat),
                         cpu_ms(lambda: fresh(ProjectedMaskFeatures, y, weight, bias), args.repeat)))
            rows.append(("level logits (1 round)",
                         cpu_ms(lambda: [dense.level_logits(emb, z) for z in LEVELS], args.repeat),
                         cpu_ms(lambda: [lazy.level_logits(emb, z) for z in LEVELS], args.repeat)))
            coords, prompt = torch.rand(512, 2, generator=g), torch.zeros(512, dtype=torch.long)
            rows.append(("prompt means (512 points)",
                         cpu_ms(lambda: dense.prompt_means(coords, prompt, 1), args.repeat),
                         cpu_ms(lambda: lazy.prompt_means(coords, prompt, 1), args.repeat)))
            for name, a, b in rows:
                print(f"{name:<28} {n:>4} {a:9.1f} {b:13.1f} {b / a:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
