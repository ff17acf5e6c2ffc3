"""A folder of tiny finished runs made through run.py, for the results tools' tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

from tests.helpers.cli import TINY_OVERRIDES, run_cli

FIX_LAMBDAS = ("0", "0.01")
SEEDS = "0,1"
TRACK_EVERY = 3


def made_once(base: Path, name: str, sweeps: dict[str, list[str]]) -> Path:
    """``base/name/results``, holding one ``run.py -m`` sweep per entry of ``sweeps`` ({sub-folder:
    overrides}), made once per test session under a lock (shared by every test, across workers;
    an interrupted build is redone)."""
    root = base / name
    root.mkdir(exist_ok=True)
    results = root / "results"
    with FileLock(str(root) + ".lock"):
        if (root / "DONE").is_file():
            return results
        shutil.rmtree(results, ignore_errors=True)
        for folder, overrides in sweeps.items():
            run_cli(["-m", *overrides, f"hydra.sweep.dir={results / folder}"], cwd=root)
        (root / "DONE").write_text("ok")
    return results


def make_finished_runs(base: Path) -> Path:
    """A results folder with λFix (λ ∈ {0, 0.01}) and λOpt (DUI, DU) runs, seeds 0 and 1, made
    through run.py once under ``base``."""
    keep = "checkpoint.keep=all"  # the tests read every checkpoint (a multirun keeps only the best)
    fix = [*TINY_OVERRIDES, keep, "model=fix", f"model.lambda_value={','.join(FIX_LAMBDAS)}", f"seed={SEEDS}"]
    opt = [
        *TINY_OVERRIDES,
        keep,
        "granularity=dui,du",
        f"seed={SEEDS}",
        f"tracking.trajectories.every_n_steps={TRACK_EVERY}",
        "tracking.trajectories.full_vector=true",
        "granularity.init=0.01",
        "lambda_optimizer.lr=0.5",
    ]
    return made_once(base, "finished_runs", {"fix_sweep": fix, "opt_sweep": opt})
