"""Builders of the fault-injection tests: a tiny λOpt-DUI run, the CLI run with lopt patched in the
child process (a signal at a step, a write that stops half-way), and readers of what a run left."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, read_metrics

# Tiny λOpt-DUI run: 15 training batches per epoch, so steps 7 and 20 are mid-epoch.
RUN = [
    *TINY_OVERRIDES,
    "trainer.max_epochs=3",
    "data.batch_size=128",
    "data.valid_batch_size=96",
    "seed=3",
    "logger=csv",
]
U_DATA = "1\t10\t5\t100\n1\t11\t4\t101\n2\t10\t3\t102\n"


def cli_env(cwd: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SLURM_RESTART_COUNT", None)
    return env


def patched_cli(cwd: Path, patch: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``run.py ARGS`` in a subprocess after running ``patch`` (Python) in that process."""
    launcher = cwd / "launch_patched.py"
    launcher.write_text(
        "import os, runpy, signal, sys\n"
        f"{patch}\n"
        f"sys.argv = [{str(REPO_ROOT / 'run.py')!r}, *sys.argv[1:]]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, str(launcher), *args],
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def signal_at_step(signame: str, step: int) -> str:
    """Launcher patch: send ``signame`` to the process itself after training batch ``step``."""
    return (
        "import lightning.pytorch as L\n"
        "import lopt.pipeline as T\n"
        "class _At(L.Callback):\n"
        "    def on_train_batch_end(self, trainer, *a):\n"
        f"        if trainer.global_step == {step}:\n"
        f"            os.kill(os.getpid(), signal.{signame})\n"
        "_build = T.build_tracking_callbacks\n"
        "T.build_tracking_callbacks = lambda *a: [*_build(*a), _At()]\n"
    )


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def ckpt_seconds(path: Path) -> float:
    state = torch.load(path, map_location="cpu", weights_only=True)["callbacks"]
    return next(float(v["train_seconds"]) for k, v in state.items() if k.startswith("TrainClock"))


def csv_rows(path: Path) -> list[frozenset]:
    """The rows of a Lightning metrics.csv as sets of their non-empty (column, value) pairs."""
    with open(path, newline="") as handle:
        return [frozenset((k, v) for k, v in row.items() if v) for row in csv.DictReader(handle)]


def assert_fails_before_training(proc: subprocess.CompletedProcess, run_dir: Path, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


def assert_same_results(run_dir: Path, straight: dict) -> dict:
    metrics = read_metrics(run_dir)
    assert metrics["test"] == straight["test"] and metrics["valid"] == straight["valid"]
    assert metrics["best_epoch"] == straight["best_epoch"]
    return metrics


def tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
