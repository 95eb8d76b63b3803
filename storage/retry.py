"""Retries with exponential backoff and full jitter: the one place storage calls repeat.

`with_retries(call, policy=..., what=...)` runs `call` until it returns, raises an error
that is not retryable (`errors.RETRYABLE`), has used `policy.attempts` tries, or would
wait past `policy.budget_s` since the first try (minutes by default: an S3 outage of a
few minutes is waited out, not turned into failed images or an aborted job). The
pause before retry n (1-based) is uniform in [0, min(max_delay_s, base_delay_s * 2**(n-1))]
("full jitter"): many workers hitting the same throttled bucket spread out instead of
retrying in lock-step.

The policy is process-wide (`set_retry_policy`, or the environment variables below, which
Ray workers inherit) or given per store. Every retry and every give-up is counted in
`retry_counts()` so a job can report how often storage was flaky.

Environment: SEEM_STORAGE_RETRY_MINUTES (the budget, default 5), SEEM_STORAGE_ATTEMPTS
(total tries, default 1000: the budget is what normally ends the retries),
SEEM_STORAGE_BACKOFF_S (base delay, default 0.1), SEEM_STORAGE_MAX_BACKOFF_S (cap,
default 5).
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import RETRYABLE

__all__ = ["RetryPolicy", "with_retries", "retry_counts", "reset_retry_counts", "set_retry_policy", "default_policy"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a failed storage call."""

    attempts: int = 1000  # total tries, the first included; 1 = no retries
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    budget_s: float = 300.0  # no retry starts later than this after the first try

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.budget_s < 0:
            raise ValueError("backoff delays and the retry budget must be >= 0")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based), with full jitter."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (retry - 1)))
        return (rng or random).uniform(0.0, ceiling)


def _policy_from_env() -> RetryPolicy:
    env = os.environ
    try:
        return RetryPolicy(
            attempts=int(env.get("SEEM_STORAGE_ATTEMPTS", 1000)),
            base_delay_s=float(env.get("SEEM_STORAGE_BACKOFF_S", 0.1)),
            max_delay_s=float(env.get("SEEM_STORAGE_MAX_BACKOFF_S", 5.0)),
            budget_s=60 * float(env.get("SEEM_STORAGE_RETRY_MINUTES", 5)),
        )
    except ValueError as e:
        raise ValueError(f"invalid SEEM_STORAGE_* retry setting: {e}") from None


_policy: RetryPolicy | None = None
_counts = {"retries": 0, "gave_up": 0}
_lock = threading.Lock()


def default_policy() -> RetryPolicy:
    """The process-wide policy: `set_retry_policy`'s, else the environment's."""
    global _policy
    if _policy is None:
        _policy = _policy_from_env()
    return _policy


def set_retry_policy(policy: RetryPolicy | None) -> None:
    """Use `policy` for every store without its own; None re-reads the environment."""
    global _policy
    _policy = policy


def retry_counts() -> dict[str, int]:
    """Retries made and calls given up (retryable errors that outlived the policy) in
    this process since the last reset."""
    with _lock:
        return dict(_counts)


def reset_retry_counts() -> dict[str, int]:
    """Zero the counters; returns their values before."""
    with _lock:
        before = dict(_counts)
        for name in _counts:
            _counts[name] = 0
        return before


def _count(name: str) -> None:
    with _lock:
        _counts[name] += 1


def with_retries(call: Callable[[], T], *, policy: RetryPolicy | None = None, what: str = "storage call",
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, repeated after retryable storage errors as `policy` allows."""
    policy = policy or default_policy()
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except RETRYABLE as e:
            pause = policy.delay(attempt)
            if attempt == policy.attempts or time.monotonic() + pause - started > policy.budget_s:
                _count("gave_up")
                raise
            _count("retries")
            log.info("%s: %s; retry %d/%d in %.2f s", what, e, attempt, policy.attempts - 1, pause)
            sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises
