"""Video speed and memory: the Python API's frames/s, peak RSS over a long video, bulk vs a loop.

    .venv/bin/python bench/video.py api  [--models seem-tiny,seem-focalt-v1] [--frames 20] [--side 512]
    .venv/bin/python bench/video.py rss  [--frames 100,1000]
    .venv/bin/python bench/video.py bulk [--videos 6] [--frames 16] [--actors 2]

api:  frames/s of a video session on CPU, one object prompted with a box, frames `--side` px
      on the short side fed at that size (seem-tiny's own setting is 256), with the encoder /
      per-frame decode split in wall and in CPU time (run with OMP_NUM_THREADS=1 for one
      thread's CPU ms). Random weights for models without shipped ones.
rss:  peak RSS of a session over N synthetic frames, each N in a fresh process (ru_maxrss
      is a high-water mark): a streamed video must stay flat as N grows.
bulk: the Ray job over local .mp4 files vs a plain loop of `segment_video` over the same
      videos in one process (before and after the job, the model loaded outside the timing):
      videos/s and frames/s.
Each prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def synthetic_frames(n: int, side: int, seed: int = 0):
    """A disc gliding over a fixed noisy background: cheap to make at any length."""
    rng = np.random.default_rng(seed)
    h, w = side, side * 4 // 3
    background = (rng.random((h, w, 3)) * 60 + 80).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    r = side // 8
    for t in range(n):
        cx = r + (t * 3) % (w - 2 * r)
        frame = background.copy()
        frame[(yy - h // 2) ** 2 + (xx - cx) ** 2 < r * r] = (220, 40, 40)
        yield frame


def _predictor(model: str, side: int):
    import torch

    from model import SeemPredictor

    torch.manual_seed(0)
    weights = "default" if model == "seem-tiny" else None
    predictor = SeemPredictor.from_pretrained(model, weights=weights, device="cpu")
    inference = dataclasses.replace(predictor.cfg.inference, resize_shortest_edge=side, resize_max_size=None)
    predictor.cfg = predictor.cfg.replace(inference=inference)
    return predictor


def _box(side: int):
    from model import Box, Prompts

    r = side // 8
    return Prompts(spatial=(Box(0, side // 2 - r, 2 * r, side // 2 + r),))


def bench_api(models: list[str], frames: int, side: int) -> None:
    """Wall and CPU time per frame, encode (`predictor.encode`) vs decode (`session.track`
    given the features). CPU time is the process's: with OMP_NUM_THREADS=1 it is one
    thread's work, which the load of a shared machine changes far less than wall time."""
    import torch

    from model.video import VideoPredictor

    for model in models:
        predictor = _predictor(model, side)
        session = VideoPredictor(predictor).init_session()
        session.add_prompts(0, 1, _box(side))
        wall = {"encode": [], "decode": []}
        cpu = {"encode": [], "decode": []}
        for index, image in enumerate(synthetic_frames(frames + 2, side)):
            w0, c0 = time.perf_counter(), time.process_time()
            features = predictor.encode([image])[0]
            w1, c1 = time.perf_counter(), time.process_time()
            session.track(image, features)
            w2, c2 = time.perf_counter(), time.process_time()
            if index >= 2:  # two warm-up frames
                wall["encode"].append(w1 - w0), wall["decode"].append(w2 - w1)
                cpu["encode"].append(c1 - c0), cpu["decode"].append(c2 - c1)
        seconds = sum(wall["encode"]) + sum(wall["decode"])
        ms = lambda xs: round(1000 * float(np.median(xs)), 1)  # noqa: E731
        print(json.dumps({"bench": "api", "model": model, "side": side, "frames": frames,
                          "frames_per_s": round(frames / seconds, 3),
                          "encode_ms": ms(wall["encode"]), "decode_ms": ms(wall["decode"]),
                          "encode_cpu_ms": ms(cpu["encode"]), "decode_cpu_ms": ms(cpu["decode"]),
                          "frames_per_cpu_s": round(frames / (sum(cpu["encode"]) + sum(cpu["decode"])), 3),
                          "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}), flush=True)


def _rss_child(frames: int, side: int) -> None:
    from model.video import VideoPredictor

    predictor = _predictor("seem-tiny", side)
    session = VideoPredictor(predictor).init_session(synthetic_frames(frames, side))
    session.add_prompts(0, 1, _box(side))
    started = time.perf_counter()
    count = sum(1 for _ in session.propagate())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"bench": "rss", "frames": count, "side": side, "peak_rss_mb": round(peak_mb, 1),
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)


def bench_rss(counts: list[int], side: int) -> None:
    for n in counts:
        subprocess.run([sys.executable, __file__, "_rss", "--frames", str(n), "--side", str(side)], check=True)


def _write_videos(src: Path, videos: int, frames: int) -> list[dict]:
    """`videos` synthetic MP4s in `src`, and a prompt-file line for each (a box on frame 0)."""
    from model.video_io import OverlayWriter

    src.mkdir()
    lines = []
    for i in range(videos):
        with OverlayWriter(str(src / f"v{i}.mp4"), 10.0, (128, 170)) as w:
            for f in synthetic_frames(frames, 128, seed=i):
                w.write(f)
        lines.append({"video": f"v{i}.mp4", "prompts": [{"type": "box", "xyxy": [0, 48, 32, 80]}]})
    return lines


def bench_bulk(videos: int, frames: int, actors: int) -> None:
    from pipeline.stages import ModelSpec, load_predictor
    from pipeline.video import open_source, parse_objects, segment_video
    from pipeline.video_jobs import VideoJobOptions, video_job
    from store.backends import open_store

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "videos"
        lines = _write_videos(src, videos, frames)
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("\n".join(json.dumps(line) for line in lines))
        predictor = load_predictor(ModelSpec())

        def plain_loop(tag: str) -> None:
            started = time.perf_counter()
            for i, line in enumerate(lines):
                with open_source(str(src / line["video"])) as source:
                    segment_video(predictor, source, parse_objects([line]), open_store(f"{tmp}/{tag}/{i}"),
                                  progress=False)
            loop_s = time.perf_counter() - started
            print(json.dumps({"bench": "bulk", "how": f"plain loop ({tag})", "videos": videos,
                              "frames": videos * frames, "videos_per_s": round(videos / loop_s, 3),
                              "frames_per_s": round(videos * frames / loop_s, 2), "load": os.getloadavg()[0]}),
                  flush=True)

        plain_loop("before")  # the loop before and after the Ray job: the load of a shared machine drifts
        import ray

        from rayinit import start_or_join

        start_or_join("local", local_options={"num_cpus": os.cpu_count()}, include_dashboard=False,
                      logging_level="WARNING")
        try:
            started = time.perf_counter()
            summary = video_job(str(src), str(prompts), f"{tmp}/ray", VideoJobOptions(actors=actors, progress=False))
            ray_s = time.perf_counter() - started
        finally:
            ray.shutdown()
        print(json.dumps({"bench": "bulk", "how": f"ray, {actors} actors (actor start and model load included)",
                          "videos": summary.done, "frames": summary.frames,
                          "videos_per_s": round(summary.done / ray_s, 3),
                          "frames_per_s": round(summary.frames / ray_s, 2), "seconds": round(ray_s, 1),
                          "load": os.getloadavg()[0]}), flush=True)
        plain_loop("after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("api", "rss", "bulk", "_rss"))
    parser.add_argument("--models", default="seem-tiny,seem-focalt-v1")
    parser.add_argument("--frames", default=None)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    if args.what == "api":
        bench_api(args.models.split(","), int(args.frames or 20), args.side)
    elif args.what == "rss":
        bench_rss([int(n) for n in (args.frames or "100,1000").split(",")], args.side)
    elif args.what == "_rss":
        _rss_child(int(args.frames), args.side)
    else:
        bench_bulk(args.videos, int(args.frames or 16), args.actors)


if __name__ == "__main__":
    main()
