"""`seem segment --prompts`: a detection dataset's boxes, annotators' clicks and phrases per
image become masks, on held-out Shapes World scenes, with the shipped seem-tiny; broken
entries are recorded with their line / annotation id and the rest is done; a changed
prompts file decodes only what changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

import seem_cli
from pipeline.jobs import EncodeOptions
from pipeline.prompt_job import PromptOptions, prompted_segment_job
from training.prompt_sampling import inner_distance, iou
from training.shapes_world import generate_scene, split_seeds, write_coco

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SCENES = split_seeds("test", 6, start=700)  # never generated in training
IOU_FLOOR = 0.85  # the goal, for boxes, clicks and phrases alike


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The scenes as images + ground truth, and a COCO detection file of their true boxes
    (segmentation removed, an extra field added that must survive)."""
    root = tmp_path_factory.mktemp("prompts")
    gt_path = write_coco(root, SCENES, kind="instances")
    gt = json.loads(gt_path.read_text())
    detections = json.loads(gt_path.read_text())
    for ann in detections["annotations"]:
        del ann["segmentation"], ann["area"]
        ann["reviewer"] = f"r{ann['id'] % 3}"
    det_path = root / "detections.json"
    det_path.write_text(json.dumps(detections))
    masks = {a["id"]: COCO_mask(gt_path, a["id"]) for a in gt["annotations"]}
    return {"root": root, "images": root / "images", "gt": gt, "detections": det_path, "masks": masks}


def COCO_mask(path: Path, ann_id: int, _cache: dict = {}) -> np.ndarray:  # noqa: B006, N802
    coco = _cache.setdefault(str(path), COCO(str(path)))
    return coco.annToMask(coco.loadAnns([ann_id])[0]).astype(bool)


def run(dataset: dict, prompts: Path, out: Path, **kwargs) -> object:
    return prompted_segment_job(str(dataset["images"]), str(out), str(dataset["root"] / "store"),
                                PromptOptions(prompts=str(prompts), **kwargs),
                                EncodeOptions(progress=False, batch_size=4))


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def file_name(dataset: dict, image_id: int) -> str:
    return next(i["file_name"] for i in dataset["gt"]["images"] if i["id"] == image_id)


def check_mean_iou(dataset: dict, lines: list[dict], summary: object, out: Path, what: str) -> None:
    """Every line segmented, and the masks (read back with pycocotools) near the truth."""
    assert summary.masks == len(lines) and summary.failed == 0
    pred = COCO(str(out / "annotations.json"))
    ious = [iou(pred.annToMask(a).astype(bool), dataset["masks"][int(a["prompt_id"])])
            for a in pred.loadAnns(pred.getAnnIds())]
    print(f"JSON lines {what} -> masks: mean IoU {np.mean(ious):.3f} over {len(ious)} {what}")
    assert len(ious) == len(lines) and np.mean(ious) >= IOU_FLOOR


# --------------------------------------------------------------------------- COCO boxes
def test_coco_boxes_become_masks_in_the_same_dataset(ray_address, dataset, tmp_path) -> None:
    out = tmp_path / "out"
    summary = run(dataset, dataset["detections"], out, overlays=True)
    n = len(dataset["gt"]["annotations"])
    assert summary.masks == n and summary.failed == 0 and summary.decoded == n
    pred = COCO(str(out / "annotations.json"))  # pycocotools reads it
    detections = json.loads(dataset["detections"].read_text())
    assert sorted(pred.getAnnIds()) == sorted(a["id"] for a in detections["annotations"])
    assert pred.dataset["images"] == detections["images"] and pred.dataset["categories"] == detections["categories"]
    ious = []
    for det in detections["annotations"]:
        ann = pred.loadAnns([det["id"]])[0]
        assert {k: ann[k] for k in det} == det  # every id, category and extra field kept
        mask = pred.annToMask(ann).astype(bool)
        assert ann["area"] == int(mask.sum()) and isinstance(ann["segmentation"]["counts"], str)
        assert np.isfinite(ann["score"])
        ious.append(iou(mask, dataset["masks"][det["id"]]))
    print(f"COCO boxes -> masks: mean IoU {np.mean(ious):.3f} over {len(ious)} boxes (min {min(ious):.3f})")
    assert np.mean(ious) >= IOU_FLOOR
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    assert sorted(m["annotation_id"] for m in masks) == sorted(pred.getAnnIds())
    assert {m["source"] for m in masks} == {"prompt"}
    assert len(list((out / "overlays").glob("*.png"))) == len(SCENES)


