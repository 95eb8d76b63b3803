"""Fixtures of the pipeline tests: one local Ray for the session, corpora, model configs.

Ray on this project's 2-core machines (see ENV-NOTES): 2 CPUs, a 512 MiB object store,
no dashboard; the jobs give actors fractional CPUs so decode tasks still get one. Ray
starts after the S3 test server so that its worker processes inherit the endpoint and
the dummy credentials from the environment, as they would inherit a real AWS setup.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.corpus import build_corpus

SAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "samples"


@pytest.fixture(scope="package")
def ray_address(s3_server: str) -> Iterator[str]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a throwaway cluster
    from rayinit import start_or_join

    # A new local Ray, started again if a busy machine misses Ray's 30 s start-up window.
    start_or_join("local", local_options={"num_cpus": 2, "object_store_memory": 512 << 20},
                  include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_png(path: Path, seed: int, size: tuple[int, int] = (48, 64)) -> Path:
    """A small, unique PNG (smooth noise) at `path`."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def mixed_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]], dict[str, str]]:
    """The odd/broken corpus plus two bundled samples (a Shapes World PNG and a photo),
    in nested folders. Returns (root, valid name -> (w, h), broken name -> reason part);
    names are paths relative to root."""
    root = tmp_path_factory.mktemp("mixed")
    valid, broken = build_corpus(root / "corpus")
    valid = {f"corpus/{k}": v for k, v in valid.items()}
    broken = {f"corpus/{k}": v for k, v in broken.items()}
    (root / "samples").mkdir()
    for name in ("shapes-1.png", "chelsea.jpg"):
        shutil.copy(SAMPLES / name, root / "samples" / name)
        with Image.open(SAMPLES / name) as im:
            valid[f"samples/{name}"] = im.size
    return root, valid, broken


@pytest.fixture(scope="session")
def panoptic_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """seem-tiny with the panoptic thresholds (object mask, overlap) at 0, as a config
    file: with random weights the real thresholds keep no segment, these keep some, so
    the panoptic path produces masks whatever weights the default model has today."""
    from model.build import seem_tiny_config

    cfg = seem_tiny_config()
    cfg = cfg.replace(name="seem-tiny-thr0", inference=dataclasses.replace(cfg.inference, object_mask_threshold=0.0,
                                                                         overlap_threshold=0.0))
    path = tmp_path_factory.mktemp("cfg") / "seem-tiny-thr0.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return str(path)
