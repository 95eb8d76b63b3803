"""Serving benchmark: what HTTP + Ray Serve add to a decode, and the feature-cache hit rate.

    .venv/bin/python bench/serve.py                    # both parts, prints Markdown tables
    .venv/bin/python bench/serve.py --json out/serve.json

1. Latency. One image is uploaded; then `--requests` sequential POST /v1/segment (one
   positive click, keep-alive connection) are timed at the client. In this process the
   same predictor (same weights, same torch thread count as a decoder replica) answers
   the same request on the same cached features — the features read back from the store,
   in the dtype the decoder caches — through the code a replica runs
   (`serving.inference.segment`: prompt conversion, decode, RLE). "Added" is the
   difference of the medians: proxy, ingress (auth, parsing, validation), the Ray hops to
   the decoder replica and back, batching and JSON. The ingress and the decoder report
   their own times in `timings_ms`, which splits it. With `--direct-ingress`, Ray Serve's
   experimental direct ingress is switched on (`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`: the
   ingress replica serves HTTP on its own port) and the same requests alternate between the
   proxy's port and the replica's, so the two paths are compared in one run.
2. Hit rate. With exactly 2 decoder replicas, each with an LRU of `--cache-size` images,
   `--images` images are uploaded and then `--hit-requests` segment requests go to random
   images from `--concurrency` clients, once with requests routed by image id (Serve
   model multiplexing) and once without (any replica). Hits and misses are the decoder's
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
        import ray
        from ray import serve

        self.port = free_port()
        self.metrics_port = metrics_port
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 << 20, _metrics_export_port=metrics_port,
                 _system_config={"metrics_report_interval_ms": 1000})
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.store = store
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = self.new_session()

    def deploy(self, *, replicas: int, cache_size: int, route_by_image: bool) -> None:
        from ray import serve

        from serving.app import APP_NAME, build_app

        serve.delete(APP_NAME)  # fresh replicas: empty caches
        app = build_app({
            "store": self.store,
            "api_keys": [API_KEY],
            "autoscaling": {"min_replicas": replicas, "max_replicas": replicas, "initial_replicas": replicas},
            "decoder": {"num_cpus": 0.25, "cache_size": cache_size},
            "encoder": {"num_cpus": 0.25},
            "ingress": {"num_cpus": 0.25},
            "route_by_image": route_by_image,
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

    def segment(self, body: dict, session: requests.Session | None = None) -> dict:
        r = (session or self.session).post(self.base + "/v1/segment", json=body, timeout=120)
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


def latency(app: App, args: argparse.Namespace) -> dict:
    import torch

    from model.loading import ModelSpec, load_predictor
    from serving.inference import segment, warm_up
    from serving.schemas import SegmentRequest
    from store import FeatureStore

    app.deploy(replicas=1, cache_size=8, route_by_image=True)
    replica = app_info()
    body = app.upload_scene(2024)
    image_id = body["image_id"]
    for _ in range(args.warmup):
        app.segment(body)
    client, total, call, inside, decode = [], [], [], [], []
    direct_url = f"http://127.0.0.1:{args.direct_port}/v1/segment" if args.direct_ingress else None
    for _ in range(args.warmup if direct_url else 0):
        app.session.post(direct_url, json=body, timeout=120).raise_for_status()
    direct, direct_total = [], []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        answer = app.segment(body)
        client.append((time.perf_counter() - t0) * 1000)
        t = answer["timings_ms"]
        total.append(t["total"])
        call.append(t["decoder_call"])
        inside.append(t["decoder"])
        decode.append(t["decode"] + t["rle"])
        if direct_url:  # the same request straight to the ingress replica, alternating with the proxy's
            t0 = time.perf_counter()
            r = app.session.post(direct_url, json=body, timeout=120)
            r.raise_for_status()
            direct.append((time.perf_counter() - t0) * 1000)
            direct_total.append(r.json()["timings_ms"]["total"])

    # In process: the same work on the same cached features with the replica's thread count.
    torch.set_num_threads(replica["torch_threads"])
    predictor = load_predictor(ModelSpec("seem-tiny", "default"))
    warm_up(predictor)
    assert predictor.model_id == replica["model_id"], "bench and replica must run the same model"
    features = FeatureStore(app.store).get(predictor.model_id, image_id, dtype=None)  # as the decoder caches it
    request = SegmentRequest.model_validate(body)
    for _ in range(args.warmup):
        segment(predictor, features, request, {})
    local = []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        segment(predictor, features, request, {})
        local.append((time.perf_counter() - t0) * 1000)
    extra = {} if not direct else {
        "direct_http_p50_ms": pct(direct, 50), "direct_http_p99_ms": pct(direct, 99),
        "direct_added_p50_ms": pct(direct, 50) - pct(local, 50),
        "direct_http_outside_ingress_p50_ms": pct(direct, 50) - pct(direct_total, 50),
    }
    return {
        **extra,
        "requests": args.requests,
        "torch_threads": replica["torch_threads"],
        "http_p50_ms": pct(client, 50), "http_p99_ms": pct(client, 99),
        "ingress_total_p50_ms": pct(total, 50),
        "replica_decode_p50_ms": pct(decode, 50),
        "in_process_p50_ms": pct(local, 50), "in_process_p99_ms": pct(local, 99),
        "added_p50_ms": pct(client, 50) - pct(local, 50),
        # Where the added time goes (differences of medians, so only roughly additive):
        "proxy_and_http_p50_ms": pct(client, 50) - pct(total, 50),
        "ingress_own_p50_ms": pct(total, 50) - pct(call, 50),
        "ray_hop_p50_ms": pct(call, 50) - pct(inside, 50),
        "decoder_batch_and_features_p50_ms": pct(inside, 50) - pct(decode, 50),
    }


def serve_floor(app: App, args: argparse.Namespace) -> dict:
    """Ray Serve's own cost on this machine: the same two hops (proxy -> FastAPI ingress ->
    a downstream replica by multiplexed id) with no work and a tiny JSON answer."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Downstream:
        async def answer(self, body: dict) -> dict:
            return {"masks": [], "echo": body}

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    @serve.ingress(api)
    class Front:
        def __init__(self, downstream) -> None:  # noqa: ANN001
            self.downstream = downstream

        # `body: dict` (a builtin): Serve pickles this class by value, and FastAPI must resolve
        # the annotation in the replica. No return annotation for the same reason.
        @api.post("/floor")
        async def floor(self, body: dict):  # noqa: ANN201
            return JSONResponse(await self.downstream.options(multiplexed_model_id="x").answer.remote(body))

    serve.run(Front.bind(Downstream.bind()), name="floor", route_prefix="/floor-app", blocking=False)
    session = requests.Session()
    url = app.base + "/floor-app/floor"
    for _ in range(args.warmup):
        session.post(url, json={"a": 1}, timeout=60).raise_for_status()
    times = []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        session.post(url, json={"a": 1}, timeout=60).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    serve.delete("floor")
    return {"floor_p50_ms": pct(times, 50), "floor_p99_ms": pct(times, 99)}


