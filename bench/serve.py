"""Serving benchmark: what HTTP + Ray Serve add to a decode, and the feature-cache hit rate.

    .venv/bin/python bench/serve.py                    # both parts, prints Markdown tables
    .venv/bin/python bench/serve.py --json out/serve.json

1. Latency, side by side in one run (the three interleaved, request by request):
   (a) in process: the same predictor (same weights, same torch thread count as a decoder
       replica) answers the same one-click request on the same cached features — read back
       from the store in the dtype the decoder caches — through the code a replica runs
       (`serving.inference.segment`: prompt conversion, decode, RLE);
   (b) `GET /healthz` through the same proxy: Serve's own one-hop round trip (proxy ->
       the ingress replica -> back, no work);
   (c) the one-click `POST /v1/segment` with its `Serve-Multiplexed-Model-Id` header, as
       the web page and examples/client.py send it.
   "Added" = p50(c) - p50(a), against the goal p50(b) + 3 ms (issue 17). The replica
   reports its own times in `timings_ms`, which split the added time. With
   `--direct-ingress`, Ray Serve's experimental direct ingress is switched on
   (`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`: the ingress replica serves HTTP on its own port,
   bypassing the proxy and so serving.proxy_guard) and the same requests also go to the
   replica's port.
2. Hit rate. With exactly 2 decoder replicas, each with an LRU of `--cache-size` images,
   `--images` images are uploaded and then `--hit-requests` segment requests go to random
   images from `--concurrency` clients: with the routing header, and without it (since
   issue 17 serving.proxy_guard derives it from the body; before, the ingress routed by
   image id). Hits and misses are the decoder's
   own counters (`ray_seem_feature_cache_*`), read from GET /metrics before and after.
   With more images than one LRU holds but fewer than two, routing decides the outcome:
   each replica needs to hold only its share.
3. Throughput vs decoder replicas. For each count in `--replica-counts` (fixed, not
   autoscaled), `--images` images are uploaded and each is asked once (every cache warm),
   then `--throughput-requests` one-click requests to random images come from
   `--throughput-concurrency` clients: requests per second and client latency. On a
   machine with few cores the replicas share them with the proxy, the ingress and the
   clients, so the scaling shown is what this machine allows, not Serve's limit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from typing import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tests.support import free_port, png_bytes  # noqa: E402

API_KEY = "bench-key"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class App:
    """The seem-ray application on this machine's Ray, redeployed per configuration."""

    def __init__(self, store: str, metrics_port: int) -> None:
        from ray import serve

        from serving.proxy_guard import CALLBACK_ENV, CALLBACK_PATH

        self.port = free_port()
        self.metrics_port = metrics_port
        os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)  # the proxy runs serving.proxy_guard, as `seem serve` sets up
        from serving import cli

        for name, value in getattr(cli, "SERVE_LATENCY_ENV", {}).items():  # and Serve's settings (none before)
            os.environ.setdefault(name, value)
        from rayinit import start_or_join

        # Always a new local Ray (a bare ray.init() would join one `ray start` left behind),
        # started again if the machine misses Ray's start-up window.
        start_or_join("local", local_options={"num_cpus": os.cpu_count(), "object_store_memory": 512 << 20,
                                              "_metrics_export_port": metrics_port,
                                              "_system_config": {"metrics_report_interval_ms": 1000}},
                      include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.store = store
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = self.new_session()

    def deploy(self, *, replicas: int, cache_size: int) -> None:
        from ray import serve

        from serving.app import APP_NAME, build_app

        from serving.config import ServeConfig

        serve.delete(APP_NAME)  # fresh replicas: empty caches
        # The deployment that transcribes audio: `speech` since issue 17, `ingress` before (so the
        # same command runs on a checkout from before, for before/after figures).
        side = "speech" if "speech" in ServeConfig.model_fields else "ingress"
        app = build_app({
            "store": self.store,
            "api_keys": [API_KEY],
            "autoscaling": {"min_replicas": replicas, "max_replicas": replicas, "initial_replicas": replicas},
            "decoder": {"num_cpus": 0.25, "cache_size": cache_size},
            "encoder": {"num_cpus": 0.25},
            side: {"num_cpus": 0.25},
        })
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        deadline = time.monotonic() + 300
        while True:
            status = serve.status().applications[APP_NAME].deployments["Decoder"].replica_states
            if status.get("RUNNING", 0) == replicas:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"decoder replicas did not start: {status}")
            time.sleep(0.5)

    @staticmethod
    def new_session() -> requests.Session:
        """A keep-alive client with the API key (one per concurrent client)."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {API_KEY}"
        return session

    def upload(self, data: bytes) -> str:
        r = self.session.post(self.base + "/v1/images", data=data, headers={"Content-Type": "image/png"}, timeout=120)
        r.raise_for_status()
        return r.json()["image_id"]

    def upload_scene(self, seed: int) -> dict:
        """Uploads Shapes World scene `seed`; returns a one-click segment request on its first thing."""
        from training.shapes_world import generate_scene

        scene = generate_scene(seed)
        image_id = self.upload(png_bytes(scene.image))
        ys, xs = np.nonzero(scene.mask(scene.things[0].id))
        return {"image_id": image_id, "prompts": [{"type": "point", "xy": [float(xs[len(xs) // 2]),
                                                                          float(ys[len(ys) // 2])]}]}

    def segment(self, body: dict, session: requests.Session | None = None, routed: bool = True) -> dict:
        """POST /v1/segment; `routed`: with the routing header, as the web page sends it."""
        headers = {"Serve-Multiplexed-Model-Id": body["image_id"]} if routed else {}
        r = (session or self.session).post(self.base + "/v1/segment", json=body, headers=headers, timeout=120)
        r.raise_for_status()
        return r.json()

    def cache_counts(self) -> tuple[float, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.session.get(self.base + "/metrics", timeout=60).text
        hits = misses = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "ray_seem_feature_cache_hits_total":
                    hits += s.value
                elif s.name == "ray_seem_feature_cache_misses_total":
                    misses += s.value
        return hits, misses

    def settled_counts(self, expected_total: float, timeout_s: float = 60) -> tuple[float, float]:
        """Counters once they account for `expected_total` lookups (export lags ~1-2 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits, misses = self.cache_counts()
            if hits + misses >= expected_total or time.monotonic() > deadline:
                return hits, misses
            time.sleep(1)

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def in_process(app: App, body: dict, replica: dict, warmup: int) -> Callable[[], float]:
    """(a): a function that answers `body` in this process as a replica would; returns ms."""
    import torch

    from model.loading import ModelSpec, load_predictor
    from serving.inference import segment, warm_up
    from serving.schemas import SegmentRequest
    from store import FeatureStore

    torch.set_num_threads(replica["torch_threads"])
    predictor = load_predictor(ModelSpec("seem-tiny", "default"))
    warm_up(predictor)
    assert predictor.model_id == replica["model_id"], "bench and replica must run the same model"
    features = FeatureStore(app.store).get(predictor.model_id, body["image_id"], dtype=None)  # as the decoder caches it
    request = SegmentRequest.model_validate(body)

    def once() -> float:
        t0 = time.perf_counter()
        segment(predictor, features, request, {})
        return (time.perf_counter() - t0) * 1000

    for _ in range(warmup):
        once()
    return once


def latency(app: App, args: argparse.Namespace) -> dict:
    app.deploy(replicas=1, cache_size=8)
    replica = app_info()
    body = app.upload_scene(2024)
    local_once = in_process(app, body, replica, args.warmup)
    health = app.base + "/healthz"
    direct_url = f"http://127.0.0.1:{args.direct_port}/v1/segment" if args.direct_ingress else None
    for _ in range(args.warmup):
        app.segment(body)
        app.session.get(health, timeout=60).raise_for_status()
        if direct_url:
            app.session.post(direct_url, json=body, timeout=120).raise_for_status()
    local, healthz, client, total, call, inside, decode, direct = [], [], [], [], [], [], [], []
    for _ in range(args.requests):  # (a), (b), (c) interleaved: the machine's load hits all three alike
        local.append(local_once())
        t0 = time.perf_counter()
        app.session.get(health, timeout=60).raise_for_status()
        healthz.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        answer = app.segment(body)
        client.append((time.perf_counter() - t0) * 1000)
        t = answer["timings_ms"]
        total.append(t["total"])
        call.append(t["decoder_call"])
        inside.append(t["decoder"])
        decode.append(t["decode"] + t["rle"])
        if direct_url:  # the same request straight to the ingress replica's own port
            t0 = time.perf_counter()
            app.session.post(direct_url, json=body, timeout=120).raise_for_status()
            direct.append((time.perf_counter() - t0) * 1000)
    out = {
        "requests": args.requests, "torch_threads": replica["torch_threads"],
        "in_process_p50_ms": pct(local, 50), "in_process_p95_ms": pct(local, 95),
        "healthz_p50_ms": pct(healthz, 50), "healthz_p95_ms": pct(healthz, 95),
        "http_p50_ms": pct(client, 50), "http_p95_ms": pct(client, 95),
        "added_p50_ms": pct(client, 50) - pct(local, 50),
        "goal_p50_ms": pct(healthz, 50) + 3.0,
        "replica_decode_p50_ms": pct(decode, 50),
        # Where the added time goes (differences of medians, so only roughly additive):
        "proxy_and_http_p50_ms": pct(client, 50) - pct(total, 50),
        "api_own_p50_ms": pct(total, 50) - pct(call, 50),
        "hops_after_the_api_p50_ms": pct(call, 50) - pct(inside, 50),
        "features_and_thread_hop_p50_ms": pct(inside, 50) - pct(decode, 50),
    }
    out["misrouted"] = app_info().get("misrouted")  # None before issue 17
    if direct:
        out.update(direct_http_p50_ms=pct(direct, 50), direct_http_p95_ms=pct(direct, 95),
                   direct_added_p50_ms=pct(direct, 50) - pct(local, 50))
    return out


def app_info() -> dict:
    from ray import serve

    from serving.app import APP_NAME

    return serve.get_deployment_handle("Decoder", APP_NAME).info.remote().result(timeout_s=60)


def run_clients(app: App, plan: list[dict], clients: int, routed: bool = True) -> tuple[list[float], float]:
    """Sends the segment requests of `plan` from `clients` concurrent keep-alive clients:
    each request's client-side latency (ms) and the wall time of the whole plan (s)."""
    sessions = [app.new_session() for _ in range(clients)]

    def one(k: int) -> float:
        t0 = time.perf_counter()
        app.segment(plan[k], sessions[k % clients], routed)
        return (time.perf_counter() - t0) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(one, range(len(plan))))
    return times, time.perf_counter() - started


