"""The control plane of the bulk jobs at 10^4 .. 10^6 images: listing, the "nothing to do"
re-run, a 1%-new incremental run. Time and peak driver RSS, no encoder work where none
is due.

    .venv/bin/python bench/control_plane.py listing --sizes 10000,100000,1000000
    .venv/bin/python bench/control_plane.py s3-listing --sizes 100000
    .venv/bin/python bench/control_plane.py noop --sizes 100000,1000000
    .venv/bin/python bench/control_plane.py incremental --sizes 10000 --new-fraction 0.01

Sources are folders of N tiny files under --workdir (1000 per sub-folder, kept between
runs): their bytes are never read on a no-op run, only listed. The store's manifest is
synthesised from the listing (one ok row per file, in parts of --part-rows rows, as
compaction leaves it) so a run over 10^6 "already encoded" images needs no encoding.
`incremental` adds N x fraction real PNGs (64 x 48) and runs the real encode job: it
starts Ray and encodes exactly the new images.

Every measurement runs in a fresh child process; the peak RSS reported is that child's
(current RSS sampled every 20 ms during the job: the driver, which is where per-image
state would pile up; Ray's own processes are not counted); `job_rss_mb` is that peak
minus the RSS after the model build. `model_s` is the driver's one-off model build (the model id
keys the manifest), reported apart because it does not grow with N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

PER_DIR = 1000


# --------------------------------------------------------------------------- fixtures
def tiny_folder(workdir: Path, n: int) -> Path:
    """n empty `.png` files in folders of 1000 (made once; a marker says it is whole)."""
    root = workdir / f"files-{n}"
    if (root / ".complete").exists():
        return root
    for d in range(0, n, PER_DIR):
        sub = root / f"d{d // PER_DIR:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(d, min(n, d + PER_DIR)):
            (sub / f"img{i:07d}.png").touch()
    (root / ".complete").touch()
    return root


def synth_manifest(folder: Path, store: Path, model_id: str, part_rows: int) -> int:
    """An ok manifest row for every file of `folder` (as the listing sees it)."""
    import hashlib

    import pyarrow as pa

    from pipeline.sources import list_source
    from store import Manifest, open_store

    manifest = Manifest(open_store(str(store)), model_id)
    batch: list[dict] = []
    written = 0
    for item in list_source(str(folder)):
        sha = hashlib.sha256(item.uri.encode()).hexdigest()
        batch.append({"uri": item.uri, "size": item.size, "etag": item.etag_or_mtime, "sha256": sha, "width": 64,
                      "height": 48, "feature_key": f"{model_id}/features/{sha[:2]}/{sha}.safetensors",
                      "bytes": 1 << 20, "status": "ok"})
        if len(batch) == part_rows:
            manifest.write(pa.Table.from_pylist(batch), run_id="synth")
            written += len(batch)
            batch = []
    if batch:
        manifest.write(pa.Table.from_pylist(batch), run_id="synth")
        written += len(batch)
    return written


def add_new_images(folder: Path, count: int) -> None:
    """`count` real, distinct 64 x 48 PNGs in a new sub-folder (a grown bucket)."""
    import numpy as np
    from PIL import Image

    sub = folder / "new"
    sub.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(sub / f"new{i:06d}.png")


# --------------------------------------------------------------------------- children
def _peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries the parent's peak
    into an exec'd child (the S3 bench's parent holds moto's 10^5 keys)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process so far: on a shared machine, wall time follows the
    load; CPU time hardly does."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_listing(src: str, endpoint_url: str | None) -> dict:
    from pipeline.sources import list_source

    rss0 = _peak_rss_mb()
    start, cpu0 = time.perf_counter(), _cpu_s()
    n = sum(1 for _ in list_source(src, endpoint_url=endpoint_url))
    seconds = time.perf_counter() - start
    return {"keys": n, "seconds": seconds, "cpu_s": _cpu_s() - cpu0, "keys_per_s": n / seconds,
            "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": rss0}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class RssSampler:
    """Peak current RSS of this process while running (sampled every 20 ms): unlike
    ru_maxrss it does not carry the model build's transient peak into the job's figure."""

    def __init__(self) -> None:
        import threading

        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def child_encode(src: str, store: str) -> dict:
    import gc

    from pipeline.jobs import EncodeOptions, encode_job
    from pipeline.stages import ModelSpec, load_predictor

    start = time.perf_counter()
    load_predictor(ModelSpec(device="cpu"))  # built once; encode_job reuses it
    model_s = time.perf_counter() - start
    gc.collect()
    rss_model, cpu0 = _rss_mb(), _cpu_s()
    with RssSampler() as rss:
        summary = encode_job(src, store, EncodeOptions(progress=False, pool=(1, 1)))
    total = time.perf_counter() - start
    return {"seconds": total - model_s, "cpu_s": _cpu_s() - cpu0, "model_s": model_s, "peak_rss_mb": rss.peak,
            "rss_after_model_mb": rss_model,
            "job_rss_mb": rss.peak - rss_model, "summary": summary.as_dict()}


def run_child(kind: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "_child", kind, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} {args} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parts
def bench_listing(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.sizes:
        folder = tiny_folder(args.workdir, n)
        r = run_child("listing", str(folder))
        rows.append({"what": "local listing", "n": n, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def fill_moto_bucket(bucket: str, n: int) -> None:
    """n empty objects, written straight into the in-process moto server's backend.

    Filling is not what is measured, and 10^5 PUTs over HTTP ran at ~20/s on a loaded
    machine (over an hour); the listing itself goes over HTTP from a child process.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i in range(n):
        backend.put_object(bucket, f"p/d{i // PER_DIR:05d}/img{i:07d}.png", b"")


