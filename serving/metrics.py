"""Application metrics (ray.serve.metrics) and the ingress's GET /metrics.

Each replica records into Ray's metrics system; Ray's per-node metrics agent exports all
replicas of that node, with `deployment`/`replica`/`application` labels added by Serve, so
Prometheus (or GET /metrics, which gathers every node) sums across replicas.

Exported names (Ray prefixes `ray_`):

- `ray_seem_request_latency_ms`   histogram  route, status    ingress, whole request
- `ray_seem_encode_latency_ms`    histogram                   encoder, per batch of images
- `ray_seem_encode_batch_size`    histogram                   encoder
- `ray_seem_decode_latency_ms`    histogram  op               decoder (segment, panoptic)
- `ray_seem_feature_cache_hits`   counter                     decoder LRU hits
- `ray_seem_feature_cache_misses` counter    source           loaded from store / encoder
"""
from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from typing import Any

__all__ = ["IngressMetrics", "DecoderMetrics", "EncoderMetrics", "gather_metrics_text", "METRIC_PREFIXES"]

log = logging.getLogger("seem.serving")

LATENCY_BUCKETS_MS = [1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
#: Families GET /metrics passes on: the app's and Serve's.
METRIC_PREFIXES = ("ray_seem_", "ray_serve_")
#: Serve labels this one with every multiplexed id, i.e. every image id: unbounded, not passed on.
_DROPPED = frozenset({"ray_serve_registered_multiplexed_model_id"})


class IngressMetrics:
    """HTTP requests, recorded by the decoder replicas that answer them (created inside the
    replica: Serve adds its tags there)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.request_latency = metrics.Histogram(
            "seem_request_latency_ms", description="HTTP request latency at the ingress (ms)",
            boundaries=LATENCY_BUCKETS_MS, tag_keys=("route", "status"))

    def observe(self, route: str, status: int, ms: float) -> None:
        """One finished HTTP request."""
        self.request_latency.observe(ms, tags={"route": route, "status": str(status)})


class DecoderMetrics:
    """Recorded by each decoder replica."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.decode_latency = metrics.Histogram(
            "seem_decode_latency_ms", description="decode latency of one request on cached features (ms)",
            boundaries=LATENCY_BUCKETS_MS, tag_keys=("op",))
        self.cache_hits = metrics.Counter(
            "seem_feature_cache_hits", description="image features found in the replica's LRU")
        self.cache_misses = metrics.Counter(
            "seem_feature_cache_misses", description="image features not in the LRU, by where they came from",
            tag_keys=("source",))


class EncoderMetrics:
    """Recorded by each encoder replica."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.encode_latency = metrics.Histogram(
            "seem_encode_latency_ms", description="image decode + encode + store write of one batch (ms)",
            boundaries=LATENCY_BUCKETS_MS)
        self.batch_size = metrics.Histogram(
            "seem_encode_batch_size", description="images per encoder batch", boundaries=BATCH_BUCKETS)


# --------------------------------------------------------------------------- GET /metrics
_nodes_cache: dict[str, Any] = {"at": 0.0, "targets": []}


def _metrics_targets(max_age_s: float = 30.0) -> list[str]:
    """URLs of the Ray metrics endpoints of the alive nodes (cached briefly)."""
    now = time.monotonic()
    if now - _nodes_cache["at"] < max_age_s and _nodes_cache["targets"]:
        return list(_nodes_cache["targets"])
    import ray

    targets = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            targets.append(f"http://{node['NodeManagerAddress']}:{int(port)}/metrics")
    _nodes_cache.update(at=now, targets=targets)
    return targets


def _fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (cluster-internal URL)
        return response.read().decode("utf-8", "replace")


def _merge(texts: list[str]) -> str:
    """Families of METRIC_PREFIXES from several exposition texts -> one valid text."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import Collector, CollectorRegistry
    from prometheus_client.exposition import generate_latest

    families: dict[str, Any] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(METRIC_PREFIXES) or family.name in _DROPPED:
                continue
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family

    class _Parsed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Parsed())
    return generate_latest(registry).decode("utf-8")


async def gather_metrics_text(timeout_s: float = 3.0) -> str:
    """The app's and Serve's metrics from every node, as one Prometheus text.

    Raises RuntimeError when no node's endpoint answered (the caller answers 503).
    """
    targets = await asyncio.to_thread(_metrics_targets)
    results = await asyncio.gather(*(asyncio.to_thread(_fetch, url, timeout_s) for url in targets),
                                   return_exceptions=True)
    texts = [r for r in results if isinstance(r, str)]
    for url, r in zip(targets, results):
        if not isinstance(r, str):
            log.warning("metrics endpoint %s failed: %s", url, r)
    if not texts:
        raise RuntimeError("no Ray metrics endpoint answered")
    return await asyncio.to_thread(_merge, texts)
