"""Training on Ray Train: the loss falls over a few CPU steps, and a run with the same
name resumes from its last checkpoint instead of starting over."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch

from model import build_model, load_checkpoint
from rayinit import start_or_join
from training.losses import LossWeights
from training.train import TrainConfig, _absolute_local_paths, run_training


@pytest.fixture(scope="module")
def local_ray():
    # A new local Ray, started again if a busy machine misses Ray's 30 s start-up window
    # (a clean-clone run of the suite lost this test's setup to it once).
    start_or_join("local", local_options={"num_cpus": 2, "object_store_memory": 256 * 1024**2},
                  include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def small_config(steps: int) -> TrainConfig:
    # One repeated batch of small scenes: the loss must fall as the model fits it.
    return TrainConfig(steps=steps, batch_size=2, lr=2e-3, warmup_steps=1, min_lr_ratio=1.0, max_rounds=1,
                       checkpoint_every=6, log_every=3, repeat_batches=1, threads=1,
                       loss=LossWeights(num_points=256, match_points=128))


def _last_checkpoint(result) -> tuple[dict, torch.nn.Module]:  # noqa: ANN001 - a ray.train.Result
    """A finished run's last checkpoint: its training state and the model loaded from it."""
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / "state.json").read_text())
        model = build_model("seem-tiny", weights=None)
        load_checkpoint(model, Path(d) / "model.safetensors")
    return state, model


@pytest.mark.timeout(900)
def test_loss_falls_and_a_rerun_resumes_from_the_checkpoint(local_ray, tmp_path: Path) -> None:
    first = run_training(small_config(12), storage_path=str(tmp_path), name="smoke", cpus_per_worker=1.0,
                         progress=False)
    state, saved = _last_checkpoint(first)
    assert state["step"] == 11
    losses = [h["loss"] for h in state["history"]]
    assert [h["step"] for h in state["history"]] == [2, 5, 8, 11]
    assert losses[-1] < 0.8 * losses[0], losses

    # Same name and storage: continues at step 12 from those weights, ends at 17.
    second = run_training(small_config(18), storage_path=str(tmp_path), name="smoke", cpus_per_worker=1.0,
                          progress=False)
    state, resumed = _last_checkpoint(second)
    assert state["step"] == 17
    # The first run's history, then only steps after its checkpoint (nothing trained twice).
    assert [h["step"] for h in state["history"]] == [2, 5, 8, 11, 14, 17]
    # It continued from the trained weights: no jump back to the initial loss.
    assert state["history"][4]["loss"] < 0.8 * losses[0]
    # The resumed run changed the weights it started from (it trained, from them).
    a, b = saved.state_dict(), resumed.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_relative_paths_reach_the_workers_as_absolute(tmp_path: Path, monkeypatch) -> None:
    # Ray Train workers run in their own directory: `--init-weights weights.safetensors`
    # given relative to the user's shell must still name that file there.
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "train.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    cfg = _absolute_local_paths(TrainConfig(init_weights="weights.safetensors", dataset="coco/train.json",
                                            images="coco"))
    assert cfg.init_weights == str(tmp_path / "weights.safetensors")
    assert cfg.dataset == str(tmp_path / "coco" / "train.json")
    assert cfg.images == str(tmp_path / "coco")
    # Names that are not local files pass through untouched.
    cfg = _absolute_local_paths(TrainConfig(model="seem-tiny", init_weights="s3://bucket/w.safetensors"))
    assert (cfg.model, cfg.init_weights, cfg.dataset) == ("seem-tiny", "s3://bucket/w.safetensors", "shapes-world")
