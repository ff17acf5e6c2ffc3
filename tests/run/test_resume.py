"""Preemption-safe runs: an interrupted and resumed run ends with the uninterrupted run's metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from lopt import pipeline
from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, read_metrics, run_cli
from tests.helpers.hydra import compose_config
from tests.helpers.signals import SignalAtStep

# λOpt-DUI with a dense Adam Λ optimizer: every piece of state (Θ, Λ, both optimizers, the
# sampler position in both triple streams) must survive the checkpoint for metrics to match.
OVERRIDES = [
    *TINY_OVERRIDES,
    "lambda_optimizer=adam",
    "trainer.max_epochs=3",
    "data.batch_size=128",
    "data.valid_batch_size=96",
    "seed=3",
]


def _cfg(run_dir: Path, data_dir: Path, extra: list[str] = ()):
    return compose_config([*OVERRIDES, *extra], data_dir=data_dir, output_dir=run_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    return pipeline.run(_cfg(root / "run", root / "data"))


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [7, 16])  # mid-epoch (an epoch has 15 batches) and just past an epoch end
def test_sigterm_mid_epoch_then_resume_matches(
    tmp_path: Path, monkeypatch, uninterrupted: dict, stop_step: int
) -> None:
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    original = pipeline.build_tracking_callbacks
    monkeypatch.setattr(
        pipeline,
        "build_tracking_callbacks",
        lambda *a: [*original(*a), SignalAtStep(stop_step, signal.SIGTERM)],
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit):  # Lightning's SIGTERMException
            pipeline.run(_cfg(run_dir, data_dir))
    finally:
        signal.signal(signal.SIGTERM, previous)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (run_dir / "metrics.json").exists()
    assert torch.load(last, weights_only=False)["global_step"] == stop_step

    monkeypatch.setattr(pipeline, "build_tracking_callbacks", original)
    resumed = pipeline.run(_cfg(run_dir, data_dir, ["resume=true"]))
    assert resumed["test"] == uninterrupted["test"]
    assert resumed["valid"] == uninterrupted["valid"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]


@pytest.mark.slow
def test_sigusr1_checkpoints_and_continues(tmp_path: Path, monkeypatch, uninterrupted: dict) -> None:
    original = pipeline.build_tracking_callbacks
    monkeypatch.setattr(
        pipeline, "build_tracking_callbacks", lambda *a: [*original(*a), SignalAtStep(5, signal.SIGUSR1)]
    )
    metrics = pipeline.run(_cfg(tmp_path / "run", tmp_path / "data"))
    assert metrics["test"] == uninterrupted["test"]  # the checkpoint did not disturb training


@pytest.mark.slow
def test_resume_without_checkpoint_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        pipeline.run(_cfg(tmp_path / "run", tmp_path / "data", ["resume=true"]))


@pytest.mark.slow
def test_cli_kill_and_resume(tmp_path: Path) -> None:
    """SIGKILL through the real CLI (no chance to save): resume from the last evaluation's checkpoint."""
    run_dir = tmp_path / "killed"
    args = [*OVERRIDES, "trainer.max_epochs=6", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(tmp_path / "data")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert last.exists(), "the run never wrote a checkpoint"
    if (run_dir / "metrics.json").exists():
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    run_cli([*args, "resume=true"], cwd=tmp_path)
    run_cli([*OVERRIDES, "trainer.max_epochs=6", f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path)
    assert read_metrics(run_dir)["test"] == read_metrics(tmp_path / "straight")["test"]


class _PoisonAfterFirstEpoch(L.Callback):
    """Makes the factors NaN at the start of epoch 1 (after a good evaluation and checkpoint)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == 0:
            with torch.no_grad():
                pl_module.model.user_factors.fill_(float("nan"))


@pytest.mark.slow
def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from lopt.modules.ranking import NonFiniteLossError

    original = pipeline.build_tracking_callbacks
    monkeypatch.setattr(pipeline, "build_tracking_callbacks", lambda *a: [*original(*a), _PoisonAfterFirstEpoch()])
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"global step 15 \(epoch 1\); last validation metrics: auc="):
        pipeline.run(_cfg(run_dir, tmp_path / "data"))
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in best["state_dict"].values() if t.is_floating_point())
    assert not (run_dir / "metrics.json").exists()
