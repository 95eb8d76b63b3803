"""Output writers: categories, errors, masks.parquet / COCO from per-image results, overlays."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO

from model.rle import encode_mask
from pipeline import exports
from pipeline.stages import SEGMENTED_SCHEMA
from store.backends import LocalStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _mask_row(index: int, mask: np.ndarray, label: str, cat: int, source: str = "panoptic") -> dict:
    ys, xs = np.nonzero(mask)
    return {"index": index, "source": source, "prompt": label if source == "text" else None, "label": label,
            "class_label": label, "category_id": cat, "score": 0.5 + index / 10, "label_score": 0.9,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "area": int(mask.sum()), "rle_counts": encode_mask(mask)["counts"]}


def _segmented() -> pa.Table:
    a = np.zeros((20, 30), bool)
    a[2:8, 3:10] = True
    b = np.zeros((20, 30), bool)
    b[10:, :] = True
    c = np.zeros((5, 7), bool)
    c[1:3, 1:6] = True
    rows = [
        {"image_id": 1, "uri": "/d/a.png", "sha256": "a" * 64, "width": 30, "height": 20, "status": "ok",
         "error": None, "masks": [_mask_row(1, b, "sky", 3), _mask_row(0, a, "circle", 1)], "overlay": None,
         "reencoded": False},
        {"image_id": 2, "uri": "/d/b.png", "sha256": "b" * 64, "width": 7, "height": 5, "status": "ok",
         "error": None, "masks": [_mask_row(0, c, "red thing", 4, "text")], "overlay": "overlays/b.png",
         "reencoded": False},
    ]
    return pa.Table.from_pylist(rows, schema=SEGMENTED_SCHEMA)


def test_categories_errors_and_split():
    cats = exports.build_categories(["circle", "square", "sky"], {"sky"}, ["sky", "red thing"])
    assert [(c["id"], c["name"], c["isthing"]) for c in cats] == [(1, "circle", 1), (2, "square", 1), (3, "sky", 0),
                                                                   (4, "red thing", 1)]
    assert [c["name"] for c in exports.build_categories(["circle"], (), ["red"], panoptic=False)] == ["red"]
    assert exports.split_error("decode: truncated JPEG data: x") == ("decode", "truncated JPEG data: x")
    assert exports.split_error("weird message: with colon") == ("unknown", "weird message: with colon")
    errors = exports.errors_table([("/z.jpg", "read: gone"), ("/a.jpg", "decode: empty file (0 bytes)"),
                                   ("/z.jpg", "decode: later duplicate")])
    no_entry = {"line": None, "annotation_id": None, "prompt_id": None}  # image errors, not a prompts file's
    assert errors.to_pylist() == [{"uri": "/a.jpg", "stage": "decode", "reason": "empty file (0 bytes)", **no_entry},
                                  {"uri": "/z.jpg", "stage": "read", "reason": "gone", **no_entry}]


def test_masks_and_coco_round_trip(tmp_path):
    seg = _segmented()
    masks = exports.masks_table(seg)
    assert masks.schema == exports.MASKS_SCHEMA
    rows = masks.to_pylist()
    assert [(r["uri"], r["index"], r["mask_id"]) for r in rows] == [("/d/a.png", 0, 1), ("/d/a.png", 1, 2),
                                                                     ("/d/b.png", 0, 3)]
    cats = exports.build_categories(["circle", "square", "sky"], {"sky"}, ["red thing"])
    doc = exports.coco_document(seg, masks, cats, {"model_id": "m"})
    out = LocalStore(str(tmp_path / "out"))
    files = exports.write_outputs(out, masks, exports.errors_table([]), doc)
    assert set(files) == {"masks.parquet", "errors.parquet", "annotations.json"}
    coco = COCO(files["annotations.json"])
    for ann, row in zip(coco.loadAnns(coco.getAnnIds()), rows):
        m = coco.annToMask(ann)
        assert m.sum() == ann["area"] == row["area"] and ann["bbox"] == list(row["bbox"])
    assert coco.imgs[2]["overlay"] == "overlays/b.png" and "overlay" not in coco.imgs[1]
    back = pq.read_table(files["masks.parquet"])
    assert back.equals(masks)
    assert pq.read_table(files["errors.parquet"]).schema == exports.ERRORS_SCHEMA
    # Same inputs, same bytes.
    before = {k: open(v, "rb").read() for k, v in files.items()}
    exports.write_outputs(out, exports.masks_table(seg), exports.errors_table([]),
                          json.loads(json.dumps(exports.coco_document(seg, masks, cats, {"model_id": "m"}))))
    assert {k: open(v, "rb").read() for k, v in files.items()} == before


def test_overlay_draws_masks_and_labels():
    image = np.full((120, 200, 3), 128, np.uint8)
    mask = np.zeros((120, 200), bool)
    mask[20:100, 30:150] = True
    png = exports.render_overlay(image, [mask], ["a label"])
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert out.shape == (120, 200, 3)
    assert np.abs(out[5, 5] - 128).max() <= 1  # outside any mask: untouched
    inside = out[25:35, 35:45].reshape(-1, 3)
    assert np.abs(inside - 128).max() > 20  # tinted
    label_box = out[50:70, 60:120]
    assert (label_box.max(axis=-1) < 40).any() and (label_box.min(axis=-1) > 200).any()  # dark box, white text
    big = exports.render_overlay(np.zeros((2000, 3000, 3), np.uint8), [np.ones((2000, 3000), bool)], ["x"])
    assert Image.open(io.BytesIO(big)).size == (1600, 1067)  # drawn scaled down
    colors = exports.palette(12)
    assert len(set(colors)) == 12
