"""End to end on a local Ray with a local folder as the store: segment a mixed corpus,
re-run (no encoder work, identical outputs), grow the source, change the model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from model.image_io import decode_image
from pipeline.jobs import EncodeOptions, SegmentOptions, encode_job, segment_job
from pipeline.stages import ModelSpec
from store import FeatureStore

from .conftest import SAMPLES, write_png

pytestmark = [pytest.mark.timeout(420), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TEXTS = ("a red circle", "the blue square")


def _opts(model: ModelSpec) -> EncodeOptions:
    return EncodeOptions(model=model, progress=False, batch_size=4)


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("masks.parquet", "annotations.json", "errors.parquet")}


def test_local_end_to_end_rerun_grow_and_new_model(ray_address, mixed_source, tmp_path, panoptic_config):
    root, valid, broken = mixed_source
    src = tmp_path / "src"
    shutil.copytree(root, src)
    store, out = tmp_path / "store", tmp_path / "out"
    model = ModelSpec(name=panoptic_config)  # panoptic masks even with random weights

    # ---------------------------------------------------------------- first run
    summary = segment_job(str(src), str(out), str(store), SegmentOptions(vocabulary=_vocab(model), texts=TEXTS,
                                                                        overlays=True), _opts(model))
    enc = summary.encode
    assert (enc.listed, enc.encoded, enc.reused, enc.skipped, enc.failed) == (len(valid) + len(broken), len(valid), 0, 0,
                                                                              len(broken))
    assert summary.segmented == len(valid) and summary.failed == len(broken)

    coco = COCO(str(out / "annotations.json"))
    _check_images_and_annotations(coco, out, src, valid)
    _check_masks_table_and_errors(coco, out, src, broken)

    fstore = FeatureStore(str(store))
    manifest = fstore.manifest(enc.model_id)
    assert manifest.read(dedupe=False).num_rows == enc.listed  # a clean run: one row per item, no duplicates
    first = _outputs(out)

    # ---------------------------------------------------------------- re-run: no encoder work, same bytes
    again = segment_job(str(src), str(out), str(store), SegmentOptions(vocabulary=_vocab(model), texts=TEXTS,
                                                                      overlays=True), _opts(model))
    assert again.encode.encoded == 0 and again.encode.reused == 0 and again.encode.skipped == enc.listed
    assert _outputs(out) == first

    # ---------------------------------------------------------------- grown and changed source
    write_png(src / "new" / "one.png", seed=1)
    write_png(src / "new" / "two.png", seed=2)
    shutil.copy(SAMPLES / "shapes-5.png", src / "samples" / "shapes-1.png")  # changed content, same name
    shutil.copy(src / "samples" / "chelsea.jpg", src / "new" / "same-cat.jpg")  # same bytes, new name
    grown = segment_job(str(src), str(out), str(store), SegmentOptions(vocabulary=_vocab(model), texts=TEXTS),
                        _opts(model))
    g = grown.encode
    assert (g.encoded, g.reused, g.failed) == (3, 1, 0)
    assert g.skipped == enc.listed - 1  # everything else, broken files included (they would fail the same way)
    table = manifest.read()
    assert table.num_rows == enc.listed + 3 and len(set(table["uri"].to_pylist())) == table.num_rows
    assert grown.segmented == len(valid) + 3

    # ---------------------------------------------------------------- another model re-encodes
    other = encode_job(str(src), str(store), _opts(ModelSpec()))
    assert other.model_id != enc.model_id
    assert other.encoded + other.reused == len(valid) + 3 and other.skipped == 0
    # The duplicate bytes are encoded once when they meet in a batch; in different
    # batches in flight at the same time both may be encoded (the object is written once).
    assert other.encoded >= len(valid) + 2


def _check_images_and_annotations(coco: COCO, out: Path, src: Path, valid: dict[str, tuple[int, int]]) -> None:
    """Every valid image in uri order, at its size, with panoptic and text masks (each
    non-empty, its area its pixel count) and an overlay."""
    images = coco.loadImgs(coco.getImgIds())
    assert [i["file_name"] for i in images] == sorted(str(src / n) for n in valid)  # every valid image, uri order
    assert [i["id"] for i in images] == list(range(1, len(valid) + 1))
    for img in images:
        name = img["file_name"][len(str(src)) + 1:]
        assert (img["width"], img["height"]) == valid[name]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        sources = [a["source"] for a in anns]
        if min(img["width"], img["height"]) >= 8:  # a 1 x 1 or 4000 x 2 image may have no non-empty mask
            assert "panoptic" in sources and "text" in sources, name
        assert [a["prompt"] for a in anns if a["source"] == "text"] == [t for t in TEXTS if t in
                                                                         {a.get("prompt") for a in anns}]
        for a in anns:
            mask = coco.annToMask(a)
            assert mask.shape == (img["height"], img["width"]) and mask.sum() == a["area"] > 0
        overlay = decode_image((out / img["overlay"]).read_bytes())
        if max(img["width"], img["height"]) <= 1600:  # larger ones are drawn scaled down
            assert overlay.shape[:2] == (img["height"], img["width"])


def _check_masks_table_and_errors(coco: COCO, out: Path, src: Path, broken: dict[str, str]) -> None:
    """The text prompts are categories of their own; masks.parquet row for row as the COCO
    annotations; errors.parquet names every broken file with its reason at the decode stage."""
    cats = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert set(TEXTS) <= set(cats) and cats["a red circle"]["supercategory"] == "text prompt"
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    anns = coco.loadAnns(coco.getAnnIds())
    assert [m["mask_id"] for m in masks] == [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for m, a in zip(masks, anns):
        assert (m["image_id"], m["category_id"], m["area"], list(m["bbox"])) == (a["image_id"], a["category_id"], a["area"], a["bbox"])
        assert m["rle"]["counts"] == a["segmentation"]["counts"] and cats[m["label"]]["id"] == m["category_id"]
    errors = {r["uri"][len(str(src)) + 1:]: r for r in pq.read_table(out / "errors.parquet").to_pylist()}
    assert set(errors) == set(broken)
    for name, reason in broken.items():
        assert errors[name]["stage"] == "decode" and reason in errors[name]["reason"], errors[name]


def _vocab(model: ModelSpec) -> list[str]:
    from pipeline.stages import load_predictor

    return list(load_predictor(model).default_vocabulary.names)