def bench_s3_listing(args: argparse.Namespace) -> list[dict]:
    from moto.server import ThreadedMotoServer

    import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    rows = []
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        client = storage.s3_client(endpoint)  # boto3 through the storage layer, its only importer
        for n in args.sizes:
            bucket = f"listing-{n}"
            client.create_bucket(Bucket=bucket)
            fill_moto_bucket(bucket, n)
            r = run_child("listing", f"s3://{bucket}/p", endpoint)
            rows.append({"what": "S3 listing (moto)", "n": n, **r})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def _model_id() -> str:
    from pipeline.stages import ModelSpec, load_predictor

    return load_predictor(ModelSpec(device="cpu")).model_id


def fresh_synthetic_store(folder: Path, store: Path, model_id: str, part_rows: int) -> None:
    """Replace `store` by a synthesised one that holds every image of `folder`."""
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    synth_manifest(folder, store, model_id, part_rows)


def bench_noop(args: argparse.Namespace) -> list[dict]:
    rows = []
    model_id = _model_id()
    for n in args.sizes:
        folder = tiny_folder(args.workdir, n)
        store = args.workdir / f"store-{n}"
        if not (store / ".synthesised").exists():  # a no-op run leaves the store as it was
            fresh_synthetic_store(folder, store, model_id, args.part_rows)
            (store / ".synthesised").touch()
        r = run_child("encode", str(folder), str(store))
        assert r["summary"]["skipped"] == n and r["summary"]["encoded"] == 0, r["summary"]
        rows.append({"what": "no-op re-run", "n": n, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _incremental_run(base: Path, workdir: Path, n: int, new: int, model_id: str, part_rows: int) -> dict:
    """One encode job over `base` (n images, all in a synthesised store) plus `new` new ones,
    which are removed again afterwards (copying a 10^6-file folder would take longer than
    the run)."""
    import shutil

    store = workdir / f"store-grown-{n}"
    shutil.rmtree(base / "new", ignore_errors=True)
    fresh_synthetic_store(base, store, model_id, part_rows)
    add_new_images(base, new)
    try:
        r = run_child("encode", str(base), str(store))
    finally:
        shutil.rmtree(base / "new", ignore_errors=True)
    s = r["summary"]
    assert s["encoded"] == new and s["skipped"] == n, s
    return r


def bench_incremental(args: argparse.Namespace) -> list[dict]:
    """A 1%-new run against a full run's cost, both from this run's own measurements.

    A full run pays this run's fixed cost (Ray and actor start-up, listing, manifest) plus
    every image at the marginal encode cost. The marginal cost is measured here, in the same
    conditions: the same job with `--pair-factor` times as many new images, the difference
    divided by the extra images (sizes above --pair-max reuse the last measured one: pairing
    10^6 would encode 3 x 10^4 images). --full-ips gives the ratio at an assumed steady rate
    too, as the first version of this bench did."""
    rows, marginal_s = [], None
    model_id = _model_id()
    for n in args.sizes:
        base = tiny_folder(args.workdir, n)
        new = max(1, int(n * args.new_fraction))
        r = _incremental_run(base, args.workdir, n, new, model_id, args.part_rows)
        pair = None
        if n <= args.pair_max:
            more = new * args.pair_factor
            pair = _incremental_run(base, args.workdir, n, more, model_id, args.part_rows)
            marginal_s = (pair["seconds"] - r["seconds"]) / (more - new)
        fixed_s = r["seconds"] - new * marginal_s
        full = fixed_s + (n + new) * marginal_s
        full_assumed = r["seconds"] + n / args.full_ips
        rows.append({"what": f"incremental, {new} new", "n": n, "new": new,
                     "pair_seconds": None if pair is None else pair["seconds"], "pair_new": new * args.pair_factor,
                     "marginal_s_per_image": marginal_s, "fixed_s": fixed_s, "full_run_s_modelled": full,
                     "ratio_to_full": r["seconds"] / full, "full_ips_assumed": args.full_ips,
                     "ratio_at_assumed_ips": r["seconds"] / full_assumed, **r})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        kind, rest = argv[1], argv[2:]
        result = child_listing(rest[0], rest[1] if len(rest) > 1 else None) if kind == "listing" else \
            child_encode(*rest)
        print(json.dumps(result, default=str))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("listing", "s3-listing", "noop", "incremental"))
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seem-control-plane"))
    parser.add_argument("--part-rows", type=int, default=100_000, help="rows per synthesised manifest part")
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--full-ips", type=float, default=20.0,
                        help="steady images/s of a full encode run (seem-tiny's loop on a quiet 2-core machine, "
                             "docs/benchmarks.md 'Bulk pipeline')")
    parser.add_argument("--pair-factor", type=int, default=3,
                        help="the marginal-cost run encodes this many times the new images")
    parser.add_argument("--pair-max", type=int, default=100_000, help="largest size that runs its own pair")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench = {"listing": bench_listing, "s3-listing": bench_s3_listing, "noop": bench_noop,
             "incremental": bench_incremental}[args.part]
    rows = bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
