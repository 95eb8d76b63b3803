"""COCO run-length encoding of binary masks, through pycocotools.

The wire format everywhere (HTTP API, masks.parquet, annotations.json) is COCO's
*compressed* RLE: ``{"size": [h, w], "counts": "<ascii>"}`` with counts in column-major
(Fortran) order. `decode_mask` also accepts counts as bytes and *uncompressed* RLE
(``"counts": [n0, n1, ...]``, as COCO's iscrowd annotations use).

Input from clients is validated here before pycocotools sees it: its C decoder trusts
the counts and writes past the mask for counts that sum to more than h * w. Malformed
RLE raises `ValueError` with a message fit for an HTTP 4xx.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as _mask_utils

__all__ = ["encode_mask", "decode_mask", "normalize_rle", "area", "bbox", "RLE"]

RLE = dict[str, Any]
# pycocotools stores h * w in a C `unsigned int`; stay well inside it.
_MAX_PIXELS = (1 << 31) - 1


def _check_size(size: Any) -> tuple[int, int]:
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    def as_int(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)):
            raise ValueError(f"RLE 'size' must be two integers, got {size!r}")
        if isinstance(v, (float, np.floating)) and not float(v).is_integer():
            raise ValueError(f"RLE 'size' must be two integers, got {size!r}")
        return int(v)

    h, w = as_int(size[0]), as_int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"RLE 'size' must be positive, got [{h}, {w}]")
    if h * w > _MAX_PIXELS:
        raise ValueError(f"RLE 'size' [{h}, {w}] is too large")
    return h, w


def _parse_counts_string(counts: bytes, total: int) -> None:
    """Validate COCO's compressed counts string (the LEB128-like 6-bit encoding).

    Each count is a run of 5-bit groups, least significant first, in chars 48..111;
    bit 0x20 marks "more groups follow", bit 0x10 of the last group is the sign; from the
    fourth count on, values are deltas against the count two places earlier.
    """
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError("RLE 'counts' string ends in the middle of a number")
            c = counts[pos] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE 'counts' has an invalid character {chr(counts[pos])!r} at {pos}")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if shift > 70:
                raise ValueError("RLE 'counts' has a number that is too long")
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend the last group
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"RLE 'counts' decodes to a negative run ({value}) at run {len(runs)}")
        runs.append(value)
    if sum(runs) != total:
        raise ValueError(f"RLE 'counts' cover {sum(runs)} pixels but size is {total}")


def normalize_rle(rle: Mapping[str, Any]) -> RLE:
    """Validate any accepted RLE form; return compressed RLE with bytes counts
    (pycocotools' in-memory form). Raises ValueError on malformed input."""
    if not isinstance(rle, Mapping):
        raise ValueError(f"RLE must be an object with 'size' and 'counts', got {type(rle).__name__}")
    if "size" not in rle or "counts" not in rle:
        raise ValueError("RLE must have 'size' and 'counts'")
    h, w = _check_size(rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("RLE 'counts' string must be ASCII") from None
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts)
        if len(counts) > h * w + 1:  # every run takes at least one character; at most h * w + 1 runs
            raise ValueError(f"RLE 'counts' has {len(counts)} characters, more than a {h} x {w} mask can need")
        _parse_counts_string(counts, h * w)
        return {"size": [h, w], "counts": counts}
    if isinstance(counts, Sequence) or isinstance(counts, np.ndarray):
        if len(counts) > h * w + 1:
            raise ValueError(f"RLE 'counts' has {len(counts)} runs, more than a {h} x {w} mask can have")
        values = list(counts)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError("uncompressed RLE 'counts' must be a list of integers")
        if any(v < 0 for v in values):
            raise ValueError("uncompressed RLE 'counts' has a negative run")
        if sum(int(v) for v in values) != h * w:
            raise ValueError(f"RLE 'counts' cover {sum(int(v) for v in values)} pixels but size is {h * w}")
        compressed = _mask_utils.frPyObjects({"size": [h, w], "counts": [int(v) for v in values]}, h, w)
        return {"size": [h, w], "counts": compressed["counts"]}
    raise ValueError(f"RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}")


def encode_mask(mask: np.ndarray) -> RLE:
    """Binary H x W mask (bool, or numbers where nonzero is inside) -> compressed RLE
    with ASCII `str` counts, ready for JSON."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {arr.shape}")
    h, w = arr.shape
    _check_size([h, w])
    fortran = np.asfortranarray(arr != 0, dtype=np.uint8)
    rle = _mask_utils.encode(fortran)
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping[str, Any], expected_size: Sequence[int] | None = None) -> np.ndarray:
    """RLE (compressed str/bytes counts or uncompressed list counts) -> H x W bool,
    C-contiguous. Raises ValueError on malformed RLE.

    `expected_size` ([height, width]): the RLE's size must equal it, checked before any
    count is read or any pixel allocated (a 165-byte RLE may claim 46340 x 46340 pixels).
    """
    if expected_size is not None and isinstance(rle, Mapping):
        size = _check_size(rle.get("size"))
        if list(size) != [int(v) for v in expected_size]:
            raise ValueError(f"mask size {list(size)} differs from the image's [height, width] = "
                             f"{[int(v) for v in expected_size]}")
    compressed = normalize_rle(rle)
    return np.ascontiguousarray(_mask_utils.decode(compressed), dtype=bool)


def area(rle: Mapping[str, Any]) -> int:
    """Number of pixels inside the mask."""
    return int(_mask_utils.area(normalize_rle(rle)))


def bbox(rle: Mapping[str, Any]) -> list[int]:
    """COCO box [x, y, width, height] of the mask (integers; zeros for an empty mask)."""
    return [int(v) for v in _mask_utils.toBbox(normalize_rle(rle))]
