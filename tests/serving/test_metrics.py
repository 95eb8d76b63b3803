"""GET /metrics: the app's metrics, gathered across replicas from Ray's metrics export."""
from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from training.shapes_world import generate_scene

from .conftest import ServingEnv, png_bytes


def _families(serving: ServingEnv) -> dict:
    r = serving.session.get(serving.url("/metrics"), headers=serving.headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _count(families: dict, name: str, **labels: str) -> float:
    family = families.get(name)
    if family is None:
        return 0.0
    total = 0.0
    for sample in family.samples:
        if sample.name.endswith("_count") or (family.type == "counter" and sample.name.endswith("_total")):
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_metrics_cover_requests_encode_decode_cache_and_batches(serving: ServingEnv) -> None:
    data = png_bytes(generate_scene(201).image)
    image_id = serving.upload(data)["image_id"]  # a new image: an encode and a cache miss
    for _ in range(3):  # then hits
        r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [{"type": "point", "xy": [5, 5]}]})
        assert r.status_code == 200, r.text
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [{"type": "lasso"}]})
    assert r.status_code == 422

    wanted = {
        ("seem_request_latency_ms", (("route", "/v1/segment"), ("status", "200"))): 3,
        ("seem_request_latency_ms", (("route", "/v1/segment"), ("status", "422"))): 1,
        ("seem_request_latency_ms", (("route", "/v1/images"), ("status", "200"))): 1,
        ("seem_encode_latency_ms", ()): 1,
        ("seem_encode_batch_size", ()): 1,
        ("seem_decode_latency_ms", (("op", "segment"),)): 3,
        ("seem_feature_cache_hits", ()): 3,
        ("seem_feature_cache_misses", (("source", "encoder"),)): 1,
    }
    # Ray exports custom metrics a little after they are recorded: poll with a deadline.
    deadline = time.monotonic() + 60
    while True:
        families = _families(serving)
        missing = {k: v for k, v in wanted.items() if _count(families, "ray_" + k[0], **dict(k[1])) < v}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"metrics not (yet) exported: {missing}"
    # Serve's own metrics come through too, and image ids never become labels.
    assert any(name.startswith("ray_serve_") for name in families)
    assert "ray_serve_registered_multiplexed_model_id" not in families
    hist = families["ray_seem_request_latency_ms"]
    assert hist.type == "histogram"
    labels = {s.labels.get("deployment") for s in hist.samples}
    assert labels == {"Decoder"}, "Serve tags each sample with its deployment and replica (the decoder is the ingress)"
