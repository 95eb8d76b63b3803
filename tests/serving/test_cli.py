"""`seem serve` as a user runs it: a subprocess with its own local Ray, serving until SIGTERM
(or SIGINT), then shutting Serve and Ray down and exiting 0."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from training.shapes_world import generate_scene

from .conftest import free_port, png_bytes

ROOT = Path(__file__).resolve().parents[2]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"seem serve exited early with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError("seem serve did not become healthy")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM])
def test_seem_serve_runs_until_signalled_and_shuts_down(tmp_path: Path, stop_signal: signal.Signals) -> None:
    port = free_port()
    proc = _start_seem_serve(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base + "/healthz", proc, timeout_s=180)
        headers = {"Authorization": "Bearer cli-key"}
        data = png_bytes(generate_scene(12).image)
        r = requests.post(base + "/v1/images", data=data, headers={**headers, "Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        sha = r.json()["image_id"]
        r = requests.post(base + "/v1/segment", json={"image_id": sha,
                                                       "prompts": [{"type": "point", "xy": [20, 20]}]},
                          headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert requests.get(base + "/v1/images", timeout=10).status_code == 401  # --api-key applies
        metrics = _wait_for_serve_series(base, headers)
        assert "ray_serve_" in metrics.text, metrics.text[:500]
        _check_overload(base, sha, {"Authorization": "Bearer env-key"})
        _check_rate_limit(base, {"Authorization": "Bearer env-key"}, headers)
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # only if something above failed: end what this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, out
    assert "listening on" in out and f"{stop_signal.name}, shutting down" in out and "stopped" in out, out
    assert (tmp_path / "store").is_dir() and any((tmp_path / "store").rglob("*.safetensors"))
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/healthz", timeout=5)


def _start_seem_serve(tmp_path: Path, port: int) -> subprocess.Popen:
    """`seem serve` in its own session, with keys from the command line (cli-key) and the
    environment (env-key)."""
    config = tmp_path / "args.json"
    # Small replicas: this runs next to the suite's own Ray on a small machine.
    # Also the suite's one place for a real 429 (a rate limit) and a real 503 (a decoder
    # queue of one request).
    config.write_text(json.dumps({"decoder": {"num_cpus": 0.25, "max_ongoing_requests": 1, "max_queued_requests": 1},
                                  "encoder": {"num_cpus": 0.25}, "speech": {"num_cpus": 0.1},
                                  "autoscaling": {"max_replicas": 1},
                                  # One token back per 1000 s: no refill within the test at any load, so a key's
                                  # 40 tokens are spent by exactly its first 40 requests that reach the replica.
                                  "limits": {"requests_per_s": 0.001, "burst": 40}}))
    # A second key from the environment, as a Kubernetes secret would provide it.
    # Ray's agents export metrics every second (default 10 s), so /metrics shows Serve's series sooner.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "SEEM_API_KEYS": "env-key",
           "RAY_metrics_report_interval_ms": "1000"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "seem_cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--store", str(tmp_path / "store"), "--config", str(config), "--num-cpus", "2", "--api-key", "cli-key"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_serve_series(base: str, headers: dict[str, str]) -> requests.Response:
    """GET /metrics until it shows Serve's series (up to 60 s): Ray's agents export every
    report interval (1 s here), so they appear some time after the first requests."""
    deadline = time.monotonic() + 60
    while True:
        metrics = requests.get(base + "/metrics", headers=headers, timeout=60)
        assert metrics.status_code == 200, metrics.text[:500]
        if "ray_serve_" in metrics.text or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def _check_overload(base: str, sha: str, headers: dict[str, str]) -> None:
    """12 requests at once against a decoder that takes one and queues one: some 200s, the
    rest 503 "overloaded" with Retry-After."""
    body = {"image_id": sha, "prompts": [{"type": "text", "text": "a long phrase to make decoding slower"}]}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: requests.post(base + "/v1/segment", json=body, headers=headers,
                                                        timeout=60), range(12)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["error"]["code"] == "overloaded" and busy.headers.get("retry-after") == "1"


def _check_rate_limit(base: str, limited: dict[str, str], other: dict[str, str]) -> None:
    """The `limited` key spent one token per overload request its replica answered (at least
    one 200), so one after another, however slowly, its 40 tokens run out within 40 more; the
    `other` key and /healthz are not limited by that."""
    burst = []
    for _ in range(40):
        burst.append(requests.get(base + "/openapi.json", headers=limited, timeout=30))
        if burst[-1].status_code != 200:
            break
    codes = [r.status_code for r in burst]
    assert codes[-1] == 429 and set(codes[:-1]) == {200}, codes
    assert burst[-1].json()["error"]["code"] == "rate_limited", burst[-1].text
    assert int(burst[-1].headers["retry-after"]) >= 1
    again = requests.get(base + "/openapi.json", headers=limited, timeout=30)
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited", again.text
    assert requests.get(base + "/openapi.json", headers=other, timeout=30).status_code == 200  # per key
    assert requests.get(base + "/healthz", timeout=10).status_code == 200  # never limited


def test_seem_serve_refuses_bad_options(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "seem_cli", "serve", "--allow-uri-prefix", "relative/"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid configuration" in proc.stderr and "allowed_uri_prefixes" in proc.stderr


def _alive(pids: list[int]) -> list[int]:
    """The pids that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def test_sigkilled_seem_serve_leaves_no_ray_processes(tmp_path: Path) -> None:
    from tests.support import descendants

    port = free_port()
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"decoder": {"num_cpus": 0.25}, "encoder": {"num_cpus": 0.25},
                                  "speech": {"num_cpus": 0.1}, "autoscaling": {"max_replicas": 1}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "seem_cli", "serve", "--port", str(port), "--store", str(tmp_path / "store"),
           "--config", str(config), "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    ray_pids: list[int] = []
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=240)
        ray_pids = descendants(proc.pid)
        assert len(ray_pids) >= 4, ray_pids  # GCS, raylet, agents, replicas
        proc.kill()  # SIGKILL: no handler, no atexit, no Ray shutdown
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(ray_pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _alive(ray_pids)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in _alive(ray_pids):  # only if the assertion failed: what this test started
            os.kill(pid, signal.SIGKILL)
