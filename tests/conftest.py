"""Shared pytest configuration. Fixture modules are registered as plugins here so every
test directory can use them without importing anything.

The suite runs on two pytest-xdist workers (`make test`): much of its wall time is spent
waiting for Ray, Serve, Chromium and subprocesses, not computing. On two cores two workers
ran it in 19-21 minutes; three were slower (24 minutes: their Ray clusters contend). Tests
are grouped so that a shared session starts once, on one worker: the tests that use a package's shared Ray,
Serve or multi-node cluster fixture form one group each, and every other test stays with
its file (module-scoped fixtures start once).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_server", "tests.s3_faults", "tests.speech_corpus"]

# Package-scoped fixtures that start a Ray session, Ray + Serve, or a multi-node cluster.
_SHARED_SESSIONS = ("serving", "ray_address", "local_cluster")
_TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    # A bare ray.init() joins the newest cluster `ray start` left on this machine (a
    # cluster test's head, on another worker): every Ray a test starts must be its own.
    os.environ.setdefault("RAY_ADDRESS", "local")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(_TESTS.resolve())
        shared = [name for name in _SHARED_SESSIONS if name in getattr(item, "fixturenames", ())]
        group = f"{rel.parts[0]}:{shared[0]}" if shared else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
