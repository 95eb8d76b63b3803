"""Shared pytest configuration. Fixture modules are registered as plugins here so every
test directory can use them without importing anything.

The suite runs on two pytest-xdist workers (`make test`): most of its wall time is spent
waiting for Ray, Serve, Chromium and subprocesses, not computing, so two workers on two
cores roughly halve it. Tests are grouped so that a package's shared Ray or Serve session
(package-scoped fixtures) starts once, on one worker, and a module's fixtures once.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_server", "tests.s3_faults", "tests.speech_corpus"]

# Packages whose tests share one Ray (or Ray + Serve) session through package-scoped
# fixtures, or start multi-node clusters: each runs whole on one worker.
_WHOLE_PACKAGES = {"pipeline", "serving", "cluster", "infra"}
_TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    # A bare ray.init() joins the newest cluster `ray start` left on this machine (a
    # cluster test's head, on the other worker): every Ray a test starts must be its own.
    os.environ.setdefault("RAY_ADDRESS", "local")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(_TESTS.resolve())
        group = rel.parts[0] if rel.parts[0] in _WHOLE_PACKAGES else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
