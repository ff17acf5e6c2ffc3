"""A folder of tiny finished runs made through run.py, for the results tools' tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

from tests.helpers.cli import TINY_OVERRIDES, run_cli

FIX_LAMBDAS = ("0", "0.01")
SEEDS = "0,1"
TRACK_EVERY = 3


def make_finished_runs(base: Path) -> Path:
    """A results folder with λFix (λ ∈ {0, 0.01}) and λOpt (DUI, DU) runs, seeds 0 and 1, made
    through run.py once under ``base`` (shared by every test of a session, across workers)."""
    root = base / "finished_runs"
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if (root / "DONE").is_file():
            return root / "results"
        shutil.rmtree(root / "results", ignore_errors=True)
        results = root / "results"
        run_cli(
            [
                "-m",
                *TINY_OVERRIDES,
                "checkpoint.keep=all",  # the tests read every checkpoint (a multirun keeps only the best)
                "model=fix",
                f"model.lambda_value={','.join(FIX_LAMBDAS)}",
                f"seed={SEEDS}",
                f"hydra.sweep.dir={results / 'fix_sweep'}",
            ],
            cwd=root,
        )
        run_cli(
            [
                "-m",
                *TINY_OVERRIDES,
                "checkpoint.keep=all",  # the tests read every checkpoint (a multirun keeps only the best)
                "granularity=dui,du",
                f"seed={SEEDS}",
                f"tracking.trajectories.every_n_steps={TRACK_EVERY}",
                "tracking.trajectories.full_vector=true",
                "granularity.init=0.01",
                "lambda_optimizer.lr=0.5",
                f"hydra.sweep.dir={results / 'opt_sweep'}",
            ],
            cwd=root,
        )
        (root / "DONE").write_text("ok")
    return results