def app_info() -> dict:
    from ray import serve

    from serving.app import APP_NAME

    return serve.get_deployment_handle("Decoder", APP_NAME).info.remote().result(timeout_s=60)


def run_clients(app: App, plan: list[dict], clients: int) -> tuple[list[float], float]:
    """Sends the segment requests of `plan` from `clients` concurrent keep-alive clients:
    each request's client-side latency (ms) and the wall time of the whole plan (s)."""
    sessions = [app.new_session() for _ in range(clients)]

    def one(k: int) -> float:
        t0 = time.perf_counter()
        app.segment(plan[k], sessions[k % clients])
        return (time.perf_counter() - t0) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(one, range(len(plan))))
    return times, time.perf_counter() - started


def hit_rate(app: App, args: argparse.Namespace, route_by_image: bool) -> dict:
    app.deploy(replicas=2, cache_size=args.cache_size, route_by_image=route_by_image)
    bodies = [app.upload_scene(5000 + i) for i in range(args.images)]
    hits0, misses0 = app.settled_counts(args.images)
    rng = random.Random(7)
    plan = [bodies[rng.randrange(len(bodies))] for _ in range(args.hit_requests)]
    _, elapsed = run_clients(app, plan, args.concurrency)
    hits1, misses1 = app.settled_counts(hits0 + misses0 + args.hit_requests)
    hits, misses = hits1 - hits0, misses1 - misses0
    return {"route_by_image": route_by_image, "replicas": 2, "cache_size": args.cache_size, "images": args.images,
            "requests": args.hit_requests, "hits": hits, "misses": misses,
            "hit_rate": hits / max(hits + misses, 1), "req_per_s": args.hit_requests / elapsed}


