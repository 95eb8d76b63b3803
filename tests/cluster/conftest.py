"""A real multi-node Ray cluster on this machine, sharing nothing but S3.

`ray.cluster_utils.Cluster` starts a head node that runs nothing (0 CPUs: only the GCS
and the drivers' raylet) and worker nodes of 1 CPU, each a separate raylet with its own
object store and worker processes, as cloud nodes would be. The feature store, the
sources and the outputs live in a bucket on the moto S3 server (tests/s3_server.py),
so a node lost takes nothing with it that another node needs.

The nodes start after the S3 server, so their workers inherit its endpoint and dummy
credentials from the environment. Only processes this fixture started are ever killed.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from rayinit import missed_startup_window
from tests.support import descendants

WORKER_NODE = {"num_cpus": 1, "object_store_memory": 96 << 20}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


@dataclass
class LocalCluster:
    """The running cluster: its address and the worker nodes still alive."""

    cluster: Any
    workers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self) -> Any:
        node = _start_node(self.cluster, **WORKER_NODE)
        self.workers.append(node)
        self.cluster.wait_for_nodes(timeout=60)
        return node

    def ensure_workers(self, count: int) -> None:
        """Replace lost nodes, as an autoscaler would: `count` live worker nodes."""
        while len(self.workers) < count:
            self.add_worker()

    def node_running(self, actor_class: str) -> Any | None:
        """The worker node one of whose processes is an actor of `actor_class` (Ray
        titles actor processes after their class), or None."""
        for node in self.workers:
            raylet = node.all_processes["raylet"][0].process.pid
            if any(actor_class.encode() in _cmdline(pid) for pid in descendants(raylet)):
                return node
        return None

    def hard_kill(self, node: Any) -> None:
        """SIGKILL a node's raylet and every worker under it at once (no clean-up: a
        spot instance taken away), then let the cluster forget it."""
        raylet = node.all_processes["raylet"][0].process.pid
        for pid in [raylet, *descendants(raylet)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)


def _start_node(cluster: Any, **args: Any) -> Any:
    """`cluster.add_node(**args)`, tried again when the raylet misses Ray's fixed 30 s
    registration deadline (it does on a heavily loaded 2-core machine)."""
    for attempt in (1, 2, 3):
        try:
            return cluster.add_node(**args)
        except Exception as e:
            if not missed_startup_window(e) or attempt == 3:
                raise


@pytest.fixture(scope="package")
def local_cluster(s3_server: str) -> Iterator[LocalCluster]:
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Serve's proxy (on the head) runs serving.proxy_guard, as `seem serve` and KubeRay set it up.
    from serving.proxy_guard import CALLBACK_ENV, CALLBACK_PATH

    os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)
    cluster = Cluster()
    # The GCS declares a silent node dead after `threshold` failed health checks `period`
    # apart (Ray's defaults: 5 x 3 s). A hard-killed node's raylet refuses at once, so the
    # checks fail fast; 5 x 1 s lets the tests' jobs and replicas move on ~10 s sooner,
    # and each check still waits Ray's 10 s for a busy node's answer.
    _start_node(cluster, num_cpus=0, object_store_memory=96 << 20, include_dashboard=False,
                _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 5})
    handle = LocalCluster(cluster)
    try:
        handle.ensure_workers(2)
        yield handle
    finally:
        cluster.shutdown()


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
