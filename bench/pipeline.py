"""Bulk pipeline: Ray Data encode job vs a plain single-process loop; peak memory vs corpus size.

    .venv/bin/python bench/pipeline.py                        # defaults below, ~5 minutes on 2 cores
    .venv/bin/python bench/pipeline.py --sizes 48,192 --rounds 2 --json out.json

Corpus: Shapes World scenes of the held-out test split (128..320 px a side), written as
PNG files once into --workdir.

Throughput (one run, interleaved to share the machine's state fairly): the same images,
the same model (seem-tiny, whatever weights it has), the same stored format, into a fresh
feature store each time:
- loop:  for each image: read bytes, sha256, decode, `predictor.encode`, `FeatureStore.put`,
         in one process, in batches of --batch-size; once with torch's default threads and
         once with 1 (on a machine shared with other jobs, multi-threaded torch can lose
         badly to contention); the faster of the two in each round is the baseline;
- ray:   `pipeline.jobs.encode_job` on a local Ray (started once, before timing) with ONE
         encoder actor; decode in CPU tasks (or --decode-in actor).
Reported: images/s of each and ray/loop, for the whole job (listing, actor start-up and
model load included) and for the steady state (first finished batch to last, i.e.
without the one-off actor start-up that a long job amortises).

CPU: CPU seconds per image summed over every process involved (loop: the process; ray:
driver + GCS + raylet + workers, from /proc), which shows Ray's overhead in work and,
unlike wall time, hardly depends on what else runs on the machine.

Memory: peak RSS summed over the driver and every Ray process (GCS, raylet, workers),
sampled every 0.2 s from /proc, during an encode job and a segment job (one text prompt,
so one mask per image) at each corpus size; the goal is that it does not grow with the
corpus (images stream through; only small metadata rows accumulate).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tests.support import descendants  # noqa: E402


# --------------------------------------------------------------------------- corpus
def make_corpus(root: Path, n: int) -> Path:
    """n Shapes World scenes as PNG under root/n<n>/ (reused when already there)."""
    from PIL import Image

    from training.shapes_world import generate_scene, split_seeds

    folder = root / f"n{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(split_seeds("test", n, start=1000)):
        buf = io.BytesIO()
        Image.fromarray(generate_scene(seed).image).save(buf, "PNG")
        (folder / f"scene{i:05d}.png").write_bytes(buf.getvalue())
    done.write_text("ok")
    return folder


# --------------------------------------------------------------------------- memory
def _rss_and_cpu(pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds so far) of one process; zeros when it is gone."""
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return rss, cpu
    except (OSError, IndexError, ValueError):
        return 0, 0.0


