"""Attacks against the real `seem serve` on 127.0.0.1, bounded in count and time.

One server for all of them (start-up is the expensive part), started the way a user starts
it: the `seem` console script, from a working directory that holds a feature-store folder
`store/` (no __init__.py, as `seem encode --store ./store` leaves it) and a Python package
`model/` (with one), which must not shadow ours in the driver or in any replica.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support import descendants, free_port, png_bytes
from training.shapes_world import generate_scene

from .test_cli import _wait_healthy

ROOT = Path(__file__).resolve().parents[2]
KEY = "attack-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_TIMEOUT_S = 3
SLOW_CLIENTS = 120  # half-sent bodies held open at once (the outage took ~260; the ingress admits 16 here)


def _seem_command() -> list[str]:
    script = Path(sys.executable).parent / "seem"
    return [str(script)] if script.exists() else [sys.executable, "-m", "seem_cli"]


def _hostile_folder(root: Path) -> Path:
    cwd = root / "workdir"
    (cwd / "store" / "seem-tiny").mkdir(parents=True)  # as `seem encode --store ./store` leaves it
    (cwd / "model").mkdir()
    (cwd / "model" / "__init__.py").write_text("raise ImportError('the user\\'s own model package was imported')\n")
    (cwd / "serving").mkdir()  # a namespace-package candidate for one of ours too
    return cwd


def _start(tmp_path: Path, port: int) -> subprocess.Popen:
    config = {"decoder": {"num_cpus": 0.25, "max_ongoing_requests": 4}, "encoder": {"num_cpus": 0.25},
              "speech": {"num_cpus": 0.1}, "autoscaling": {"max_replicas": 1},
              "limits": {"max_pixels": 1_000_000}}
    (tmp_path / "args.json").write_text(json.dumps(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "SEEM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)
    cmd = _seem_command() + ["serve", "--port", str(port), "--store", str(tmp_path / "features"),
                             "--config", str(tmp_path / "args.json"), "--num-cpus", "2", "--api-key", KEY]
    return subprocess.Popen(cmd, cwd=_hostile_folder(tmp_path), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _slow_bodies(port: int, n: int) -> list[socket.socket]:
    """`n` connections that send headers and one byte of a 100 kB body, then nothing."""
    socks = []
    head = ("POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{").encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(head)
        socks.append(s)
    return socks


def _status_line(sock: socket.socket, timeout_s: float) -> str:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(64).decode("latin-1").split("\r\n", 1)[0]
    except OSError as e:
        return f"no answer ({type(e).__name__})"


def _segment(base: str, sha: str, prompts: list, timeout: float = 60) -> requests.Response:
    return requests.post(base + "/v1/segment", json={"image_id": sha, "prompts": prompts}, headers=AUTH,
                         timeout=timeout)


def _decoder_pids(pid: int) -> list[int]:
    found = []
    for p in descendants(pid):
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().decode("latin-1")
        except OSError:
            continue
        if "ServeReplica" in cmdline and "Decoder" in cmdline:
            found.append(p)
    return found


def test_attacks_against_seem_serve(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port)
    try:
        _wait_healthy(base + "/healthz", proc, timeout_s=240)  # replicas import our packages despite ./store and ./model
        data = png_bytes(generate_scene(3).image)
        r = requests.post(base + "/v1/images", data=data, headers={**AUTH, "Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        sha = r.json()["image_id"]
        assert _segment(base, sha, [{"type": "point", "xy": [20, 20]}]).status_code == 200

        _half_sent_bodies(base, port, sha)  # 1
        _huge_headers_and_rle_bomb(base, sha)  # 2, 3
        _bad_values(base, sha)  # 4, 5
        _replica_killed_under_load(base, sha, proc.pid)  # 6

        # 7. SIGTERM to the whole process group (what Kubernetes and systemd send) stops it cleanly.
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        stop_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-4000:]
    assert "SIGTERM, shutting down" in out and "stopped" in out, out[-4000:]
    print(f"seem serve stopped {stop_s:.1f} s after SIGTERM to its process group")
    assert stop_s < 20, f"stopping took {stop_s:.1f} s (goal: a few seconds; the floor here allows a loaded machine)"


def _half_sent_bodies(base: str, port: int, sha: str) -> None:
    """1. Half-sent bodies: the API stays up while they hang, and each is cut off (408)."""
    socks = _slow_bodies(port, SLOW_CLIENTS)
    try:
        started = time.monotonic()
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        ok = _segment(base, sha, [{"type": "point", "xy": [30, 30]}], timeout=30)
        assert ok.status_code == 200, ok.text
        assert time.monotonic() - started < 20, "a normal request waited behind the slow bodies"
        answers = [_status_line(s, BODY_TIMEOUT_S + 15) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(" 408 " in a for a in answers), sorted(set(answers))


def _huge_headers_and_rle_bomb(base: str, sha: str) -> None:
    """2. A 1 MB header block: refused at once, nothing kept. 3. The 165-byte RLE bomb:
    refused in < 1 s; a normal request is unaffected."""
    r = requests.get(base + "/healthz", headers={"X-Big": "a" * (1 << 20)}, timeout=30)
    assert r.status_code in (400, 431), r.status_code
    assert requests.get(base + "/healthz", timeout=5).status_code == 200
    bomb = {"type": "mask", "rle": {"size": [46340, 46340], "counts": "`PZmoo1"}}
    started = time.monotonic()
    r = _segment(base, sha, [bomb])
    assert r.status_code == 422 and time.monotonic() - started < 1.0, (r.status_code, r.text)
    assert _segment(base, sha, [{"type": "point", "xy": [25, 25]}]).status_code == 200


def _bad_values(base: str, sha: str) -> None:
    """4. Booleans are not coordinates; 5. an image over every limit is 413 too_many_pixels."""
    r = _segment(base, sha, [{"type": "point", "xy": [True, False]}])
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    r = requests.post(base + "/v1/images", data=buf.getvalue(), headers={**AUTH, "Content-Type": "image/png"},
                      timeout=60)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_many_pixels"), r.text


def _replica_killed_under_load(base: str, sha: str, serve_pid: int) -> None:
    """6. A decoder replica killed under load: 503 + Retry-After (or a retried 200), never 500."""
    victims = _decoder_pids(serve_pid)
    assert victims, "no decoder replica process found"
    codes = []
    for i in range(8):
        if i == 1:
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
        r = _segment(base, sha, [{"type": "point", "xy": [10 + i, 10]}], timeout=60)
        codes.append(r.status_code)
        if r.status_code == 503:
            assert r.headers.get("retry-after"), r.headers
    assert set(codes) <= {200, 503}, codes


@pytest.mark.parametrize("host", ["0.0.0.0"])
def test_open_bind_without_keys_refuses_to_start(tmp_path: Path, host: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SEEM_API_KEYS", "RAY_ADDRESS")}
    proc = subprocess.Popen(_seem_command() + ["serve", "--host", host, "--port", str(free_port())], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)  # it must refuse before starting anything
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 2, out + err
    assert "without API keys" in err and "--insecure" in err
