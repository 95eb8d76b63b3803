"""Interleaved A/B of the encode loop between two checkouts of this repository.

    .venv/bin/python bench/encode_ab.py BEFORE_DIR AFTER_DIR --rounds 21

Why: on a shared machine the load drifts by more than a change's effect between two runs
of bench/pipeline.py (CPU ms per image is not load-free either: two cores' hyperthreads
and caches are shared). Here one worker process per checkout loads seem-tiny and a corpus
of 8 images, and the two take turns, one chunk each (read + decode, `encode`, store
`put`, as bench/pipeline.py's loop does them), alternating who goes first. Each chunk's
after/before ratio compares two runs seconds apart, under the same load. The first round
of each (warm-up) is dropped. One torch thread per worker.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(images: int) -> None:
    """Runs in a checkout (cwd, PYTHONPATH): one chunk per 'go' line on stdin."""
    import hashlib
    import tempfile

    import torch

    # The checkout under test first; never this file's folder (bench/pipeline.py would
    # shadow the `pipeline` package).
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if p != here]
    from bench.pipeline import make_corpus
    from model.image_io import decode_image
    from pipeline.sources import list_source, read_bytes
    from pipeline.stages import DEFAULT_FEATURE_FORMAT as fmt
    from pipeline.stages import ModelSpec, load_predictor
    from store import FeatureStore

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="encode-ab-"))
    items = list(list_source(str(make_corpus(work / "src", images))))
    predictor = load_predictor(ModelSpec(), encode_batch_size=images)
    print("ready", flush=True)
    for n, _ in enumerate(sys.stdin):
        store = FeatureStore(str(work / f"store{n}"))
        t = time.process_time()
        datas = [read_bytes(i.uri) for i in items]
        shas = [hashlib.sha256(d).hexdigest() for d in datas]
        pictures = [decode_image(d) for d in datas]
        t, read = time.process_time(), time.process_time() - t
        features = predictor.encode(pictures, stage=fmt.stage)
        t, encode = time.process_time(), time.process_time() - t
        for f, sha in zip(features, shas):
            store.put(f, sha, dtype=fmt.dtype, compress=fmt.codec)
        put = time.process_time() - t
        ms = {"read+decode": read, "encode": encode, "put": put}
        print(json.dumps({k: v / len(items) * 1000 for k, v in ms.items()}), flush=True)


def start(root: str, images: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=root)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "--images", str(images)],
                            cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    while (line := proc.stdout.readline()) and line.strip() != "ready":  # type: ignore[union-attr]
        pass
    if not line:
        raise SystemExit(f"the worker in {root} did not start")
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", nargs="?")
    parser.add_argument("after", nargs="?")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--images", type=int, default=8, help="images per chunk")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.images)
        return 0
    procs = {"before": start(args.before, args.images), "after": start(args.after, args.images)}
    rows: dict[str, list[dict]] = {name: [] for name in procs}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            procs[name].stdin.write("go\n")  # type: ignore[union-attr]
            procs[name].stdin.flush()  # type: ignore[union-attr]
            rows[name].append(json.loads(procs[name].stdout.readline()))  # type: ignore[union-attr]
    for proc in procs.values():
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=60)
    report(rows)
    return 0


def report(rows: dict[str, list[dict]]) -> None:
    kept = {name: r[1:] for name, r in rows.items()}  # round 0 warms up
    for name, r in kept.items():
        med = {k: round(statistics.median(x[k] for x in r), 1) for k in r[0]}
        print(f"{name}: CPU ms/image, median of {len(r)} chunks {med}")
    for stage in ("encode", None):
        ratios = [(a[stage] / b[stage]) if stage else sum(a.values()) / sum(b.values())
                  for a, b in zip(kept["after"], kept["before"])]
        print(f"after/before, {stage or 'total'}: median {statistics.median(ratios):.3f}, "
              f"quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
