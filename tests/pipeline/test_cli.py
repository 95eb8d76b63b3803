"""`seem encode`, `seem segment`, `seem demo` through the real `seem` entry point (run in
this process, on the session's Ray, so no second cluster starts on a 2-core machine)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import seem_cli
from pipeline.cli import SAMPLES_DIR

from .conftest import write_png

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]


def test_help_is_light():
    # `seem segment --help` must not import Ray (checked in a fresh interpreter).
    code = ("import sys, contextlib, io, seem_cli\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
            "    seem_cli.main(['segment', '--help'])\n"
            "print(buf.getvalue())\n"
            "print(sorted(m for m in ('ray', 'ray.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    for option in ("--out", "--store", "--vocabulary", "--text", "--overlays", "--address", "--pool"):
        assert option in out.stdout


def test_encode_then_segment(ray_address, tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(3):
        write_png(src / f"im{i}.png", seed=i, size=(60, 90))
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    store, out = tmp_path / "store", tmp_path / "out"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# shapes\ncircle\nsquare\nsky\n")

    rc = seem_cli.main(["encode", str(src), "--store", str(store), "--pool", "1", "--batch-size", "2",
                        "--no-progress", "--summary-json", str(tmp_path / "enc.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "done 3 (encoded 3, reused 0) | skipped 0 | failed 1" in printed and "images/s" in printed
    enc = json.loads((tmp_path / "enc.json").read_text())
    assert (enc["encoded"], enc["failed"], enc["listed"]) == (3, 1, 4)

    rc = seem_cli.main(["segment", str(src), "--out", str(out), "--store", str(store), "--vocabulary", f"@{vocab}",
                        "--text", "a red circle", "--text", "sky", "--no-progress",
                        "--summary-json", str(tmp_path / "seg.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "encoded 0" in printed and "skipped 4" in printed  # features came from the store
    seg = json.loads((tmp_path / "seg.json").read_text())
    assert seg["segmented"] == 3 and seg["failed"] == 1
    coco = json.loads((out / "annotations.json").read_text())
    # The vocabulary first, then the text prompt that is not a vocabulary name.
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "sky", "a red circle"]
    assert [c["isthing"] for c in coco["categories"]] == [1, 1, 0, 1]
    texts = [m for m in pq.read_table(out / "masks.parquet").to_pylist() if m["source"] == "text"]
    assert {m["prompt"] for m in texts} <= {"a red circle", "sky"} and texts
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [Path(e["uri"]).name for e in errors] == ["bad.png"] and errors[0]["stage"] == "decode"


def test_demo(ray_address, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the defaults are relative: ./out/demo and ./out/store
    assert seem_cli.main(["demo", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out" / "demo"
    assert f"COCO annotations: {out / 'annotations.json'}" in printed
    assert f"overlays:         {out / 'overlays'}/" in printed
    samples = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix in (".png", ".jpg"))
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(Path(i["file_name"]).name for i in coco["images"]) == sorted(p.name for p in samples)
    assert len(list((out / "overlays").glob("*.png"))) == len(samples)
    assert (tmp_path / "out" / "store").is_dir()
    assert seem_cli.main(["demo", "--no-progress", "--no-overlays"]) == 0
    assert "no encoder work on this run" in capsys.readouterr().out


def test_samples_are_small_and_complete():
    files = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix in (".png", ".jpg"))
    assert files == sorted([f"shapes-{i}.png" for i in range(1, 7)] + ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"])
    assert sum(p.stat().st_size for p in SAMPLES_DIR.iterdir()) < 1_000_000


def test_out_inside_the_source_and_files_without_extension(ray_address, tmp_path, capsys):
    src = tmp_path / "photos"
    for i in range(2):
        write_png(src / f"im{i}.png", seed=i, size=(60, 90))
    write_png(src / "IMG_0003", seed=3, size=(60, 90))  # a camera export without an extension
    (src / "notes").write_text("not an image")
    out, store = src / "results", tmp_path / "store"
    for run in range(2):  # the second run must not read the first run's overlays as inputs
        summary = tmp_path / f"seg{run}.json"
        rc = seem_cli.main(["segment", str(src), "--out", str(out), "--store", str(store), "--overlays",
                            "--pool", "1", "--no-progress", "--summary-json", str(summary)])
        assert rc == 0
        seg = json.loads(summary.read_text())
        assert (seg["segmented"], seg["failed"]) == (3, 0), seg
    assert any((out / "overlays").iterdir())
    capsys.readouterr()


def test_ctrl_c_ends_without_a_traceback(monkeypatch, capsys):
    import pipeline.cli

    def interrupted(args):  # what Python raises in the main thread on SIGINT during a job
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.cli, "cmd_segment", interrupted)
    assert seem_cli.main(["segment", "photos", "--out", "out"]) == 130
    err = capsys.readouterr().err
    assert "seem segment: interrupted" in err and "Traceback" not in err
