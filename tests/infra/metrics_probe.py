"""Start a local Ray with a metrics port, run what produces the series the dashboard queries,
and write what Ray's metrics endpoint exported (series -> label names) as JSON.

    python -m tests.infra.metrics_probe OUT.json [--timeout-s 120]

Run in its own process by tests/infra/test_metrics_exported.py (a Ray of its own, whatever
other tests run). What runs:
- a Serve deployment that creates the application's metric objects (serving.metrics: the
  ingress's, the decoder's and the encoder's) and records each of them once inside a replica,
  so Serve adds its labels as in the real app; HTTP requests through Serve's proxy;
- a Ray Data job with an autoscaling actor pool, running while the endpoint is scraped
  (Ray Data's per-operator series exist only while a dataset runs).
It scrapes until every series of the dashboard (except GPU-only ones) has been seen, or the
timeout; the union over all scrapes is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))

import check  # noqa: E402

from tests.support import free_port  # noqa: E402

DASHBOARD = REPO / "infra" / "grafana" / "dashboards" / "seem-ray.json"


def wanted_series() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    names = {s.metric for _, expr in check.dashboard_queries(dash) for s in check.parse_promql(expr)[0]}
    return names - check.RAY_GPU_ONLY_SERIES


def record_app_metrics() -> list[str]:
    """Create every metric object of serving.metrics and record one value in each."""
    from ray.util.metrics import Counter, Gauge, Histogram

    from serving import metrics

    recorded = []
    for cls in (metrics.IngressMetrics, metrics.DecoderMetrics, metrics.EncoderMetrics):
        holder = cls()
        for name, metric in vars(holder).items():
            tags = {key: "probe" for key in (getattr(metric, "_tag_keys", None) or ())}
            if isinstance(metric, Histogram):
                metric.observe(1.0, tags=tags)
            elif isinstance(metric, Counter):
                metric.inc(1.0, tags=tags)
            elif isinstance(metric, Gauge):
                metric.set(1.0, tags=tags)
            else:
                continue
            recorded.append(f"{cls.__name__}.{name}")
    return recorded


def _serve_probe(http_port: int) -> dict:
    """Starts Serve with a deployment that records the app's metrics, calls it a few times
    (so that request series exist) and returns what it recorded."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": http_port})

    @serve.deployment(ray_actor_options={"num_cpus": 0.25},
                      autoscaling_config={"min_replicas": 1, "max_replicas": 1})
    class Probe:
        def __init__(self) -> None:
            self.recorded = record_app_metrics()

        async def __call__(self, request) -> str:
            return json.dumps(self.recorded)

    serve.run(Probe.bind(), name="probe", route_prefix="/", blocking=False)
    recorded: dict = {}
    for _ in range(5):
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=30) as r:
            recorded = json.loads(r.read())
    return recorded


def _start_slow_dataset() -> threading.Thread:
    """A Ray Data job with an autoscaling actor pool, running in the background while the
    series are scraped (so that Ray Data's operator series exist)."""
    import ray.data

    class Slow:
        def __call__(self, batch):
            time.sleep(0.8)
            return batch

    dataset = ray.data.range(600, override_num_blocks=60).map_batches(
        Slow, batch_size=10, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), num_cpus=0.25)
    job = threading.Thread(target=dataset.materialize, daemon=True)
    job.start()
    return job


def _scrape_until(metrics_port: int, wanted: set[str], timeout_s: float) -> dict[str, set[str]]:
    """Series names -> label names scraped from the node's metrics endpoint once a second,
    until every `wanted` series showed up or `timeout_s` passed."""
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
            for name, labels in check.scrape_series(r.read().decode()).items():
                seen.setdefault(name, set()).update(labels)
        if wanted <= set(seen):
            break
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.path.insert(0, str(REPO))

    import ray
    from ray import serve

    from rayinit import start_or_join

    metrics_port, http_port = free_port(), free_port()
    # With the dashboard, as on a real head: it writes Prometheus' service-discovery file.
    # A new local Ray, started again if it misses Ray's 30 s start-up window (rayinit). Its
    # agents export every second (Ray's default: 10 s), so every series shows up sooner.
    start_or_join("local", local_options={"num_cpus": 2, "object_store_memory": 512 * 2 ** 20,
                                          "_metrics_export_port": metrics_port, "include_dashboard": True,
                                          "_system_config": {"metrics_report_interval_ms": 1000}},
                  logging_level="ERROR")
    result: dict = {"metrics_port": metrics_port}
    try:
        result["recorded"] = _serve_probe(http_port)
        job = _start_slow_dataset()
        wanted = wanted_series()
        seen = _scrape_until(metrics_port, wanted, args.timeout_s)
        result["series"] = {k: sorted(v) for k, v in seen.items()}
        result["waited_for_missing"] = sorted(wanted - set(seen))
        node = ray._private.worker.global_worker.node
        discovery = Path(node.get_session_dir_path()) / "prom_metrics_service_discovery.json"
        result["service_discovery"] = json.loads(discovery.read_text()) if discovery.exists() else None
        job.join(timeout=60)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