class ProcSampler:
    """While active, every `interval` s: the summed RSS of this process and all its
    descendants (Ray's GCS, raylet, workers) -> peak_total, the largest single process ->
    peak_worker, and the CPU seconds all of them spend -> cpu_s (processes that start
    meanwhile count from zero; ones present at the start from their value then)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_worker = 0
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, initial: bool = False) -> None:
        me = os.getpid()
        total = 0
        for pid in [me] + descendants(me):
            rss, cpu = _rss_and_cpu(pid)
            if rss == 0:
                continue
            total += rss
            if pid != me:
                self.peak_worker = max(self.peak_worker, rss)
            self._first.setdefault(pid, cpu if initial else 0.0)
            self._last[pid] = cpu
        self.peak_total = max(self.peak_total, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def cpu_s(self) -> float:
        return sum(self._last[p] - self._first[p] for p in self._last)

    def __enter__(self) -> "ProcSampler":
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------- runs
def run_loop(src: Path, store_dir: Path, batch_size: int, fmt, threads: int | None = None) -> dict:
    """The plain loop: no Ray, one process; `threads` torch threads (None: torch's default)."""
    import torch

    from model.image_io import decode_image
    from pipeline.sources import list_source, read_bytes
    from pipeline.stages import ModelSpec, load_predictor
    from store import FeatureStore

    torch.set_num_threads(threads or DEFAULT_THREADS)
    cpu0 = time.process_time()
    started = time.perf_counter()
    predictor = load_predictor(ModelSpec(), encode_batch_size=batch_size)
    store = FeatureStore(str(store_dir))
    items = list(list_source(str(src)))
    first_batch = None
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        datas = [read_bytes(i.uri) for i in chunk]
        shas = [hashlib.sha256(d).hexdigest() for d in datas]
        images = [decode_image(d) for d in datas]
        for f, sha in zip(predictor.encode(images, stage=fmt.stage), shas):
            store.put(f, sha, dtype=fmt.dtype, compress=fmt.codec)
        if first_batch is None:
            first_batch = (time.perf_counter(), len(chunk))
    end = time.perf_counter()
    out = _rates(len(items), started, end, first_batch)
    out["cpu_s_per_image"] = (time.process_time() - cpu0) / len(items)
    return out


DEFAULT_THREADS = 1  # replaced in main() by torch's default for this machine


def run_ray(src: Path, store_dir: Path, batch_size: int, decode_in: str, torch_threads: int | None) -> dict:
    from pipeline import jobs

    stamps: list[tuple[float, int]] = []
    original = jobs._run_encoder

    def timed(*args, **kwargs):  # records when each result batch reaches the driver
        for table in original(*args, **kwargs):
            stamps.append((time.perf_counter(), table.num_rows))
            yield table

    jobs._run_encoder = timed
    try:
        with ProcSampler() as procs:
            started = time.perf_counter()
            summary = jobs.encode_job(str(src), str(store_dir), jobs.EncodeOptions(
                progress=False, batch_size=batch_size, pool=(1, 1), decode_in=decode_in, torch_threads=torch_threads))
            end = time.perf_counter()
    finally:
        jobs._run_encoder = original
    assert summary.encoded == summary.listed, summary
    out = _rates(summary.listed, started, end, stamps[0] if stamps else None)
    out["cpu_s_per_image"] = procs.cpu_s / summary.listed
    return out


def _rates(n: int, started: float, end: float, first: tuple[float, int] | None) -> dict:
    out = {"images": n, "seconds": end - started, "ips": n / (end - started)}
    if first is not None and n > first[1] and end > first[0]:
        out["steady_ips"] = (n - first[1]) / (end - first[0])
    return out


def run_memory(src: Path, work: Path, batch_size: int) -> dict:
    from pipeline import jobs

    store, out = work / "store-mem", work / "out-mem"
    shutil.rmtree(store, ignore_errors=True)
    opts = jobs.EncodeOptions(progress=False, batch_size=batch_size, pool=(1, 1))
    with ProcSampler() as enc:
        jobs.encode_job(str(src), str(store), opts)
    with ProcSampler() as seg:
        s = jobs.segment_job(str(src), str(out), str(store), jobs.SegmentOptions(texts=("circle",)), opts)
    return {"encode_peak_total_mb": enc.peak_total / 2**20, "encode_peak_worker_mb": enc.peak_worker / 2**20,
            "segment_peak_total_mb": seg.peak_total / 2**20, "segment_peak_worker_mb": seg.peak_worker / 2**20,
            "masks": s.masks}


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except Exception:
        model = platform.processor() or platform.machine()
    load = os.getloadavg()
    return {"cpu": model, "cores": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load],
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.decode_in.split(",")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    import ray
    import torch

    from pipeline.stages import DEFAULT_FEATURE_FORMAT, ModelSpec, load_predictor

    global DEFAULT_THREADS
    DEFAULT_THREADS = torch.get_num_threads()
    loops = {f"loop-{t}": (None if t == "default" else int(t)) for t in args.loop_threads.split(",")}
    info = machine()
    corpora = {n: make_corpus(work, n) for n in sizes}
    from rayinit import start_or_join

    # Always a new local Ray (a bare ray.init() would join one `ray start` left behind).
    start_or_join("local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    model_id = load_predictor(ModelSpec()).model_id
    print(f"{info['cpu']}, {info['cores']} cores, load {info['loadavg_at_start']}; model {model_id}; "
          f"torch {torch.__version__} (default {DEFAULT_THREADS} threads); batch {args.batch_size}", flush=True)

    big = corpora[max(sizes)]
    # Warm-up (not timed): imports and first-call allocations in both paths.
    for name in ("warm-loop", "warm-ray"):
        shutil.rmtree(work / name, ignore_errors=True)
    run_loop(corpora[min(sizes)], work / "warm-loop", args.batch_size, DEFAULT_FEATURE_FORMAT, None)
    run_ray(corpora[min(sizes)], work / "warm-ray", args.batch_size, variants[0], args.torch_threads)
    rounds = _timed_rounds(big, work, loops, variants, args)
    ratios = _ratios(rounds, variants, max(sizes))
    memory = {n: _memory_row(corpora[n], n, work, args.batch_size) for n in sizes}
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "model_id": model_id, "batch_size": args.batch_size,
                                               "rounds": rounds, "ratios": ratios, "memory": memory,
                                               "format": dataclasses.asdict(DEFAULT_FEATURE_FORMAT)}, indent=2))
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="48,192", help="two corpus sizes: throughput on the larger, memory on both")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved loop/ray rounds for the ratio")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decode-in", default="actor,tasks", help="Ray variants to time: actor, tasks or both")
    parser.add_argument("--torch-threads", type=int, help="torch threads of the encoder actor (default: the job's)")
    parser.add_argument("--loop-threads", default="default,1",
                        help="torch threads of the loop variants ('default' = torch's own choice); ratios use the "
                             "fastest loop of each round")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "seem-bench-pipeline"))
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


