"""Start or join Ray, by one rule for every `seem` command: an address (given, or in
RAY_ADDRESS as `ray job submit` sets it) is joined; no address means a new local Ray.

A bare `ray.init()` would join whatever cluster `ray start` left on this machine (it
reads /tmp/ray/ray_current_cluster), and our shutdown would then stop work there, so
"no address" is spelled "local". Ray gives a new local node's raylet a fixed 30 s to
register; a loaded machine can miss that window, so a local start is tried again (up to
START_ATTEMPTS times). A given address is never retried: that error is the user's to see.

This package imports nothing of ours; pipeline/, serving/ and training/ use it.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

__all__ = ["START_ATTEMPTS", "LOCAL", "missed_startup_window", "start_or_join", "target_address"]

log = logging.getLogger(__name__)

LOCAL = "local"
START_ATTEMPTS = 3
_STARTUP_TIMEOUT = "timed out during startup"  # Ray raises a bare Exception with this text


def target_address(address: str | None = None) -> str | None:
    """The cluster to join: `address`, else RAY_ADDRESS, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def missed_startup_window(exc: BaseException) -> bool:
    """Whether `exc` is Ray's error for a new node whose raylet did not register in time."""
    return _STARTUP_TIMEOUT in str(exc)


def start_or_join(address: str | None = None, *, local_options: Mapping[str, Any] | None = None,
                  **options: Any) -> bool:
    """`ray.init` on `target_address(address)`, or on a new local Ray when there is none.

    `options` go to every `ray.init`; `local_options` only to a local start (resources,
    ports: a cluster that already runs has its own). Returns True when a new local Ray was
    started (this process owns it and should shut it down), False when it joined one.
    """
    import ray

    target = target_address(address)
    if target == LOCAL:
        target = None
    init = dict(options, address=target or LOCAL, **({} if target else dict(local_options or {})))
    own = target is None
    for attempt in range(1, START_ATTEMPTS):
        try:
            ray.init(**init)
            return own
        except Exception as exc:  # noqa: BLE001 - see _STARTUP_TIMEOUT
            if not own or not missed_startup_window(exc):
                raise
            log.warning("Ray's local node did not register within Ray's 30 s (try %d of %d); starting it again",
                        attempt, START_ATTEMPTS)
            ray.shutdown()
    ray.init(**init)  # the last try: its error is the caller's
    return own
