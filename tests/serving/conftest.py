"""One local Ray + Serve running the seem-ray application for the whole serving suite.

Start-up (Ray, three deployments each loading the model) costs ~30 s on two cores, so it
is paid once per session. The app runs with API keys, allowed URI prefixes on a moto S3
bucket and a local folder, small limits (so 413s are cheap to provoke) and fast
autoscaling (so the load test sees 1 -> 2 decoder replicas).
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.support import free_port, png_bytes  # noqa: F401 (the serving tests import them from here)

API_KEY = "test-key-0123456789"
OTHER_KEY = "second-key-abcdef"
WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights" / "seem-tiny.safetensors"
needs_weights = pytest.mark.skipif(not WEIGHTS.exists(), reason="model/weights/seem-tiny.safetensors is missing from this checkout")

LIMITS = {
    "max_body_bytes": 2 << 20,
    "max_pixels": 1_000_000,
    "max_prompts": 8,
    "max_points": 64,
    "max_vocabulary": 32,
    "max_masks": 5,
    "max_text_chars": 100,
    "max_audio_bytes": 256 << 10,
    "max_audio_seconds": 8.0,
}


@dataclass
class ServingEnv:
    """The running application and what tests need to talk to it."""

    base_url: str
    metrics_port: int
    store_dir: Path
    allowed_dir: Path
    secret_dir: Path
    bucket: str
    endpoint_url: str
    app_name: str = "seem"
    session: requests.Session = field(default_factory=requests.Session)
    _uploads: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def url(self, path: str) -> str:
        return self.base_url + path

    def post_json(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", self.headers)
        return self.session.post(self.url(path), json=body, headers=headers, timeout=60, **kwargs)

    def upload(self, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
        """POST /v1/images; the parsed response (asserting 200)."""
        r = self.session.post(self.url("/v1/images"), data=data,
                              headers={**self.headers, "Content-Type": content_type}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def scene(self, seed: int) -> tuple[Any, str]:
        """A Shapes World scene uploaded once per session: (scene, image_id)."""
        from training.shapes_world import generate_scene

        scene = generate_scene(seed)
        key = f"scene-{seed}"
        if key not in self._uploads:
            self._uploads[key] = self.upload(png_bytes(scene.image))
        return scene, self._uploads[key]["image_id"]

    def decoder_replicas(self) -> int:
        from ray import serve

        status = serve.status().applications[self.app_name].deployments["Decoder"]
        return int(status.replica_states.get("RUNNING", 0))


@pytest.fixture(scope="package")
def serving(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingEnv]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from rayinit import start_or_join
    from serving.app import APP_NAME, build_app

    root = tmp_path_factory.mktemp("serving")
    store_dir, allowed_dir, secret_dir = root / "store", root / "allowed", root / "secret"
    bucket = "seem-serving-tests"
    _write_sources(allowed_dir, secret_dir, s3_server, bucket)
    store_dir.mkdir()

    metrics_port, http_port = free_port(), free_port()
    from serving.proxy_guard import CALLBACK_ENV, CALLBACK_PATH

    os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)  # the proxy runs serving.proxy_guard, as `seem serve` sets up
    # The S3 fixture has put the endpoint and dummy credentials in os.environ; the raylet
    # and so every replica inherit them from this process.
    # Started again if a busy machine misses Ray's 30 s start-up window (rayinit).
    start_or_join("local", local_options={"num_cpus": 2, "object_store_memory": 512 << 20,
                                          "_metrics_export_port": metrics_port,
                                          "_system_config": {"metrics_report_interval_ms": 1000}},
                  include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        app = build_app(_app_config(store_dir, allowed_dir, bucket, s3_server))
        started = time.monotonic()
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        env = ServingEnv(f"http://127.0.0.1:{http_port}", metrics_port, store_dir, allowed_dir, secret_dir,
                         bucket, s3_server, APP_NAME)
        _wait_until_healthy(env, timeout_s=60)
        print(f"serving app up in {time.monotonic() - started:.1f} s at {env.base_url}")
        yield env
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _write_sources(allowed_dir: Path, secret_dir: Path, s3_server: str, bucket: str) -> None:
    """Images an `image_uri` may name (the allowed folder and prefix) and copies it may not
    (a secret folder, a private prefix), and a text file under an image's name."""
    from tests.s3_server import _client
    from training.shapes_world import generate_scene

    image = png_bytes(generate_scene(7).image)
    for d in (allowed_dir, secret_dir):
        d.mkdir()
        (d / "scene7.png").write_bytes(image)
    (allowed_dir / "not-an-image.png").write_bytes(b"hello, I am text")
    s3 = _client(s3_server)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="allowed/scene7.png", Body=image)
    s3.put_object(Bucket=bucket, Key="private/scene7.png", Body=image)


def _app_config(store_dir: Path, allowed_dir: Path, bucket: str, s3_server: str) -> dict:
    """The tests' app: two API keys, small limits, a decoder autoscaled 1 -> 2 quickly."""
    return {
        "store": str(store_dir),
        "endpoint_url": s3_server,
        "api_keys": [API_KEY, OTHER_KEY],
        "allowed_uri_prefixes": [f"s3://{bucket}/allowed/", str(allowed_dir) + "/"],
        "limits": LIMITS,
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                        "upscale_delay_s": 1, "downscale_delay_s": 5, "look_back_period_s": 2,
                        "metrics_interval_s": 0.5},
        "decoder": {"num_cpus": 0.25, "cache_size": 8, "max_ongoing_requests": 8},
        "encoder": {"num_cpus": 0.25},
        "speech": {"num_cpus": 0.1},
        "request_timeout_s": 30,
    }


def _wait_until_healthy(env: ServingEnv, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while requests.get(env.url("/healthz"), timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the app did not become healthy"
        time.sleep(0.5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