def _timed_rounds(big: Path, work: Path, loops: dict[str, int | None], variants: list[str],
                  args: argparse.Namespace) -> list[dict]:
    """Interleaved rounds of every loop and Ray variant on the larger corpus; each round's
    fastest plain loop is its baseline ("loop")."""
    from pipeline.stages import DEFAULT_FEATURE_FORMAT

    rounds: list[dict] = []
    for r in range(args.rounds):
        entry: dict = {}
        for name in list(loops) + [f"ray-{v}" for v in variants]:
            store = work / f"store-{name}"
            shutil.rmtree(store, ignore_errors=True)
            if name in loops:
                entry[name] = run_loop(big, store, args.batch_size, DEFAULT_FEATURE_FORMAT, loops[name])
            else:
                entry[name] = run_ray(big, store, args.batch_size, name.split("-", 1)[1], args.torch_threads)
            print(f"round {r + 1} {name:<12} {entry[name]['ips']:6.2f} img/s whole job, "
                  f"{entry[name].get('steady_ips', float('nan')):6.2f} steady, "
                  f"{entry[name]['cpu_s_per_image'] * 1e3:6.0f} CPU ms/image (all processes)", flush=True)
        best = max(loops, key=lambda n: entry[n]["ips"])
        entry["loop"] = dict(entry[best], variant=best)  # the fastest plain loop is the baseline
        rounds.append(entry)
    return rounds


def _ratios(rounds: list[dict], variants: list[str], images: int) -> dict[str, dict]:
    """Ray / loop throughput per variant, whole job and steady state, median over the rounds."""
    ratios = {}
    for v in variants:
        whole = [e[f"ray-{v}"]["ips"] / e["loop"]["ips"] for e in rounds]
        steady = [e[f"ray-{v}"]["steady_ips"] / e["loop"]["steady_ips"] for e in rounds
                  if "steady_ips" in e[f"ray-{v}"] and "steady_ips" in e["loop"]]
        ratios[v] = {"whole_job": statistics.median(whole), "steady": statistics.median(steady) if steady else None}
        print(f"ray ({v}) / loop, {images} images, median of {len(rounds)}: whole job {ratios[v]['whole_job']:.2f}, "
              f"steady state {ratios[v]['steady'] if ratios[v]['steady'] is None else round(ratios[v]['steady'], 2)}")
    return ratios


def _memory_row(corpus: Path, n: int, work: Path, batch_size: int) -> dict:
    """Peak RSS of an encode and a segment job on `corpus` (n images), printed."""
    m = run_memory(corpus, work, batch_size)
    print(f"peak RSS, {n:>5} images: encode {m['encode_peak_total_mb']:7.0f} MB all processes "
          f"({m['encode_peak_worker_mb']:5.0f} MB largest worker); segment {m['segment_peak_total_mb']:7.0f} MB "
          f"({m['segment_peak_worker_mb']:5.0f} MB largest worker; {m['masks']} masks)", flush=True)
    return m


if __name__ == "__main__":
    raise SystemExit(main())