#: The hit-rate runs: (label, routing header sent by the client).
HIT_MODES = (("header sent by the client", True), ("no header (the proxy guard derives it)", False))


def hit_rate(app: App, args: argparse.Namespace, mode: tuple[str, bool]) -> dict:
    label, routed = mode
    app.deploy(replicas=2, cache_size=args.cache_size)
    bodies = [app.upload_scene(5000 + i) for i in range(args.images)]
    hits0, misses0 = app.settled_counts(args.images)
    rng = random.Random(7)
    plan = [bodies[rng.randrange(len(bodies))] for _ in range(args.hit_requests)]
    _, elapsed = run_clients(app, plan, args.concurrency, routed)
    hits1, misses1 = app.settled_counts(hits0 + misses0 + args.hit_requests)
    hits, misses = hits1 - hits0, misses1 - misses0
    return {"routing": label, "header": routed, "replicas": 2, "cache_size": args.cache_size, "images": args.images,
            "requests": args.hit_requests, "hits": hits, "misses": misses,
            "hit_rate": hits / max(hits + misses, 1), "req_per_s": args.hit_requests / elapsed}


def throughput(app: App, args: argparse.Namespace, replicas: int) -> dict:
    app.deploy(replicas=replicas, cache_size=args.images)
    threads = app_info()["torch_threads"]
    bodies = [app.upload_scene(7000 + i) for i in range(args.images)]
    for body in bodies:  # every replica's cache holds its images before the clock starts
        app.segment(body)
    rng = random.Random(11)
    plan = [bodies[rng.randrange(len(bodies))] for _ in range(args.throughput_requests)]
    times, elapsed = run_clients(app, plan, args.throughput_concurrency)
    return {"replicas": replicas, "torch_threads": threads, "clients": args.throughput_concurrency,
            "requests": len(plan), "req_per_s": len(plan) / elapsed, "p50_ms": pct(times, 50), "p99_ms": pct(times, 99)}


