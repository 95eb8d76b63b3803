"""A bounded load test on loopback: concurrent clients, zero 5xx, the decoder scaling 1 -> 2.

At most 60 s of load; prints p50 / p99 latency. The session app's autoscaling config
(target 2 ongoing requests per replica, upscale after 1 s) makes 12 clients enough.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import requests

from .conftest import ServingEnv
from .test_http_api import point_in

CLIENTS = 12
MAX_SECONDS = 60.0
MAX_REQUESTS = 20_000


def _one_click_client(serving: ServingEnv, images: list[tuple[str, list[float]]], k: int,
                      results: list[tuple[int, float]], lock: threading.Lock, stop: threading.Event) -> None:
    """Client k: one-click requests round-robin over `images` (from the k-th on), each
    answer's status and ms into `results`, until `stop` (set here at MAX_REQUESTS answers)."""
    session = requests.Session()
    i = k
    while not stop.is_set():
        image_id, xy = images[i % len(images)]
        i += 1
        body = {"image_id": image_id, "prompts": [{"type": "point", "xy": xy}]}
        t0 = time.perf_counter()
        try:
            status = session.post(serving.url("/v1/segment"), json=body, timeout=30,
                                  headers={**serving.headers, "Serve-Multiplexed-Model-Id": image_id}).status_code
        except requests.RequestException:
            status = 599  # a dropped connection counts as a server failure
        with lock:
            results.append((status, (time.perf_counter() - t0) * 1000))
            if len(results) >= MAX_REQUESTS:
                stop.set()


def _watch_scale_out(serving: ServingEnv, stop: threading.Event, started: float) -> tuple[int, float | None]:
    """The most decoder replicas seen, and when (s after `started`) the second appeared:
    watched until the scale-out has been seen and the new replica has served a while, the
    clients stopped, or MAX_SECONDS passed."""
    most, scaled_at = 1, None
    while not stop.is_set() and time.monotonic() - started < MAX_SECONDS:
        most = max(most, serving.decoder_replicas())
        if most >= 2 and scaled_at is None:
            scaled_at = time.monotonic() - started
        if scaled_at is not None and time.monotonic() - started > scaled_at + 10:
            break
        time.sleep(0.5)
    return most, scaled_at


def test_load_scales_the_decoder_out_without_5xx(serving: ServingEnv) -> None:
    images = []
    for seed in (301, 302, 303, 304):
        scene, image_id = serving.scene(seed)
        thing = scene.things[0]
        images.append((image_id, point_in(scene.mask(thing.id))))

    deadline = time.monotonic() + 90  # earlier tests may have scaled it up: wait for the downscale
    while serving.decoder_replicas() != 1:
        assert time.monotonic() < deadline, "decoder did not settle to 1 replica before the load"
        time.sleep(1)

    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    threads = [threading.Thread(target=_one_click_client, args=(serving, images, k, results, lock, stop), daemon=True)
               for k in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        most, scaled_at = _watch_scale_out(serving, stop, started)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    elapsed = time.monotonic() - started

    statuses = np.array([s for s, _ in results])
    latencies = np.array([ms for _, ms in results])
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"\nload: {len(results)} requests from {CLIENTS} clients in {elapsed:.1f} s "
          f"({len(results) / elapsed:.0f} req/s); p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"decoder replicas 1 -> {most} (at {scaled_at if scaled_at is None else round(scaled_at, 1)} s); "
          f"statuses {dict(zip(*np.unique(statuses, return_counts=True)))}")
    assert elapsed <= MAX_SECONDS + 40  # the load itself stops at MAX_SECONDS; joins are bounded
    assert len(results) > 100
    assert (statuses >= 500).sum() == 0, "5xx under load"
    assert (statuses == 200).all(), f"non-200 answers: {set(statuses.tolist())}"
    assert most >= 2, "the decoder did not scale out under load"
