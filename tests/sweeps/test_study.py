"""experiments/study.py: the fair study's chunks, their resumable, committed records, the borrowing
rule and the CPU estimate, on a 2-run, 2-epoch synthetic study."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES


def _load_study() -> ModuleType:
    """experiments/study.py as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("experiments_study", REPO_ROOT / "experiments" / "study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


study = _load_study()

#: The tiny synthetic data and model (the epoch count comes from the plan's budget).
DATA = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_epochs")]


def _plan(root: Path, **changes: object) -> Path:
    plan = {
        "dataset": "synthetic",
        "methods": {"fix": {"overrides": ["model=fix"]}},
        "selections": {"fix": {"model.lambda_value": 0.01}},
        "blocks": ["paper", "refit-final", "refit-trajectory"],
        "seeds": [0],
        "trials": 4,
        "budget": {"max_epochs": 2, "patience": 1, "min_delta": 0.0},
        "expected_epochs": 2,
        "overrides": DATA,
        **changes,
    }
    path = root / "results" / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_chunks_tune_every_method_in_paper_and_inner_and_borrow_only_refit_without_lambda(tmp_path: Path) -> None:
    plan = study.load_plan(
        _plan(
            tmp_path,
            methods={"fix": {"tune": "fix"}, "dui": {"tune": "lambda_opt", "learns_lambda": True}},
            selections={},
            blocks=list(study.BLOCK_CONTROLS),
            tune_overrides=["tracking.snapshots.enabled=false"],
        )
    )
    names = [c.name for c in study.chunks(plan)]
    assert names == [
        "tune/temporal/paper/fix",
        "tune/temporal/paper/dui",
        "tune/temporal/inner/fix",
        "tune/temporal/inner/dui",
        "runs/temporal/paper/fix",
        "runs/temporal/paper/dui",
        "runs/temporal/inner/fix",
        "runs/temporal/inner/dui",
        "runs/temporal/refit-final/fix",
        "runs/temporal/refit-final/dui",
        "borrow/temporal/refit-trajectory/fix",
        "runs/temporal/refit-trajectory/dui",
    ]
    seeds = {study.study_seed(c) for c in study.chunks(plan) if c.kind == "tune"}
    assert len(seeds) == 4  # every study its own sampler seed
    tune = study.tune_command(plan, study.chunks(plan)[2], tmp_path / "sweep")
    assert "+tune=fix" in tune and "control=inner" in tune and "study.n_trials=4" in tune
    assert "budget.max_epochs=2" in tune and "budget.min_delta=0.0" in tune
    assert "tracking.snapshots.enabled=false" in tune  # the tuning trials' own overrides…
    fixed = study.load_plan(_plan(tmp_path / "fixed", tune_overrides=["tracking.snapshots.enabled=false"]))
    runs = study.runs_command(fixed, study.Chunk("runs", "temporal", "paper", "fix"), tmp_path / "sweep")
    assert "seed=0" in " ".join(runs)
    assert "tracking.snapshots.enabled=false" not in runs  # …never reach the seed runs


@pytest.mark.parametrize("dataset", ["ml100k", "lastfm2k"])
def test_the_committed_plans_are_one_design_and_tune_without_lambda_tracking(dataset: str) -> None:
    """Both datasets' studies: the same methods, blocks, seeds, trials, budget and splits, Λ tracking
    off in the tuning trials only, every run an experiment of its own dataset."""
    plan = study.load_plan(study.REPO_ROOT / "experiments" / "results" / dataset / "study.yaml")
    reference = study.load_plan(study.REPO_ROOT / "experiments" / "results" / "ml100k" / "study.yaml")
    off = {f"tracking.{k}.enabled=false" for k in ("stats", "trajectories", "snapshots")}
    assert set(plan.tune_overrides) == off
    assert not off & set(plan.overrides)
    assert plan.dataset == plan.experiment_prefix == dataset
    shared = {f.name for f in dataclasses.fields(study.Plan)} - {"path", "dataset", "experiment_prefix"}
    for key in sorted(shared):  # every other plan field: one design
        assert getattr(plan, key) == getattr(reference, key), key
    assert plan.trials >= 20 and len(plan.seeds) >= 5 and len(plan.splits) >= 3
    for split in plan.splits:  # the claims' rows (DUI vs λFix, DUI − D) on every split; all methods on the first
        assert {"fix", "d", "dui"} <= {m.name for m in plan.methods_of(split)}
    assert plan.methods_of(next(iter(plan.splits))) == plan.methods


def test_a_split_may_run_some_methods_only(tmp_path: Path) -> None:
    plan = study.load_plan(
        _plan(
            tmp_path,
            methods={"fix": {"tune": "fix"}, "dui": {"tune": "lambda_opt", "learns_lambda": True}},
            selections={},
            blocks=["paper"],
            splits={"temporal": [], "earlier": {"overrides": ["protocol.split.drop_latest=0.1"], "methods": ["fix"]}},
        )
    )
    assert plan.splits == {"temporal": [], "earlier": ["protocol.split.drop_latest=0.1"]}
    assert [c.name for c in study.chunks(plan)] == [
        "tune/temporal/paper/fix",
        "tune/temporal/paper/dui",
        "runs/temporal/paper/fix",
        "runs/temporal/paper/dui",
        "tune/earlier/paper/fix",
        "runs/earlier/paper/fix",
    ]
    tune = study.tune_command(plan, study.Chunk("tune", "earlier", "paper", "fix"), tmp_path / "sweep")
    assert "protocol.split.drop_latest=0.1" in tune
    with pytest.raises(ValueError, match=r"splits.earlier.methods names \['du'\]"):
        study.load_plan(_plan(tmp_path, splits={"earlier": {"methods": ["du"]}}))
    with pytest.raises(ValueError, match=r"splits.earlier has unknown keys \['seeds'\]"):
        study.load_plan(_plan(tmp_path, splits={"earlier": {"seeds": [1]}}))


def test_plan_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys \\['epochs'\\]"):
        study.load_plan(_plan(tmp_path, epochs=3))
    with pytest.raises(ValueError, match="blocks \\['refit'\\] unknown"):
        study.load_plan(_plan(tmp_path, blocks=["refit"]))
    with pytest.raises(ValueError, match="neither `tune`"):
        study.load_plan(_plan(tmp_path, selections={}))
    with pytest.raises(ValueError, match="budget needs exactly"):
        study.load_plan(_plan(tmp_path, budget={"max_epochs": 2}))


def test_cpu_estimate_counts_fits_epochs_and_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _plan(
        tmp_path,
        methods={"fix": {"tune": "fix"}},
        selections={},
        blocks=list(study.BLOCK_CONTROLS),
        seeds=[0, 1],
        budget={"max_epochs": 10, "patience": 2, "min_delta": 0.0},
        expected_epochs=4,
    )
    plan = study.load_plan(path)
    seconds = study.estimate(plan, {"fix": 2.0}, inner_share=0.75)
    assert seconds["tune/temporal/paper/fix"] == {"cap": 4 * 10 * 2.0, "expected": 4 * 4 * 2.0, "observed": 4 * 4 * 2.0}
    inner = 4 * 0.75 * 2.0  # trials × inner share × seconds
    assert seconds["tune/temporal/inner/fix"] == {"cap": inner * 10, "expected": inner * 4, "observed": inner * 4}
    assert study.estimate(plan, {"fix": 2.0}, 0.75, {"fix": 3.0})["tune/temporal/inner/fix"]["observed"] == inner * 3
    assert seconds["runs/temporal/paper/fix"]["cap"] == 2 * 10 * 2.0
    assert seconds["runs/temporal/refit-final/fix"]["cap"] == 2 * (2 * 10) * 2.0  # the first fit + the refit
    assert seconds["borrow/temporal/refit-trajectory/fix"]["cap"] == 0.0
    (path.parent / study.TIMINGS_FILE).write_text(json.dumps({"seconds_per_epoch": {"fix": 2.0}}))
    assert study.main([str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    total = sum(s["expected"] for s in seconds.values())
    assert f"({total:.0f} s)" in out and "6 chunks, 0 done, 6 to run" in out and "14 fits" in out
    assert "committed trials" not in out and "chunks done" not in out

    # committed trials of 2 and 3 epochs, and a done chunk: the estimate follows the trials
    for trial, epochs in (("seed0-0", 2), ("seed0-1", 3)):
        record = path.parent / "studies" / "temporal" / "paper" / "fix" / "mf-lfix" / trial / "metrics.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"epochs_trained": epochs}))
    marker = path.parent / study.Chunk("tune", "temporal", "paper", "fix").marker
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"seconds": 1800.0}))
    assert study.main([str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    todo = [c for c in study.chunks(plan) if c.name != "tune/temporal/paper/fix"]
    at_seen = sum(study.estimate(plan, {"fix": 2.0}, 0.75, {"fix": 2.5})[c.name]["observed"] for c in todo)
    assert "epochs a fit in the committed trials: fix 2.5 (2 trials)" in out
    assert f"{at_seen / 3600:.1f} h ({at_seen:.0f} s)" in out
    assert "wall time of the 1 chunks done: 0.50 h" in out


def test_measure_times_an_epoch_as_the_difference_of_two_warm_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--measure: a 1-epoch warm-up, then E and 2E epochs; seconds per epoch = (t_2E − t_E) / E, so a
    one-off cost (a first compile, in the warm-up or not) drops out; a 2E run not longer than the
    E run is an error, not a zero."""
    plan = study.load_plan(_plan(tmp_path))
    lengths: list[int] = []

    def fake_run(command, log: Path, seconds=lambda e: 7.0 + 0.5 * e) -> None:  # type: ignore[no-untyped-def]
        epochs = int(next(a for a in command if a.startswith("trainer.max_epochs=")).split("=")[1])
        run_dir = Path(next(a for a in command if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        lengths.append(epochs)
        run_dir.mkdir(parents=True, exist_ok=True)
        extra = 30.0 if epochs == 1 else 0.0  # the first run on the machine compiles
        metrics = {"train_seconds": seconds(epochs) + extra, "epochs_trained": epochs}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(study, "_run", fake_run)
    assert study.measure(plan, 3, tmp_path / "scratch") == {"fix": pytest.approx(0.5)}
    assert lengths == [1, 3, 6]
    monkeypatch.setattr(study, "_run", lambda c, log: fake_run(c, log, seconds=lambda e: 9.0 - e))
    with pytest.raises(RuntimeError, match="measure again on a quiet machine"):
        study.measure(plan, 3, tmp_path / "scratch")


def test_borrowing_is_refused_for_a_run_that_does_not_serve_the_block(tmp_path: Path) -> None:
    plan = study.load_plan(_plan(tmp_path))
    record = plan.results / "runs" / "temporal" / "refit-final" / "mf-lopt-dui" / "seed0"
    record.mkdir(parents=True)
    (record / "metrics.json").write_text(json.dumps({"control": {"serves": ["refit-final"]}}))
    marker = plan.results / study.Chunk("runs", "temporal", "refit-final", "fix").marker
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"records": ["runs/temporal/refit-final/mf-lopt-dui"]}))
    with pytest.raises(ValueError, match="serves \\['refit-final'\\], not refit-trajectory"):
        study.run_borrow(plan, study.Chunk("borrow", "temporal", "refit-trajectory", "fix"))
    assert not (plan.results / "runs" / "temporal" / "refit-trajectory").exists() or not any(
        (plan.results / "runs" / "temporal" / "refit-trajectory").iterdir()
    )


@pytest.mark.slow
def test_study_runs_in_committed_chunks_and_resumes_from_the_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """λFix, 1 seed, 2 epochs: the paper run, the refit-final run, and the refit-trajectory row
    borrowed from it. One chunk, a lost scratch folder (another machine), then the rest: each chunk
    is one commit of its records; a finished study runs nothing more."""
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    repo = tmp_path / "repo"
    path = _plan(repo)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "study@example.org")
    _git(repo, "config", "user.name", "study")
    scratch = tmp_path / "scratch"
    args = [str(path), "--commit", "--scratch", str(scratch)]
    assert study.main([*args, "--max-chunks", "1"]) == 0
    assert [line.split(" (")[0] for line in _git(repo, "log", "--format=%s").splitlines()] == [
        "study synthetic: runs/temporal/paper/fix"
    ]
    paper = json.loads((repo / "results/runs/temporal/paper/mf-lfix/seed0/metrics.json").read_text())
    assert paper["control"]["block"] == "paper" and paper["epochs_trained"] <= 2 and paper["max_epochs"] == 2
    assert paper["output_dir"] == "temporal/paper/mf-lfix/seed0"

    shutil.rmtree(scratch)  # resumed elsewhere: only what was committed is left
    (repo / "notes.txt").write_text("staged by someone else\n")
    _git(repo, "add", "notes.txt")
    assert study.main(args) == 0
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]  # not in the chunks' commits
    log = _git(repo, "log", "--format=%s").splitlines()
    assert [line.split(" (")[0] for line in log] == [
        "study synthetic: borrow/temporal/refit-trajectory/fix",
        "study synthetic: runs/temporal/refit-final/fix",
        "study synthetic: runs/temporal/paper/fix",
    ]
    assert _git(repo, "status", "--porcelain", "results/runs", "results/chunks") == ""
    refit = json.loads((repo / "results/runs/temporal/refit-final/mf-lfix/seed0/metrics.json").read_text())
    borrowed = json.loads((repo / "results/runs/temporal/refit-trajectory/mf-lfix/seed0/metrics.json").read_text())
    assert refit["control"]["borrowed"] is False and refit["control"]["epochs"] == refit["best_epoch"] + 1
    assert borrowed["control"]["borrowed"] is True and borrowed["control"]["block"] == "refit-trajectory"
    assert borrowed["control"]["borrowed_from"] == "temporal/refit-final/mf-lfix/seed0"
    assert borrowed["test"] == refit["test"]
    marker = json.loads((repo / "results" / study.Chunk("runs", "temporal", "paper", "fix").marker).read_text())
    assert marker["records"] == ["runs/temporal/paper/mf-lfix"] and marker["code_commit"]

    capsys.readouterr()
    assert study.main(args) == 0
    assert "every chunk done" in capsys.readouterr().out
    assert len(_git(repo, "log", "--format=%s").splitlines()) == 3


@pytest.mark.slow
def test_git_waits_for_another_process_holding_the_index_lock(tmp_path: Path) -> None:
    """A chunk's commit retries while another git process (a commit in the same checkout) holds
    .git/index.lock, and fails with git's message on any other error."""
    import threading

    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "study@example.org")
    _git(tmp_path, "config", "user.name", "study")
    (tmp_path / "a.txt").write_text("a\n")
    lock = tmp_path / ".git" / "index.lock"
    lock.write_text("")
    threading.Timer(1.0, lock.unlink).start()
    study._git(["add", "--", "a.txt"], tmp_path)
    assert _git(tmp_path, "diff", "--cached", "--name-only").split() == ["a.txt"]
    with pytest.raises(RuntimeError, match="git commit failed .*no-such-path"):
        study._git(["commit", "-q", "-m", "x", "--", "no-such-path"], tmp_path, attempts=2)
