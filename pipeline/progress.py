"""Progress bars and end-of-job summaries for the bulk jobs.

Bars go to stderr through tqdm and only when stderr is a terminal (or when forced), so
logs and tests stay clean; the summary is one block of plain text on stdout.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Progress", "EncodeSummary", "SegmentSummary", "PromptSummary"]


class Progress:
    """A counter with an optional tqdm bar: `update(n)` as items finish."""

    def __init__(self, total: int, desc: str, *, enabled: bool | None = None, unit: str = "img") -> None:
        self.total = total
        self.count = 0
        self.started = time.perf_counter()
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar = None
        if enabled and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, **postfix: Any) -> None:
        self.count += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EncodeSummary:
    """What an encode pass did. `done` = encoded + reused (features now in the store);
    `skipped` = unchanged since the manifest's last row; images_per_s = processed items
    (done + failed) per second of pipeline time (listing and Ray start-up excluded)."""

    run_id: str
    model_id: str
    store: str
    listed: int = 0
    skipped: int = 0
    encoded: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0
    manifest_parts: int = 0
    manifest_quarantined: int = 0  # damaged manifest parts moved aside; their images redone
    storage_retries: int = 0  # storage calls repeated after throttling or transient errors (all nodes)

    @property
    def done(self) -> int:
        return self.encoded + self.reused

    @property
    def images_per_s(self) -> float:
        processed = self.done + self.failed
        return processed / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(done=self.done, images_per_s=self.images_per_s)
        return d

    def lines(self) -> list[str]:
        return [
            f"model {self.model_id}, store {self.store}, run {self.run_id}",
            f"encode: {self.listed} listed | done {self.done} (encoded {self.encoded}, reused {self.reused}) | "
            f"skipped {self.skipped} | failed {self.failed} | {self.seconds:.1f} s | "
            f"{self.images_per_s:.2f} images/s"
            + (f" | {self.storage_retries} storage retries" if self.storage_retries else ""),
        ] + ([f"manifest: {self.manifest_quarantined} damaged part(s) moved to quarantine/; their images were done again"]
             if self.manifest_quarantined else [])


@dataclass
class SegmentSummary:
    """What a segment job did (its encode pass included)."""

    encode: EncodeSummary
    out: str
    segmented: int = 0
    failed: int = 0
    masks: int = 0
    reencoded: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        processed = self.segmented + self.failed
        return processed / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encode"] = self.encode.as_dict()
        d["images_per_s"] = self.images_per_s
        return d

    def result_line(self) -> str:
        return (f"segment: {self.segmented} images, {self.masks} masks | failed {self.failed} "
                f"(any stage) | {self.seconds:.1f} s | {self.images_per_s:.2f} images/s")

    def lines(self) -> list[str]:
        reencoded = f" | {self.reencoded} re-encoded (features missing or damaged)" if self.reencoded else ""
        return self.encode.lines() + [self.result_line() + reencoded] + [
            f"  {name:<17} {path}" for name, path in self.files.items()]


@dataclass
class PromptSummary(SegmentSummary):
    """What a prompted segment job did: `entries` read from the prompts file (lines or
    annotations, broken ones included), `decoded` by this run, `cached` from earlier runs."""

    entries: int = 0
    decoded: int = 0
    cached: int = 0

    @property
    def masks_per_s(self) -> float:
        return self.decoded / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d["masks_per_s"] = self.masks_per_s
        return d

    def result_line(self) -> str:
        return (f"prompts: {self.entries} entries on {self.segmented} images | {self.masks} masks | "
                f"failed {self.failed} | decoded {self.decoded}, from earlier runs {self.cached} | "
                f"{self.seconds:.1f} s | {self.masks_per_s:.1f} decoded/s")
