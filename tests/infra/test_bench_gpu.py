"""bench/gpu.py runs end to end on the CPU with small sizes (what a CUDA machine runs at full
size), and its parity part fails on outputs that differ from the reference."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench import gpu

from .conftest import REPO

FIXTURE = gpu.DEFAULT_FIXTURE
needs_fixture = pytest.mark.skipif(not (FIXTURE / "config.yaml").is_file(), reason="parity fixture folder not present")


@needs_fixture
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_cpu_run_produces_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    md = tmp_path / "gpu.md"
    cmd = [sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--model", "seem-tiny", "--size", "64",
           "--parity-cases", "intermediates,spatial_point_round2", "--json", str(out), "--markdown", str(md)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["env"]["device"] == "cpu" and r["env"]["date"] and r["env"]["command"].startswith("python bench/gpu.py")
    assert {m["dtype"] for m in r["matmul"]} == {"bfloat16", "float32"} and all(m["tflops"] > 0 for m in r["matmul"])
    assert {(e["dtype"], e["batch"]) for e in r["encoder"]} == {("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)}
    assert all(e["images_per_s"] > 0 and e["size"] == 64 for e in r["encoder"])
    assert len(r["encoder_end_to_end"]) == 2
    assert r["encoder_flops_per_image"] > 0 and 0 < r["roofline"]["fraction"]
    assert [d["prompt"] for d in r["decoder"]] == list(gpu.PROMPT_TYPES)
    assert all(d["ms_median"] > 0 for d in r["decoder"])
    assert [c["case"] for c in r["parity_fixture"]["cases"]] == ["intermediates", "spatial_point_round2"]
    assert all(c["ok"] and c["checks"] > 0 for c in r["parity_fixture"]["cases"])
    fp32, bf16 = r["parity_cpu_vs_device"]
    assert fp32["mask_features_rel_rms"] == 0 and fp32["point_mask_iou"] == 1.0  # the device is the CPU here
    assert 0 < bf16["mask_features_rel_rms"] < 0.1
    text = md.read_text()
    for heading in ("| matmul |", "| encoder |", "| decoder prompt |", "| case | result |", "| CPU fp32 vs device |"):
        assert heading in text


@needs_fixture
@pytest.mark.timeout(300)
def test_fixture_parity_fails_on_a_perturbed_reference(tmp_path):
    for name in gpu.FIXTURE_BASE_FILES:
        (tmp_path / name).symlink_to(FIXTURE / name)
    data = dict(np.load(FIXTURE / "intermediates.npz"))
    data["mask_features"] = data["mask_features"] * 1.01
    np.savez(tmp_path / "intermediates.npz", **data)
    (case,) = gpu.fixture_parity(tmp_path, torch.device("cpu"))
    assert case["case"] == "intermediates" and not case["ok"]
    assert any(f.startswith("mask_features") for f in case["failed"]), case


def test_documented_commands_parse():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    section = text[text.index("## GPU figures"):]
    assert "No GPU was lent" in section
    commands = re.findall(r"(?:^|`)(?:\.venv/bin/)?(python bench/gpu\.py[^`\n]*)", section, re.M)
    assert any("--device cuda" in c for c in commands) and any("--quick" in c for c in commands)
    parser = gpu.build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[2:])
        if args.only:
            assert set(args.only.split(",")) <= set(gpu.SECTIONS)
