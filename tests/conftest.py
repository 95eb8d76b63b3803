"""Shared pytest configuration. Fixture modules are registered as plugins here so every
test directory can use them without importing anything.

The suite runs on two pytest-xdist workers (`make test`): much of its wall time is spent
waiting for Ray, Serve, Chromium and subprocesses, not computing. On two cores two workers
ran it in 19-21 minutes; three were slower (24 minutes: their Ray clusters contend). Tests
are grouped so that a shared session starts once, on one worker: the tests that use a package's shared Ray,
Serve or multi-node cluster fixture form one group each, and every other test stays with
its file (module-scoped fixtures start once). The longest groups are handed out first
(LONGEST_GROUPS_FIRST).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_server", "tests.s3_faults", "tests.speech_corpus"]

# Package-scoped fixtures that start a Ray session, Ray + Serve, or a multi-node cluster.
_SHARED_SESSIONS = ("serving", "ray_address", "local_cluster")
_TESTS = Path(__file__).parent


#: The longest groups, longest first (from the clean-clone CI runs' durations, 2 workers:
#: several minutes each down to ~1.5). xdist hands a worker a whole group at a time, and
#: by default in order of test count, which put these few-test groups last: a 3-test,
#: 6-minute group that starts near the end decides the suite's wall time. Started first,
#: the many short groups fill in around them. Groups not named here follow, most tests first.
LONGEST_GROUPS_FIRST = (
    "pipeline:ray_address/1", "pipeline:ray_address/2", "cluster:local_cluster", "serving:serving",
    "serving/test_cli.py",
    "serving/test_attacks.py", "training/test_train.py", "video/test_video_session.py",
    "training/test_evaluate.py", "infra/test_metrics_exported.py", "infra/test_bench_gpu.py",
    "model/test_checkpoint.py", "model/test_predictor.py", "video/test_video_cli.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # A bare ray.init() joins the newest cluster `ray start` left on this machine (a
    # cluster test's head, on another worker): every Ray a test starts must be its own.
    os.environ.setdefault("RAY_ADDRESS", "local")
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order set below
        config.option.loadscopereorder = False


#: A shared session whose tests take too long for one worker, split by file into halves
#: (/1 and /2), each with its own session: pipeline's shared-Ray tests ran 900 s in a row
#: at load 11, longer than every other group together on the other worker. These files
#: are the second half (~450 s).
SECOND_HALF = {"pipeline:ray_address": {"pipeline/test_prompts_job.py", "pipeline/test_kill.py",
                                        "pipeline/test_s3_faults.py", "pipeline/test_quality.py",
                                        "pipeline/test_exports.py"}}


def _group(item: pytest.Item) -> str:
    rel = Path(str(item.path)).resolve().relative_to(_TESTS.resolve())
    shared = [name for name in _SHARED_SESSIONS if name in getattr(item, "fixturenames", ())]
    if not shared:
        return str(rel)
    group = f"{rel.parts[0]}:{shared[0]}"
    if group in SECOND_HALF:
        group += "/2" if rel.as_posix() in SECOND_HALF[group] else "/1"
    return group


def _join_group(item: pytest.Item, group: str) -> None:
    """Put `item` in xdist's `group`: loadgroup schedules by the part of a test's id after
    its last "@". xdist 3.8 adds that suffix by setting `item._nodeid`, which pytest 9 no
    longer reads (the id lives in `item._id`), so with pytest 9 no test had a group: each
    was scheduled alone, and both workers started their own Ray, Serve and cluster."""
    item.add_marker(pytest.mark.xdist_group(group))
    if "@" not in item.nodeid and hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(f"{item.nodeid}@{group}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {id(item): _group(item) for item in items}
    for item in items:
        if getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
            _join_group(item, groups[id(item)])
        else:
            item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
    sizes = Counter(groups.values())
    rank = {name: i for i, name in enumerate(LONGEST_GROUPS_FIRST)}
    items.sort(key=lambda item: (rank.get(groups[id(item)], len(rank)), -sizes[groups[id(item)]]))
