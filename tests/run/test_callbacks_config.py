"""The `callbacks` config group: composition from the command line, instantiation, early stopping
on a tiny run, and the best/last checkpoint semantics it keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

from lopt import train
from lopt.run.trainer_callbacks import best_checkpoint, instantiate_callbacks
from lopt.tracking import progress
from lopt.tracking.progress import LogProgress, make_progress
from tests.helpers.cli import TINY_OVERRIDES
from tests.helpers.hydra import compose_config


def _callbacks(*overrides: str):
    cfg = compose_config(["paths.output_dir=/tmp/out", *overrides])
    return cfg.callbacks


def test_default_group_has_checkpoint_and_progress_and_no_early_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    nodes = _callbacks()
    assert set(nodes.early_stopping) >= {"monitor", "patience", "min_delta", "mode"}
    assert nodes.early_stopping.patience is None
    built = instantiate_callbacks(nodes)
    assert list(built) == ["model_checkpoint", "progress"]
    best = best_checkpoint(built)
    assert (best.monitor, best.mode, best.filename, best.save_last, best.save_top_k) == (
        "valid/auc",
        "max",
        "best",
        True,
        1,
    )
    assert best.dirpath == "/tmp/out/checkpoints"
    assert isinstance(built["progress"], LogProgress)


def test_periodic_checkpoint_follows_checkpoint_every_n_train_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert "periodic_checkpoint" not in instantiate_callbacks(_callbacks())  # 0: off
    built = instantiate_callbacks(_callbacks("checkpoint.every_n_train_steps=7"))
    periodic = built["periodic_checkpoint"]
    assert isinstance(periodic, ModelCheckpoint) and periodic is not best_checkpoint(built)
    assert (periodic.dirpath, periodic._every_n_train_steps, periodic.save_top_k, periodic.save_last) == (
        "/tmp/out/checkpoints",
        7,
        0,
        True,
    )


@pytest.mark.parametrize(
    ("overrides", "patience"),
    [(["callbacks=[default,early_stopping]"], 5), (["callbacks.early_stopping.patience=3"], 3)],
)
def test_early_stopping_selected_from_the_command_line(overrides: list[str], patience: int) -> None:
    built = instantiate_callbacks(_callbacks(*overrides, "eval.monitor=ndcg@50"))
    stopper = built["early_stopping"]
    assert isinstance(stopper, EarlyStopping)
    assert (stopper.monitor, stopper.patience, stopper.mode) == ("valid/ndcg@50", patience, "max")
    assert isinstance(built["model_checkpoint"], ModelCheckpoint)


def test_lr_monitor_and_missing_checkpoint() -> None:
    built = instantiate_callbacks(_callbacks("callbacks=[default,lr_monitor]"))
    assert type(built["lr_monitor"]).__name__ == "LearningRateMonitor"
    with pytest.raises(ValueError, match="callbacks=\\[default,early_stopping\\]"):
        best_checkpoint(instantiate_callbacks(_callbacks("callbacks=early_stopping")))
    with pytest.raises(InstantiationException, match="patience must be ≥ 1 or null"):
        instantiate_callbacks(_callbacks("callbacks.early_stopping.patience=0"))


def test_progress_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert isinstance(make_progress("auto"), RichProgressBar)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert isinstance(make_progress("auto"), LogProgress)
    quiet = make_progress("none")  # nothing on the console; the log file still gets the lines
    assert isinstance(quiet, LogProgress) and not quiet.console
    assert make_progress("log").console and not make_progress("rich").lines.console
    with pytest.raises(ValueError, match="callbacks.progress.style"):
        make_progress("bar")
    assert progress.format_seconds(3725.2) == "1:02:05" and progress.format_seconds(59) == "0:59"


def test_early_stopping_stops_a_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """min_delta=1 (an AUC can never improve by 1) and patience 1: the second evaluation stops the
    run at epoch 2 of 20; best.ckpt stays the better of the two evaluations, last.ckpt the last."""
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "run"
    metrics = train(
        [
            *TINY_OVERRIDES,
            "trainer.max_epochs=20",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1.0",
            f"hydra.run.dir={out}",
        ],
        configure_logging=False,
    )
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # stopped after two epochs (0-based epoch of the last save)
    assert best["epoch"] == metrics["best_epoch"] in (0, 1)
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