def throughput(app: App, args: argparse.Namespace, replicas: int) -> dict:
    app.deploy(replicas=replicas, cache_size=args.images, route_by_image=True)
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
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.direct_ingress:
        # Read by Serve's controller and replicas when they start, so set before Ray starts.
        # The first ingress replica takes the first free port of the range.
        args.direct_port = free_port()
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(args.direct_port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(args.direct_port + 100)

    app = App(tempfile.mkdtemp(prefix="seem-bench-store-"), free_port())
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} CPUs {platform.processor() or platform.machine()}",
                     "date": time.strftime("%Y-%m-%d"), "command": " ".join(["bench/serve.py"] + sys.argv[1:])}
    try:
        if args.only in (None, "latency"):
            results["latency"] = latency(app, args)
            results["latency"].update(serve_floor(app, args))
        if args.only in (None, "hits"):
            results["hit_rate"] = [hit_rate(app, args, True), hit_rate(app, args, False)]
        if args.only in (None, "throughput"):
            results["throughput"] = [throughput(app, args, int(n)) for n in args.replica_counts.split(",")]
    finally:
        app.close()

    print(f"\n{results['machine']}, {results['date']}: {results['command']}\n")
    if "latency" in results:
        lat = results["latency"]
        print(f"| one click, {lat['requests']} sequential requests | p50 ms | p99 ms |\n|---|---|---|")
        print(f"| HTTP at the client | {lat['http_p50_ms']:.1f} | {lat['http_p99_ms']:.1f} |")
        print(f"| in process, same features, {lat['torch_threads']} torch thread(s) | "
              f"{lat['in_process_p50_ms']:.1f} | {lat['in_process_p99_ms']:.1f} |")
        print(f"| **added by HTTP + Serve** | **{lat['added_p50_ms']:.1f}** | |")
        print(f"| of which proxy + HTTP (client - ingress total) | {lat['proxy_and_http_p50_ms']:.1f} | |")
        print(f"| of which ingress: auth, parse, validate, JSON (total - decoder call) | "
              f"{lat['ingress_own_p50_ms']:.1f} | |")
        print(f"| of which Ray hop ingress <-> decoder (call - decoder's own time) | {lat['ray_hop_p50_ms']:.1f} | |")
        print(f"| of which batching, feature lookup, thread hop in the decoder | "
              f"{lat['decoder_batch_and_features_p50_ms']:.1f} | |")
        print(f"| decode + RLE inside the replica | {lat['replica_decode_p50_ms']:.1f} | |")
        if "direct_http_p50_ms" in lat:
            print(f"| direct ingress: HTTP at the client, same requests alternating | {lat['direct_http_p50_ms']:.1f} | "
                  f"{lat['direct_http_p99_ms']:.1f} |")
            print(f"| **added with direct ingress** | **{lat['direct_added_p50_ms']:.1f}** | |")
            print(f"| of which HTTP outside the ingress (client - ingress total), direct | "
                  f"{lat['direct_http_outside_ingress_p50_ms']:.1f} | |")
        print(f"| Serve's floor: same two hops, no work ({lat['requests']} requests) | {lat['floor_p50_ms']:.1f} | "
              f"{lat['floor_p99_ms']:.1f} |\n")
    if "hit_rate" in results:
        print("| routing by image id | replicas | LRU per replica | images | requests | hits | misses | hit rate | req/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for h in results["hit_rate"]:
            print(f"| {'yes' if h['route_by_image'] else 'no'} | {h['replicas']} | {h['cache_size']} | {h['images']} | "
                  f"{h['requests']} | {h['hits']:.0f} | {h['misses']:.0f} | {100 * h['hit_rate']:.1f}% | "
                  f"{h['req_per_s']:.0f} |")
    if "throughput" in results:
        base = results["throughput"][0]["req_per_s"]
        print(f"\n| decoder replicas | torch threads each | clients | requests | req/s | vs {results['throughput'][0]['replicas']} "
              "| p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|")
        for t in results["throughput"]:
            print(f"| {t['replicas']} | {t['torch_threads']} | {t['clients']} | {t['requests']} | {t['req_per_s']:.1f} | "
                  f"{t['req_per_s'] / base:.2f}x | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
