"""Small helpers the tests and the benchmarks under bench/ share (both run from a checkout).

Only what a test or a benchmark needs around the system, never the system itself.
"""
from __future__ import annotations

import io
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_bytes(image: np.ndarray) -> bytes:
    """An H x W x 3 uint8 array as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def descendants(pid: int) -> list[int]:
    """Process ids below `pid` (children, grandchildren, ...), from /proc (Linux)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may contain spaces.
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of `fn()` in milliseconds over `repeats` calls, after `warmup` calls
    (wall time, or e.g. `time.process_time` for this process's CPU time)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times) * 1000
