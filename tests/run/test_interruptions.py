"""Kills and signals through the real CLI (faults inside the process are injected by a small
launcher that patches lopt and then runs ``run.py`` as ``__main__``), then a resume that
reproduces the uninterrupted run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lopt.run.checkpointing import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    checkpoint_problem,
)
from tests.helpers.cli import run_cli
from tests.helpers.faults import (
    RUN,
    assert_same_results,
    ckpt_seconds,
    ckpt_step,
    csv_rows,
    patched_cli,
    signal_at_step,
    tear,
)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_identically(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, signal_at_step("SIGTERM", 20), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM == 143, proc.stderr[-3000:]
    assert f"python run.py resume=true hydra.run.dir={run_dir}" in proc.stderr
    last = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == 20 and not (run_dir / "metrics.json").exists()  # mid-epoch 1
    before = csv_rows(run_dir / "csv" / "metrics.csv")
    seconds_before = ckpt_seconds(last)

    run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # no original override repeated
    metrics = assert_same_results(run_dir, straight)
    after = csv_rows(run_dir / "csv" / "metrics.csv")
    assert before and len(after) > len(before) and set(before) <= set(after)  # appended, not truncated
    assert metrics["train_seconds"] > seconds_before > 0  # both segments counted


@pytest.mark.slow
def test_sigint_saves_prints_the_resume_command_and_exits_130(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, signal_at_step("SIGINT", 7), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGINT == 130, proc.stderr[-3000:]
    assert f"Continue with:\n  python run.py resume=true hydra.run.dir={run_dir}" in proc.stderr
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 7
    run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_same_results(run_dir, straight)


@pytest.mark.slow
def test_sigterm_during_preprocessing_exits_143_and_a_rerun_works(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    patch = (
        "import lopt.data.datamodule as D\n"
        "_prepare = D.prepare_split\n"
        "def _killed(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return _prepare(*a, **k)\n"
        "D.prepare_split = _killed\n"
    )
    proc = patched_cli(tmp_path, patch, [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM, proc.stderr[-3000:]
    assert "SIGTERM during data preparation: nothing to resume" in proc.stderr
    assert not (run_dir / "checkpoints").exists() and not list((tmp_path / "data").rglob("*.npz"))
    run_cli([*RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # the same command again
    assert_same_results(run_dir, straight)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path, straight: dict) -> None:
    """SIGKILL half-way through the first checkpoint write of epoch 1 (step 30: its best.ckpt, or
    its last.ckpt where the epoch did not improve): epoch 0's last.ckpt (step 15) stays intact
    and the run resumes from it."""
    run_dir = tmp_path / "run"
    patch = (
        "import torch\n"
        "_save = torch.save\n"
        "def _half(obj, path):\n"
        "    _save(obj, path)\n"
        "    if isinstance(obj, dict) and obj.get('global_step', 0) > 15:\n"
        "        with open(path, 'r+b') as f:\n"
        "            f.truncate(os.path.getsize(path) // 2)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = _half\n"
    )
    proc = patched_cli(tmp_path, patch, [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert list(checkpoints.glob(".*.tmp")), "the half-written temp file should be left by SIGKILL"
    assert checkpoint_problem(checkpoints / "last.ckpt") is None and ckpt_step(checkpoints / "last.ckpt") == 15
    run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_same_results(run_dir, straight)
    assert not list(checkpoints.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_from_a_torn_last_checkpoint_falls_back(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, signal_at_step("SIGTERM", 20), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM
    tear(run_dir / "checkpoints" / "last.ckpt")
    resumed = run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert f"{run_dir / 'checkpoints' / 'last.ckpt'} is corrupt" in output
    assert "resuming from " + str(run_dir / "checkpoints" / "best.ckpt") in output
    assert_same_results(run_dir, straight)


@pytest.mark.slow
def test_an_unwritable_output_directory_is_one_error_line(tmp_path: Path) -> None:
    """The first write of a run (its log file) failing with EACCES ends the run with one line that
    names the file and says what to do, exit status 1, no traceback. (The process runs as any user
    here, so the denial is injected where the file is opened.)"""
    deny = (
        "import logging\n"
        "def _deny(self):\n"
        "    raise PermissionError(13, 'Permission denied', self.baseFilename)\n"
        "logging.FileHandler._open = _deny\n"
    )
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, deny, [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: Permission denied writing {run_dir / 'run.log'} while the run starts" in proc.stderr
    assert "Traceback" not in proc.stderr and "Unable to configure handler" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()
