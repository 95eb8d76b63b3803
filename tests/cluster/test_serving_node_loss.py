"""The HTTP service across two nodes loses one under load and keeps answering.

Serve's controller and its HTTP proxy (with serving.proxy_guard) run on the head; one
decoder replica runs on each 1-CPU worker node (`max_replicas_per_node: 1`), the feature
store is in the moto bucket. Two clients send one-click requests (with the routing
header) round the uploaded images while the node of one decoder replica is hard-killed.
What a user would notice, asserted:
- /healthz keeps answering 200;
- a failed request is a 503 with Retry-After (in-flight ones, at most a few), never a 500
  or a dropped connection;
- the images whose features were cached on the lost node are loaded from the store by the
  surviving replica and answered;
- once a node is back (as an autoscaler would add one), Serve starts the second replica
  there and every image is answered.
The counts it saw are printed (docs/scale.md records a run).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from tests.support import free_port, png_bytes

from .conftest import LocalCluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEY = "cluster-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
N_IMAGES = 6
MAX_REQUESTS = 2000  # bounds the load loop whatever happens


def _deploy(cluster: LocalCluster, bucket: Any) -> str:
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    # HeadOnly: the worker "nodes" share this machine's address, so only one proxy can bind the port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({
        "store": bucket.uri("features"), "endpoint_url": bucket.endpoint_url, "api_keys": [KEY],
        "autoscaling": {"min_replicas": 2, "max_replicas": 2, "initial_replicas": 2},
        "decoder": {"num_cpus": 0.4, "cache_size": 8, "max_replicas_per_node": 1},
        "encoder": {"num_cpus": 0.2}, "speech": {"num_cpus": 0.05}, "request_timeout_s": 30,
    }), name=APP_NAME, route_prefix="/", blocking=False)
    wait_until(lambda: _running_decoders() == 2, 180, "two decoder replicas")
    return f"http://127.0.0.1:{port}"


def _running_decoders() -> int:
    from ray import serve

    app = serve.status().applications.get("seem")
    return 0 if app is None or "Decoder" not in app.deployments else \
        int(app.deployments["Decoder"].replica_states.get("RUNNING", 0))


def _replicas() -> dict[str, dict]:
    """replica id -> info() of every running decoder replica (asked until each answered)."""
    from ray import serve

    handle = serve.get_deployment_handle("Decoder", "seem")
    seen: dict[str, dict] = {}
    for _ in range(40):
        info = handle.info.remote().result(timeout_s=30)
        seen[info["replica"]] = info
        if len(seen) >= _running_decoders():
            break
    return seen


def _segment(session: requests.Session, base: str, image_id: str) -> requests.Response:
    body = {"image_id": image_id, "prompts": [{"type": "point", "xy": [20, 20]}]}
    return session.post(base + "/v1/segment", json=body, timeout=60,
                        headers={**AUTH, "Serve-Multiplexed-Model-Id": image_id})


class Load:
    """Clients sending one-click requests round the images, and a /healthz poller, until stopped."""

    def __init__(self, base: str, image_ids: list[str], clients: int = 2) -> None:
        self.base, self.image_ids = base, image_ids
        # (time, image id, status, Retry-After, error code)
        self.results: list[tuple[float, str, int, str | None, str | None]] = []
        self.health: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]
        self.threads.append(threading.Thread(target=self._health, daemon=True))

    def _client(self, k: int) -> None:
        session = requests.Session()
        i = k
        while not self.stop.is_set() and len(self.results) < MAX_REQUESTS:
            image_id = self.image_ids[i % len(self.image_ids)]
            i += 1
            try:
                r = _segment(session, self.base, image_id)
                code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                self.results.append((time.monotonic(), image_id, r.status_code, r.headers.get("retry-after"), code))
            except (requests.RequestException, ValueError):  # a dropped connection, or not our JSON
                self.results.append((time.monotonic(), image_id, 599, None, None))

    def _health(self) -> None:
        session = requests.Session()
        while not self.stop.is_set() and len(self.health) < MAX_REQUESTS:
            try:
                self.health.append(session.get(self.base + "/healthz", timeout=30).status_code)
            except requests.RequestException:
                self.health.append(599)
            time.sleep(0.1)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=70)


def test_serving_survives_losing_a_node_under_load(local_cluster: LocalCluster, s3_bucket, tmp_path) -> None:
    import ray
    from ray import serve

    from training.shapes_world import generate_scene

    local_cluster.ensure_workers(2)
    started = time.monotonic()
    try:
        base = _deploy(local_cluster, s3_bucket)
        session = requests.Session()
        image_ids = []
        for seed in range(N_IMAGES):
            r = session.post(base + "/v1/images", data=png_bytes(generate_scene(900 + seed).image),
                             headers={**AUTH, "Content-Type": "image/png"}, timeout=120)
            assert r.status_code == 200, r.text
            image_ids.append(r.json()["image_id"])
        for image_id in image_ids:  # each image into the LRU of the replica the proxy routes it to
            assert _segment(session, base, image_id).status_code == 200
        before = _replicas()
        assert len(before) == 2 and len({i["node_id"] for i in before.values()}) == 2, "one replica per node"
        lost, kept = sorted(before.values(), key=lambda i: -len(i["cached_images"]))
        on_lost = set(lost["cached_images"]) & set(image_ids)
        assert on_lost, f"no image cached on either replica: {before}"
        node = next(n for n in local_cluster.workers if n.node_id == lost["node_id"])

        with Load(base, image_ids) as load:
            time.sleep(3)
            killed_at = time.monotonic()
            local_cluster.hard_kill(node)
            # Load goes on until every image was answered after the kill, and for 5 s at least.
            wait_until(lambda: time.monotonic() > killed_at + 5 and set(image_ids) <= {
                i for t, i, s, *_ in list(load.results) if s == 200 and t > killed_at}, 90,
                "every image answered after the kill")
        after = [r for r in load.results if r[0] > killed_at]
        failed = [r for r in load.results if r[2] != 200]
        survivor = _replicas()[kept["replica"]]
        print(f"\nserving node loss: {len(load.results)} requests ({len(after)} after the kill), "
              f"{len(failed)} failed: {sorted((s, code) for _, _, s, _, code in failed)}; "
              f"/healthz {len(load.health)} polls, statuses {sorted(set(load.health))}; "
              f"images cached on the lost node {len(on_lost)}, now held by the survivor "
              f"{len(on_lost & set(survivor['cached_images']))}")
        assert all(s == 200 for s in load.health), f"/healthz failed: {load.health}"
        assert all(s == 503 and retry == "1" for _, _, s, retry, _ in failed), f"failures other than 503: {failed}"
        assert len(failed) <= 8, f"more than the in-flight requests failed: {failed}"
        assert on_lost <= set(survivor["cached_images"]), "the survivor did not load the lost node's images"

        # A node comes back (the autoscaler's part): Serve starts the second replica there.
        local_cluster.ensure_workers(2)
        wait_until(lambda: _running_decoders() == 2, 180, "the decoder back at two replicas")
        statuses = [_segment(session, base, image_id).status_code for image_id in image_ids]
        assert statuses == [200] * N_IMAGES, statuses
        print(f"serving node loss: back to 2 replicas and every image answered, {time.monotonic() - started:.0f} s in all")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
