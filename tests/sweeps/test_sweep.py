"""Sweeps: the summary every multirun writes, the capped local launcher, checkpoint.keep."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from hydra.types import RunMode

from lopt.run.checkpoint_keep import prune_checkpoints, resolve_keep
from lopt.sweep.local import plan, thread_budget
from tests.helpers.cli import TINY_OVERRIDES, run_cli


def test_plan_caps_jobs_to_cores_and_shares_the_threads() -> None:
    assert plan(n_jobs=20, max_parallel=None, threads_per_job=None, cores=8) == (8, 1)
    assert plan(n_jobs=2, max_parallel=None, threads_per_job=None, cores=8) == (2, 4)
    assert plan(n_jobs=5, max_parallel=1, threads_per_job=None, cores=8) == (1, 8)
    assert plan(n_jobs=5, max_parallel=3, threads_per_job=2, cores=8) == (3, 2)
    with pytest.raises(ValueError, match="hydra.launcher.max_parallel"):
        plan(n_jobs=2, max_parallel=0, threads_per_job=None, cores=8)


def test_thread_budget_sets_unset_variables_and_restores_them(monkeypatch) -> None:
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    with thread_budget(4):
        assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["MKL_NUM_THREADS"] == "4"
    assert "MKL_NUM_THREADS" not in os.environ and os.environ["OMP_NUM_THREADS"] == "3"


def _checkpoints(folder: Path) -> Path:
    folder.mkdir()
    for name in ("best.ckpt", "last.ckpt", "last-v1.ckpt"):
        (folder / name).write_bytes(b"x")
    return folder


@pytest.mark.parametrize(
    ("keep", "left"), [("all", ["best.ckpt", "last-v1.ckpt", "last.ckpt"]), ("best", ["best.ckpt"]), ("none", None)]
)
def test_checkpoint_keep(tmp_path: Path, keep: str, left: list[str] | None) -> None:
    folder = _checkpoints(tmp_path / "checkpoints")
    prune_checkpoints(folder, keep)
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == left


def test_checkpoint_keep_auto_follows_the_hydra_mode(monkeypatch) -> None:
    import lopt.run.checkpoint_keep as keep_module

    class Job:  # HydraConfig as a job of a multirun sees it
        mode = RunMode.MULTIRUN

    assert resolve_keep("auto") == "all"  # no Hydra job: a single run (the Python API)
    monkeypatch.setattr(keep_module.HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(keep_module.HydraConfig, "get", staticmethod(lambda: Job))
    assert resolve_keep("auto") == "best" and resolve_keep("all") == "all"
    Job.mode = RunMode.RUN
    assert resolve_keep("auto") == "all"
    with pytest.raises(ValueError, match="checkpoint.keep='some'"):
        resolve_keep("some")


@pytest.mark.slow
def test_local_multirun_writes_a_summary_even_when_a_job_fails(tmp_path: Path) -> None:
    """Two jobs through hydra/launcher=local, one at a time, one of them failing: the sweep exits
    non-zero, and sweep_summary.{csv,md} list both, with status, metrics, run dir and logs."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            *TINY_OVERRIDES,
            "hydra/launcher=local",
            "hydra.launcher.max_parallel=1",
            "optimizer.lr=0.01,-1",  # -1 fails the job's config check
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "COMPLETED"), ("1", "FAILED")]
    good, bad = rows
    assert "optimizer.lr=0.01" in good["overrides"] and float(good["valid/auc"]) > 0
    assert float(good["test/auc"]) == json.loads((sweep / "0" / "metrics.json").read_text())["test"]["auc"]
    assert "optimizer.lr" in bad["error"] and bad["valid/auc"] == ""
    for row in rows:  # every job's logs exist: its run.log and submitit's stdout/stderr
        logs = row["logs"].split()
        assert any(p.endswith("run.log") for p in logs) and any(p.endswith("_log.err") for p in logs)
        assert all(Path(p).is_file() for p in logs), logs
    cores = len(os.sched_getaffinity(0))
    status = json.loads((sweep / "0" / ".hydra" / "job_status.json").read_text())
    expected = int(os.environ.get("OMP_NUM_THREADS", cores))  # one job at a time: every core
    assert int(good["threads"]) == status["threads"] == expected
    md = (sweep / "sweep_summary.md").read_text()
    assert "| 1 | `optimizer.lr=-1` | FAILED" in md and "[run.log](0/run.log)" in md
    # no per-job submitit folder, no literal %j; the multirun's job kept only its best checkpoint
    assert not any("%" in p.name for p in sweep.rglob("*"))
    assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == ["best.ckpt"]
