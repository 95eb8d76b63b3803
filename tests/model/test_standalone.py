"""model/ stands alone: seem-tiny builds and decodes with nothing of ours above it loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import numpy as np
from model import Point, Prompts, build_predictor

predictor = build_predictor("seem-tiny")
image = np.zeros((96, 128, 3), np.uint8)
image[20:70, 30:90] = (220, 40, 40)
features = predictor.encode([image])[0]
text = predictor.decode(features, Prompts(text="the red square"))
click = predictor.decode(features, Prompts(spatial=(Point(60, 45),)))
panoptic = predictor.panoptic(features)
above = ("ray", "training", "pipeline", "serving", "store", "boto3", "botocore")
print(json.dumps({
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in above),
    "masks": [len(text.masks), len(click.masks)],
    "labels": sorted({s.label for s in panoptic.segments}),
    "vocabulary": list(predictor.default_vocabulary.names),
}))
"""


def test_seem_tiny_decodes_without_packages_above_model():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["masks"] == [1, 1]
    # seem-tiny's vocabulary ships with the model (it was empty without training/ installed)
    assert "circle" in report["vocabulary"] and "sky" in report["vocabulary"]
    assert report["labels"] and set(report["labels"]) <= set(report["vocabulary"])
