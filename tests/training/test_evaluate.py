"""`seem eval`: the table's JSON line a user scripts against, and the panoptic-threshold sweep
used to choose a checkpoint's threshold on the validation split."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model.predictor import SeemPredictor
from training.evaluate import evaluate, panoptic_threshold_sweep

REQUIRED_KEYS = ("pq", "miou", "ciou", "noc85", "noc90", "iou1_point", "iou1_stroke", "iou1_scribble",
                 "iou1_polygon", "iou1_box")


@pytest.fixture(scope="module")
def shipped() -> SeemPredictor:
    return SeemPredictor.from_pretrained("seem-tiny")


def test_eval_prints_the_table_and_a_json_line() -> None:
    done = subprocess.run([sys.executable, "-m", "seem_cli", "eval", "--images", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("Generic") and "PQ" in lines[0]
    result = json.loads(lines[-1])
    assert set(REQUIRED_KEYS) <= set(result)
    assert result["images"] == 2
    for key in REQUIRED_KEYS:
        if key.startswith("noc"):
            assert 1 <= result[key] <= 20, (key, result[key])
        else:
            assert 0.0 <= result[key] <= 1.0, (key, result[key])
    # The shipped model, not random weights: one click finds most of an object.
    assert result["iou1_point"] > 0.5, result


def test_sweep_agrees_with_eval_at_the_models_threshold(shipped: SeemPredictor) -> None:
    threshold = shipped.cfg.inference.object_mask_threshold
    sweep = panoptic_threshold_sweep(shipped, [threshold, 1.0], split="val", images=2, progress=False)
    table = evaluate(shipped, seed=0, images=2, split="val", progress=False)
    assert sweep[threshold]["pq"] == pytest.approx(table["pq"])
    assert sweep[threshold]["pq"] > 0.0
    # No class confidence exceeds 1: nothing is kept, every ground-truth segment is missed.
    assert sweep[1.0] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_bad_threshold_list_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "seem_cli", "eval", "--panoptic-thresholds", "0.2,high"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--panoptic-thresholds" in done.stderr and "'0.2,high'" in done.stderr


@pytest.mark.parametrize("override", ['{"drop_negated_pieces": fals', '{"nope": 1}', '{"prompted_mask_labels": "nearest"}'])
def test_bad_inference_override_is_a_usage_error(override: str) -> None:
    done = subprocess.run([sys.executable, "-m", "seem_cli", "eval", "--images", "1", "--inference", override],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("--inference: ")
