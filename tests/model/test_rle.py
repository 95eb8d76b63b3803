"""COCO RLE helpers: round trips, accepted forms, malformed input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from model.rle import area, bbox, decode_mask, encode_mask, normalize_rle

# pycocotools' decode trips a numpy 2 deprecation inside its own code; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((7, 5), bool)  # empty
    yield np.ones((4, 9), bool)  # full
    one = np.zeros((6, 6), bool)
    one[5, 5] = True
    yield one  # single pixel, last position
    first = np.zeros((3, 8), bool)
    first[0, 0] = True
    yield first  # single pixel, first position (counts start with 0)
    yield np.ones((1, 1), bool)
    yield np.zeros((1, 1), bool)
    for _ in range(40):
        h, w = rng.integers(1, 60, 2)
        yield rng.random((h, w)) < rng.random()
    big = np.zeros((480, 640), bool)
    big[100:300, 50:600] = True  # long runs exercise multi-char counts
    yield big


def test_round_trip():
    for mask in _masks():
        rle = encode_mask(mask)
        assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
        json.dumps(rle)  # JSON-ready
        back = decode_mask(rle)
        assert back.dtype == bool and back.shape == mask.shape and back.flags.c_contiguous
        assert np.array_equal(back, mask)
        assert area(rle) == int(mask.sum())
        ys, xs = np.nonzero(mask)
        expected = [0, 0, 0, 0] if len(xs) == 0 else [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert bbox(rle) == [int(v) for v in expected]


def test_matches_pycocotools_and_accepts_bytes():
    mask = np.random.default_rng(1).random((33, 21)) < 0.3
    ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_mask(mask)["counts"] == ref["counts"].decode()
    assert np.array_equal(decode_mask(ref), mask)  # bytes counts


def test_non_bool_masks():
    assert np.array_equal(decode_mask(encode_mask(np.array([[0, 2], [0, 1]]))), [[False, True], [False, True]])
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 2)))


def test_uncompressed_rle():
    mask = np.zeros((3, 4), bool)
    mask[1:, 2] = True  # column-major runs: 8 off, 2 on, 2 off... (col 2 rows 1,2)
    counts = [7, 2, 3]
    assert np.array_equal(decode_mask({"size": [3, 4], "counts": counts}), mask)
    assert area({"size": [3, 4], "counts": counts}) == 2
    assert normalize_rle({"size": [3, 4], "counts": counts})["counts"] == encode_mask(mask)["counts"].encode()


@pytest.mark.parametrize(
    "rle, message",
    [
        ("not a dict", "object"),
        ({"counts": "0"}, "size"),
        ({"size": [2, 2]}, "counts"),
        ({"size": [2], "counts": "4"}, "size"),
        ({"size": [2, -2], "counts": "4"}, "positive"),
        ({"size": ["2", 2], "counts": "4"}, "integers"),
        ({"size": [2.5, 2], "counts": "4"}, "integers"),
        ({"size": [True, 2], "counts": "4"}, "integers"),
        ({"size": [100000, 100000], "counts": "4"}, "too large"),
        ({"size": [2, 2], "counts": "5"}, "cover 5 pixels but size is 4"),  # sum too large
        ({"size": [2, 2], "counts": "3"}, "cover 3"),  # sum too small
        ({"size": [2, 2], "counts": "4~"}, "invalid character"),
        ({"size": [2, 2], "counts": "4 "}, "invalid character"),
        ({"size": [2, 2], "counts": "é"}, "ASCII"),
        ({"size": [2, 2], "counts": "Q"}, "middle of a number"),  # continuation bit, no more chars
        ({"size": [2, 2], "counts": "000O"}, "negative"),  # 4th run: delta -1 against 0
        ({"size": [2, 2], "counts": "O"}, "negative"),  # sign bit on the first run
        ({"size": [2, 2], "counts": [1, -1, 4]}, "negative"),
        ({"size": [2, 2], "counts": [1, 2]}, "cover 3"),
        ({"size": [2, 2], "counts": [1.5, 2.5]}, "integers"),
        ({"size": [2, 2], "counts": 4}, "string or a list"),
    ],
)
def test_malformed(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_mask(rle)


def test_huge_counts_rejected_before_pycocotools():
    # A counts string claiming far more pixels than the mask has would make the C
    # decoder write out of bounds; it must be refused in Python first.
    evil = mask_utils.encode(np.asfortranarray(np.ones((50, 50), np.uint8)))["counts"]
    with pytest.raises(ValueError, match="cover 2500 pixels but size is 4"):
        decode_mask({"size": [2, 2], "counts": evil})
