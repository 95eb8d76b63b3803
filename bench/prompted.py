"""Masks per second for prompt files (`seem segment --prompts`): 10 boxes per image on cached
features, on CPU.

Part 1, the decoder: seem-tiny and seem-focalt-v1 with random weights, one image's stored
features, 10 box targets decoded in one call (what the job's worker does) against one
decode call per box. Labels on (the model's default vocabulary), as in the job.

Part 2, the job: `--images` Shapes World scenes with 10 boxes each as a COCO detection
file, features already in the store; the Ray job (fresh OUT, so nothing comes from the
results cache) against a plain loop over the same images (read features, one decode call
per image, RLE), both with seem-tiny.

    .venv/bin/python bench/prompted.py [--repeats 3] [--images 16] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import Box, Prompts, build_predictor  # noqa: E402
from tests.support import median_ms  # noqa: E402

BOXES = 10


def _boxes(h: int, w: int, rng: np.random.Generator) -> list[Prompts]:
    targets = []
    for _ in range(BOXES):
        x0, y0 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
        x1, y1 = min(w - 1, x0 + rng.uniform(20, w * 0.3)), min(h - 1, y0 + rng.uniform(20, h * 0.3))
        targets.append(Prompts(spatial=(Box(x0, y0, x1, y1),)))
    return targets


def bench_decoder(name: str, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    predictor = build_predictor(name, weights=None, device="cpu")
    rng = np.random.default_rng(0)
    image = (rng.random((512, 683, 3)) * 255).astype(np.uint8)
    features = predictor.encode([image])[0]
    targets = _boxes(512, 683, rng)
    batched = median_ms(lambda: predictor.decode(features, targets, max_masks=1), repeats)
    single = median_ms(lambda: [predictor.decode(features, t, max_masks=1) for t in targets], repeats)
    return {"batched_ms": batched, "per_box_ms": single, "batched_masks_per_s": BOXES / batched * 1000,
            "per_box_masks_per_s": BOXES / single * 1000}


def _detections(root: Path, n: int) -> Path:
    """Shapes World scenes with 10 boxes each (their things' boxes, then random ones)."""
    from training.shapes_world import split_seeds, write_coco

    path = write_coco(root, split_seeds("test", n, start=900), kind="instances")
    doc = json.loads(path.read_text())
    rng = np.random.default_rng(1)
    anns = []
    for img in doc["images"]:
        own = [a for a in doc["annotations"] if a["image_id"] == img["id"]][:BOXES]
        for a in own:
            anns.append({k: a[k] for k in ("image_id", "category_id", "bbox")})
        for _ in range(BOXES - len(own)):
            w, h = rng.uniform(10, img["width"] / 3), rng.uniform(10, img["height"] / 3)
            x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
            anns.append({"image_id": img["id"], "category_id": 1, "bbox": [x, y, w, h]})
    doc["annotations"] = [{**a, "id": i} for i, a in enumerate(anns, start=1)]
    out = root / "detections.json"
    out.write_text(json.dumps(doc))
    return out


def bench_job(n_images: int, threads: int) -> dict[str, float]:
    """The Ray job on a fresh OUT vs a plain loop, both over stored features."""
    from pipeline.jobs import EncodeOptions, encode_job
    from pipeline.prompt_files import parse_prompt_file
    from pipeline.prompt_job import PromptOptions, prompted_segment_job
    from pipeline.stages import ModelSpec, load_predictor
    from model.prompt_json import to_prompts
    from model.rle import encode_mask
    from store.feature_store import FeatureStore

    root = Path(tempfile.mkdtemp(prefix="bench-prompted-"))
    det = _detections(root, n_images)
    store = str(root / "store")
    opts = EncodeOptions(progress=False, batch_size=8, torch_threads=threads)
    enc = encode_job(str(root / "images"), store, opts)
    summary = prompted_segment_job(str(root / "images"), str(root / "out"), store, PromptOptions(prompts=str(det)), opts)
    result = {"images": n_images, "masks": summary.masks, "job_s": summary.seconds,
              "job_pipeline_s": summary.pipeline_seconds, "job_masks_per_s": summary.masks / summary.pipeline_seconds}

    torch.set_num_threads(threads)
    predictor = load_predictor(ModelSpec())
    fstore = FeatureStore(store)
    pfile = parse_prompt_file(det.read_bytes())
    names = {i["id"]: i["file_name"] for i in json.loads(det.read_text())["images"]}
    by_image: dict[str, list] = {}
    for e in pfile.entries:
        by_image.setdefault(names[e.image_id], []).append(e)
    rows = {Path(r["uri"]).name: r for r in fstore.manifest(enc.model_id).read().to_pylist()}
    started, masks = time.perf_counter(), 0
    for name, entries in sorted(by_image.items()):
        features = fstore.get(enc.model_id, rows[name]["sha256"])
        size = tuple(features.original_size)
        targets = [to_prompts(e.prompts, size, {})[0] for e in entries]
        for seg in predictor.decode(features, targets, vocabulary=predictor.default_vocabulary, max_masks=1):
            encode_mask(seg.masks[0].mask)
            masks += 1
    loop_s = time.perf_counter() - started
    result.update(loop_s=loop_s, loop_masks_per_s=masks / loop_s)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {}
    for name in ("seem-tiny", "seem-focalt-v1"):
        r = bench_decoder(name, args.repeats)
        results[name] = r
        print(f"{name:15s} 10 boxes: one call {r['batched_ms']:8.1f} ms ({r['batched_masks_per_s']:6.1f} masks/s) | "
              f"one call per box {r['per_box_ms']:8.1f} ms ({r['per_box_masks_per_s']:6.1f} masks/s) | "
              f"x{r['per_box_ms'] / r['batched_ms']:.2f}")
    if not args.skip_job:
        r = bench_job(args.images, args.threads)
        results["job"] = r
        print(f"job, {r['images']} images x 10 boxes, seem-tiny: Ray job {r['job_masks_per_s']:.1f} masks/s "
              f"({r['job_pipeline_s']:.1f} s pipeline, {r['job_s']:.1f} s with start-up and outputs) | "
              f"plain loop {r['loop_masks_per_s']:.1f} masks/s ({r['loop_s']:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