# --------------------------------------------------------------------------- JSON lines
def _click_lines(dataset: dict) -> list[dict]:
    lines = []
    for ann in dataset["gt"]["annotations"]:
        mask = dataset["masks"][ann["id"]]
        y, x = np.unravel_index(int(np.argmax(inner_distance(mask))), mask.shape)
        lines.append({"image": file_name(dataset, ann["image_id"]), "id": str(ann["id"]), "object_id": ann["id"],
                      "prompts": [{"type": "point", "xy": [int(x), int(y)]}]})
    return lines


def test_json_lines_of_clicks_and_a_changed_line_decodes_alone(ray_address, dataset, tmp_path) -> None:
    lines = _click_lines(dataset)
    out = tmp_path / "out"
    check_mean_iou(dataset, lines, run(dataset, write_lines(tmp_path / "clicks.jsonl", lines), out), out, "clicks")
    masks = {m["prompt_id"]: m for m in pq.read_table(out / "masks.parquet").to_pylist()}
    assert all(masks[line["id"]]["object_id"] == str(line["object_id"]) for line in lines)

    # One line changed (a second, negative click far away), one written differently but equal.
    lines[0]["prompts"].append({"type": "point", "xy": [0, 0], "positive": False})
    lines[1]["prompts"][0]["positive"] = True
    again = run(dataset, write_lines(tmp_path / "clicks.jsonl", lines), out)
    assert (again.decoded, again.cached) == (1, len(lines) - 1)
    assert again.encode.encoded == 0  # features are never encoded again
    assert again.masks == len(lines)


def test_json_lines_of_phrases(ray_address, dataset, tmp_path) -> None:
    lines = [{"image": str(dataset["images"] / file_name(dataset, ann["image_id"])),  # by full path this time
              "id": str(ann["id"]), "prompts": [{"type": "text", "text": ann["phrases"][0]}]}
             for ann in dataset["gt"]["annotations"] if ann["phrases"]]
    out = tmp_path / "out"
    check_mean_iou(dataset, lines, run(dataset, write_lines(tmp_path / "phrases.jsonl", lines), out), out, "phrases")


# --------------------------------------------------------------------------- broken entries
def test_broken_entries_are_recorded_and_the_rest_is_done(ray_address, dataset, tmp_path) -> None:
    good = _click_lines(dataset)[:2]
    name = good[0]["image"]
    scene = generate_scene(SCENES[0])
    lines = [
        good[0],
        '{"image": "' + name + '", "prompts": [',  # line 2: bad JSON
        {"image": name, "id": "lasso", "prompts": [{"type": "lasso", "xy": [1, 1]}]},
        {"image": "nowhere.png", "id": "lost", "prompts": [{"type": "point", "xy": [1, 1]}]},
        {"image": name, "id": "out", "prompts": [{"type": "box", "xyxy": [0, 0, scene.width + 5, 10]}]},
        good[1],
    ]
    out = tmp_path / "out"
    summary = seem_cli.main(["segment", str(dataset["images"]), "--prompts",
                             str(write_lines(tmp_path / "mixed.jsonl", lines)), "--out", str(out),
                             "--store", str(dataset["root"] / "store"), "--no-progress"])
    assert summary == 0
    errors = {e["line"]: e for e in pq.read_table(out / "errors.parquet").to_pylist()}
    assert sorted(errors) == [2, 3, 4, 5]
    assert "JSON" in errors[2]["reason"] and "lasso" in errors[3]["reason"] and errors[3]["prompt_id"] == "lasso"
    assert "unknown image" in errors[4]["reason"] and "outside the image" in errors[5]["reason"]
    assert errors[5]["uri"].endswith(name)
    assert [m["prompt_id"] for m in pq.read_table(out / "masks.parquet").to_pylist()] == [good[0]["id"], good[1]["id"]]

    detections = json.loads(dataset["detections"].read_text())
    anns = detections["annotations"]
    anns[0]["bbox"] = [anns[0]["bbox"][0], anns[0]["bbox"][1], 0, 5]  # empty box
    anns[1]["bbox"] = [-3, 0, 10, 10]  # outside the image
    anns[2]["image_id"] = 999  # unknown image
    (tmp_path / "broken.json").write_text(json.dumps(detections))
    summary = run(dataset, tmp_path / "broken.json", tmp_path / "coco-out")
    errors = {e["annotation_id"]: e["reason"] for e in pq.read_table(tmp_path / "coco-out" / "errors.parquet").to_pylist()}
    assert "empty box" in errors[anns[0]["id"]] and "outside the image" in errors[anns[1]["id"]]
    assert "unknown image" in errors[anns[2]["id"]] and len(errors) == 3
    assert summary.masks == len(anns) - 3
    pred = COCO(str(tmp_path / "coco-out" / "annotations.json"))
    assert sorted(pred.getAnnIds()) == sorted(a["id"] for a in anns)  # failed ones kept, with the reason
    assert "empty box" in pred.loadAnns([anns[0]["id"]])[0]["error"]