def main() -> int:
    args = _parse_args()
    app = App(tempfile.mkdtemp(prefix="seem-bench-store-"), free_port())
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} CPUs {platform.processor() or platform.machine()}",
                     "date": time.strftime("%Y-%m-%d"), "command": " ".join(["bench/serve.py"] + sys.argv[1:])}
    try:
        if args.only in (None, "latency"):
            results["latency"] = latency(app, args)
        if args.only in (None, "hits"):
            results["hit_rate"] = [hit_rate(app, args, mode) for mode in HIT_MODES]
        if args.only in (None, "throughput"):
            results["throughput"] = [throughput(app, args, int(n)) for n in args.replica_counts.split(",")]
    finally:
        app.close()

    print(f"\n{results['machine']}, {results['date']}: {results['command']}\n")
    if "latency" in results:
        _print_latency(results["latency"])
    if "hit_rate" in results:
        _print_hit_rate(results["hit_rate"])
    if "throughput" in results:
        _print_throughput(results["throughput"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _parse_args() -> argparse.Namespace:
    """The options, with the environment Ray and Serve read when they start set from them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="sequential requests for the latency part")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--cache-size", type=int, default=10, help="LRU size per decoder replica")
    p.add_argument("--hit-requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--replica-counts", default="1,2", help="decoder replica counts for the throughput part")
    p.add_argument("--throughput-requests", type=int, default=300)
    p.add_argument("--throughput-concurrency", type=int, default=8)
    p.add_argument("--only", choices=["latency", "hits", "throughput"], help="run one part")
    p.add_argument("--direct-ingress", action="store_true",
                   help="latency part: also time requests sent straight to the ingress replica (Serve's experimental "
                        "direct ingress), alternating with the proxy's")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="start Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress kept off: it would bypass "
                        "the proxy and serving.proxy_guard; the router keeps its own loop)")
    p.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for Ray and Serve (read by the controller, proxy and replicas when "
                        "they start); it wins over `seem serve`'s SERVE_LATENCY_ENV, e.g. "
                        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=1 for Serve's default; repeatable")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.throughput_optimized:  # read by Serve's controller, proxy and replicas when they start
        # The router keeps its own loop: this driver calls handles outside an event loop.
        os.environ.update(RAY_SERVE_THROUGHPUT_OPTIMIZED="1", RAY_SERVE_ENABLE_DIRECT_INGRESS="0",
                          RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP="1")
    for item in args.serve_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--serve-env {item!r}: expected NAME=VALUE")
        os.environ[name] = value
    if args.direct_ingress:
        # Read by Serve's controller and replicas when they start, so set before Ray starts.
        # The first ingress replica takes the first free port of the range.
        args.direct_port = free_port()
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(args.direct_port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(args.direct_port + 100)
    return args


def _print_latency(lat: dict) -> None:
    print(f"| one click, {lat['requests']} requests of each kind, interleaved | p50 ms | p95 ms |\n|---|---|---|")
    print(f"| (a) in process, same features, {lat['torch_threads']} torch thread(s) | "
          f"{lat['in_process_p50_ms']:.1f} | {lat['in_process_p95_ms']:.1f} |")
    print(f"| (b) GET /healthz through the same proxy (Serve's one-hop round trip) | "
          f"{lat['healthz_p50_ms']:.1f} | {lat['healthz_p95_ms']:.1f} |")
    print(f"| (c) POST /v1/segment, one click, at the client | {lat['http_p50_ms']:.1f} | {lat['http_p95_ms']:.1f} |")
    verdict = "met" if lat["added_p50_ms"] <= lat["goal_p50_ms"] else "NOT met"
    print(f"| **added = (c) - (a)** vs goal (b) + 3 ms = {lat['goal_p50_ms']:.1f}: {verdict} | "
          f"**{lat['added_p50_ms']:.1f}** | |")
    print(f"| of which proxy + HTTP (client - the API's total) | {lat['proxy_and_http_p50_ms']:.1f} | |")
    print(f"| of which the API: auth, parse, validate, JSON (total - decoder call) | {lat['api_own_p50_ms']:.1f} | |")
    print(f"| of which hops after the API (decoder call - decoder's own time) | "
          f"{lat['hops_after_the_api_p50_ms']:.1f} | |")
    print(f"| of which feature lookup, batching, thread hop in the decoder | "
          f"{lat['features_and_thread_hop_p50_ms']:.1f} | |")
    print(f"| decode + RLE inside the replica | {lat['replica_decode_p50_ms']:.1f} | |")
    print(f"| requests whose routing header named another image (replica's count) | {lat['misrouted']} | |")
    if "direct_http_p50_ms" in lat:
        print(f"| direct ingress: HTTP at the client | {lat['direct_http_p50_ms']:.1f} | {lat['direct_http_p95_ms']:.1f} |")
        print(f"| **added with direct ingress** | **{lat['direct_added_p50_ms']:.1f}** | |")
    print()


def _print_hit_rate(rows: list[dict]) -> None:
    print("| routing | replicas | LRU per replica | images | requests | hits | misses | hit rate | req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for h in rows:
        print(f"| {h['routing']} | {h['replicas']} | {h['cache_size']} | {h['images']} | "
              f"{h['requests']} | {h['hits']:.0f} | {h['misses']:.0f} | {100 * h['hit_rate']:.1f}% | "
              f"{h['req_per_s']:.0f} |")


def _print_throughput(rows: list[dict]) -> None:
    base = rows[0]["req_per_s"]
    print(f"\n| decoder replicas | torch threads each | clients | requests | req/s | vs {rows[0]['replicas']} "
          "| p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|")
    for t in rows:
        print(f"| {t['replicas']} | {t['torch_threads']} | {t['clients']} | {t['requests']} | {t['req_per_s']:.1f} | "
              f"{t['req_per_s'] / base:.2f}x | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
