"""Copy the compact records of finished runs into a folder small enough to commit.

    python experiments/collect_records.py BLOCK_DIR [BLOCK_DIR …] --out DIR

Each BLOCK_DIR (e.g. the ``--out`` of ``experiments/rerun_best.py``) holds finished runs at any
depth. For every run this writes ``DIR/<block>/<method>/seed<seed>/`` with what
``reproduce_table.py`` and ``figures.py`` read, and nothing else:

* ``metrics.json`` and ``.hydra/config.yaml`` (the results contract, docs/results.md);
* ``per_user_test.parquet`` (per-user test metrics: paired tests, Figure 7);
* ``lambda_trajectories.parquet`` of MF-λOpt-DUI runs that tracked Λ (Figure 8).

Machine-local paths are left out: ``metrics.json``'s ``output_dir`` becomes the record folder
(relative to DIR) and the config's ``dataset.source.path`` the data file's name. Checkpoints,
logs and Λ snapshots stay behind. ``<block>`` is the BLOCK_DIR's folder name; runs
sharing a method and seed (the trials of an Optuna study) get ``seed<seed>-<run folder>``. The
copy is all-or-nothing: it is written into a temporary folder beside DIR and renamed into place,
and an existing DIR is refused unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lopt.analysis.results import Run, find_runs, find_unfinished_runs

#: Files copied from every run, relative to its folder.
RECORD_FILES = ("metrics.json", ".hydra/config.yaml", "per_user_test.parquet")
#: Files copied from a tuning trial (``collect(..., trials=True)``): a trial is judged on valid, and
#: its per-user test metrics and Λ trajectories feed no table or figure.
TRIAL_FILES = ("metrics.json", ".hydra/config.yaml")
#: Extra files copied from runs of these methods, each with the config key that turns it off: a
#: run with that key false (e.g. a tuning trial without Λ tracking) has none to copy.
EXTRA_FILES = {"MF-λOpt-DUI": (("lambda_trajectories.parquet", "tracking.trajectories.enabled"),)}


def record_files(run: Run, trials: bool = False) -> list[str]:
    """The files of ``run`` that its compact record holds (``trials``: a tuning trial's)."""
    if trials:
        return list(TRIAL_FILES)
    extra = [name for name, key in EXTRA_FILES.get(run.method, ()) if _enabled(run.config, key)]
    return [*RECORD_FILES, *extra]


def _enabled(config: dict[str, Any], key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return True  # a config without the key predates it: the file was always written
        node = node[part]
    return bool(node)


def _metrics_without_local_paths(text: str, target: Path) -> str:
    """metrics.json with ``output_dir`` pointing at the record folder (relative to the output)."""
    metrics = json.loads(text)
    metrics["output_dir"] = target.as_posix()
    return json.dumps(metrics, indent=2) + "\n"


#: Config keys holding a machine-local path: the record keeps its last component only.
LOCAL_PATH_KEYS = ("dataset.source.path", "study.dir")


def _config_without_local_paths(text: str, target: Path) -> str:
    """The composed config with the dataset file and a tuning study's folder named by their last
    component only (where they lay on the machine that ran it says nothing about the run; tables
    ignore the keys)."""
    config = OmegaConf.create(text)
    for key in LOCAL_PATH_KEYS:
        path = OmegaConf.select(config, key, throw_on_resolution_failure=False)
        if isinstance(path, str) and path:
            OmegaConf.update(config, key, Path(path).name)
    return OmegaConf.to_yaml(config)


#: Record files rewritten on copy so that no machine-local path is committed.
LOCAL_PATHS = {"metrics.json": _metrics_without_local_paths, ".hydra/config.yaml": _config_without_local_paths}


def slug(method: str) -> str:
    """A folder name for a method label: ``MF-λOpt-DUI`` → ``mf-lopt-dui``."""
    return re.sub(r"[^a-z0-9]+", "-", method.replace("λ", "l").lower()).strip("-")


def record_dirs(block: str, runs: Sequence[Run]) -> dict[Path, Run]:
    """Where each run's records go, relative to the output folder: ``<block>/<method>/seed<seed>``,
    and ``…/seed<seed>-<run folder>`` for runs sharing a method and seed (the trials of a study)."""
    groups: dict[Path, list[Run]] = {}
    for run in runs:
        groups.setdefault(Path(block) / slug(run.method) / f"seed{run.seed}", []).append(run)
    plan = {}
    for target, group in groups.items():
        for run in group:
            plan[target if len(group) == 1 else target.with_name(f"{target.name}-{run.path.name}")] = run
    if len(plan) < len(runs):
        raise ValueError(f"runs of {block} share a method, a seed and a folder name: give them distinct folders")
    return plan


def collect(
    blocks: Sequence[Path], out: Path, overwrite: bool = False, skip_unfinished: bool = False, trials: bool = False
) -> list[Path]:
    """Copy every finished run's records under ``blocks`` into ``out``; returns the record folders.
    Raises ValueError on an unfinished run (unless ``skip_unfinished``: then they are listed on
    stderr and left out) or a missing file. ``trials``: the runs are tuning trials (TRIAL_FILES)."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: give --overwrite to replace it")
    plan: dict[Path, Run] = {}
    for block in blocks:
        unfinished = find_unfinished_runs(block)
        if unfinished and not skip_unfinished:
            raise ValueError(f"{block} holds unfinished runs: {', '.join(map(str, unfinished))}")
        for run_dir in unfinished:
            print(f"left out (unfinished): {run_dir}", file=sys.stderr)
        plan.update(record_dirs(block.name, find_runs(block)))
    if not plan:
        raise ValueError(f"no finished run under {', '.join(map(str, blocks))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for target, run in sorted(plan.items()):
            for name in record_files(run, trials):
                source = run.path / name
                if not source.is_file():
                    raise ValueError(f"{source} is missing: the run did not write its records")
                destination = staging / target / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                if name in LOCAL_PATHS:
                    destination.write_text(LOCAL_PATHS[name](source.read_text(encoding="utf-8"), target))
                else:
                    shutil.copyfile(source, destination)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / target for target in sorted(plan)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("blocks", nargs="+", type=Path, help="folders of finished runs, one per block")
    parser.add_argument("--out", type=Path, required=True, help="the records folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument(
        "--skip-unfinished", action="store_true", help="leave out unfinished runs (e.g. failed trials of a study)"
    )
    args = parser.parse_args(argv)
    try:
        written = collect(args.blocks, args.out, args.overwrite, args.skip_unfinished)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(written)} runs → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
