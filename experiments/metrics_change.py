"""How much a code change moved a fixed-seed run's metrics: short ml-100k runs of each method in two
checkouts, and the largest difference of their valid and test metrics.

    python experiments/metrics_change.py BEFORE_CHECKOUT AFTER_CHECKOUT --data u.data \
        --methods d dui --epochs 5 --out metrics_change.json

Each run is ``python run.py +experiment=ml100k_<method> trainer.max_epochs=<epochs> logger=csv``
(seed 0, one thread, W&B off) of that checkout, in a fresh folder, on the ml-100k file ``--data``
(``u.data``). The record holds both runs' valid and test metrics from ``metrics.json``, the largest
absolute difference and the metrics that are identical: what the bench's results quote as the
arithmetic change of a round. The commits recorded are each checkout's ``git rev-parse HEAD``
(``-dirty`` with changes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lopt.io import atomic_write_json  # noqa: E402


def run_metrics(checkout: Path, method: str, epochs: int, data: Path, out: Path) -> dict[str, float]:
    """The valid/ and test/ metrics of one short run of ``checkout`` in the new folder ``out`` (flat
    keys, e.g. ``valid/auc``)."""
    workdir = out.parent
    cmd = [
        sys.executable,
        str(checkout / "run.py"),
        f"+experiment=ml100k_{method}",
        f"trainer.max_epochs={epochs}",
        "logger=csv",
        "callbacks.progress.style=none",
        f"dataset.source.path={data}",
        "dataset.source.archive=null",
        f"paths.data_dir={workdir / 'data'}",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(checkout), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: the ml100k_{method} run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {f"{split}/{key}": float(value) for split in ("valid", "test") for key, value in metrics[split].items()}


def commit_of(checkout: Path) -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True).stdout
    return head[:7] + ("-dirty" if dirty.strip() else "")


def compare(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Both metric dicts, the largest absolute difference and the keys whose values are identical."""
    keys = sorted(before)
    if sorted(after) != keys:
        raise ValueError(f"the two runs wrote different metrics: {sorted(before)} vs {sorted(after)}")
    return {
        "before": {k: before[k] for k in keys},
        "after": {k: after[k] for k in keys},
        "max_abs_difference": max(abs(after[k] - before[k]) for k in keys),
        "keys_identical": [k for k in keys if after[k] == before[k]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the checkout before the change")
    parser.add_argument("after", type=Path, help="the checkout after it")
    parser.add_argument("--data", type=Path, required=True, help="the ml-100k ratings file (u.data)")
    parser.add_argument("--methods", nargs="+", default=["fix", "dui"], help="ml100k_<method> experiments")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--what", default="", help="what changed (written into the record)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    before, after = args.before.resolve(), args.after.resolve()
    with tempfile.TemporaryDirectory(prefix="lopt-metrics-change-") as tmp:
        runs = {
            method: compare(
                run_metrics(before, method, args.epochs, args.data.resolve(), Path(tmp) / f"before-{method}"),
                run_metrics(after, method, args.epochs, args.data.resolve(), Path(tmp) / f"after-{method}"),
            )
            for method in args.methods
        }
    record = {
        "what": (
            f"{args.epochs}-epoch ml100k_<method> runs (python run.py +experiment=ml100k_<method> "
            f"trainer.max_epochs={args.epochs} logger=csv, seed 0, 1 thread), before and after"
            + (f" {args.what}" if args.what else "")
            + ": the metrics each run wrote to metrics.json"
        ),
        "before_commit": commit_of(before),
        "after_commit": commit_of(after),
        "runs": runs,
    }
    atomic_write_json(args.out, record)
    for method, run in runs.items():
        print(
            f"ml100k_{method}: at most {run['max_abs_difference']:.1e} apart "
            f"({len(run['keys_identical'])} of {len(run['before'])} metrics identical)"
        )


if __name__ == "__main__":
    main()
