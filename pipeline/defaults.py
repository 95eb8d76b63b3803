"""Defaults shared by the jobs and the CLI, kept import-free so `seem --help` stays fast.

The stored feature format is decided by measurement: see "Feature store format" in
docs/benchmarks.md for the table behind these three values.
"""
from __future__ import annotations

from store.formats import DEFAULT_STORE_CODEC

FEATURE_STAGE = "pixel_decoder"
FEATURE_DTYPE = "float16"
FEATURE_CODEC = DEFAULT_STORE_CODEC  # serving writes with the same
