"""experiments/study.py: the fair study's chunks, their resumable, committed records, the borrowing
rule and the CPU estimate, on a 2-run, 2-epoch synthetic study."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
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
    for seeds in ([], [1, 1]):
        with pytest.raises(ValueError, match="`seeds` must list distinct seeds"):
            study.load_plan(_plan(tmp_path, seeds=seeds))
    assert study.main([str(_plan(tmp_path)), "--max-chunks", "-1"]) == 2
    assert study.main([str(_plan(tmp_path)), "--jobs", "0"]) == 2


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

    # a suspended chunk with 1 of its 4 trials done: the estimate counts the 3 it has to run
    inner = study.Chunk("tune", "temporal", "inner", "fix")
    _stored(tmp_path / "suspended" / "sweep", "host:1", finished=1)
    study.pack_carry(tmp_path / "suspended" / "sweep", path.parent / inner.carry)
    assert study.main([str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    part = at_seen - study.estimate(plan, {"fix": 2.0}, 0.75, {"fix": 2.5})[inner.name]["observed"] / 4
    assert f"  part  {inner.name}" in out and "(1 done)" in out
    assert f"{part / 3600:.1f} h ({part:.0f} s)" in out
    assert "at the pace" not in out  # no seed-runs chunk done: no pace for them

    # a seed-runs chunk done in 100 s, the tuning chunk in 1800 s: the rest at those paces
    runs = study.Chunk("runs", "temporal", "paper", "fix")
    (path.parent / runs.marker).write_text(json.dumps({"seconds": 100.0}))
    assert study.main([str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    est = study.estimate(plan, {"fix": 2.0}, 0.75, {"fix": 2.5})
    pace = {"tune": 1800.0 / est["tune/temporal/paper/fix"]["observed"], "runs": 100.0 / est[runs.name]["observed"]}
    rest = [
        c for c in study.chunks(plan) if c.kind != "borrow" and c.name not in ("tune/temporal/paper/fix", runs.name)
    ]
    projected = sum(est[c.name]["observed"] * pace[c.kind] * (0.75 if c == inner else 1.0) for c in rest)
    assert f"tuning {pace['tune']:.2f}, seed runs {pace['runs']:.2f}" in out
    assert f"take about {projected / 3600:.1f} h of wall time" in out


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


def _stored(sweep: Path, driver: str, finished: int = 1):  # type: ignore[no-untyped-def]
    """A stored study in ``sweep`` as the sweeper leaves it: ``finished`` finished trials, one
    left running by ``driver``, run folders with weights, logs and a Λ dump, the launcher's job
    files."""
    import optuna
    from optuna.distributions import FloatDistribution

    from lopt.sweep.study import DRIVER_ATTR, HEARTBEAT_ATTR

    sweep.mkdir(parents=True)
    url = f"sqlite:///{sweep / 'study.db'}"
    stored = optuna.create_study(study_name="sweep", storage=url, direction="maximize")
    space = {"model.lambda_value": FloatDistribution(0.0, 1.0)}
    for _ in range(finished):
        stored.tell(stored.ask(space), 0.5)
    running = stored.ask(space)
    stored._storage.set_trial_system_attr(running._trial_id, DRIVER_ATTR, driver)
    stored._storage.set_trial_system_attr(running._trial_id, HEARTBEAT_ATTR, time.time())
    (sweep / "study.yaml").write_text(yaml.safe_dump({"name": "sweep", "storage": url, "metric": "valid/auc"}))
    (sweep / "study_summary.md").write_text("# Study sweep\n")
    for number in range(finished + 1):
        trial = sweep / str(number)
        (trial / "checkpoints").mkdir(parents=True)
        (trial / "checkpoints" / "best.ckpt").write_bytes(b"weights")
        (trial / "csv").mkdir()
        (trial / "csv" / "metrics.csv").write_text("epoch\n0\n")
        (trial / ".hydra").mkdir()
        (trial / ".hydra" / "config.yaml").write_text("seed: 0\n")
        (trial / "run.log").write_text("log\n")
        (trial / "lambda.npz").write_bytes(b"lambda")
        if number < finished:
            (trial / "metrics.json").write_text(json.dumps({"valid": {"auc": 0.5}}))
    (sweep / ".submitit").mkdir()
    (sweep / ".submitit" / "job.pkl").write_bytes(b"job")
    return stored


def test_a_carry_keeps_the_stored_study_and_results_and_orphans_its_running_trials(tmp_path: Path) -> None:
    """The carry of a suspended tuning chunk: the study's storage and files and, of each trial,
    its metrics, config and log (no weights, Λ dump, curves or job files), written through a
    temporary file; restored elsewhere it opens from its new folder, and the trial its dead
    driver left running names no process and no heartbeat (a resumed study re-runs it at once)."""
    from lopt.sweep.study import DRIVER_ATTR, HEARTBEAT_ATTR

    sweep = tmp_path / "here" / "sweep"
    _stored(sweep, "host:123")
    carry = tmp_path / "results" / "carry" / "tune--temporal--paper--fix.tar.gz"
    study.pack_carry(sweep, carry)
    assert sorted(p.name for p in carry.parent.iterdir()) == [carry.name]
    with tarfile.open(carry) as tar:
        names = {Path(n).as_posix() for n in tar.getnames() if tar.getmember(n).isfile()}
    assert names == {
        "study.db",
        "study.yaml",
        "study_summary.md",
        "0/metrics.json",
        "0/run.log",
        "0/.hydra/config.yaml",
        "1/run.log",
        "1/.hydra/config.yaml",
    }

    shutil.rmtree(tmp_path / "here")  # another machine: only the carry is left
    restored = tmp_path / "there" / "sweep"
    assert study.restore_carry(carry, restored)
    assert study.finished_trials(restored) == 1
    assert not (tmp_path / "here").exists()  # opened from its own folder, not the packed one's
    running = [t for t in study.stored_study(restored).trials if t.state.name == "RUNNING"]
    assert [(t.system_attrs[DRIVER_ATTR], t.system_attrs[HEARTBEAT_ATTR]) for t in running] == [
        ("suspended:host:123", 0.0)
    ]
    assert sorted(p.name for p in restored.parent.iterdir()) == ["sweep"]  # no staging folder left


def test_a_carry_replaces_a_scratch_study_only_when_it_is_further(tmp_path: Path) -> None:
    """A machine that comes back to a chunk finds its own scratch study and a carry that another
    machine wrote: the one with more finished trials wins (a tie keeps the scratch folder)."""
    carry = tmp_path / "carry.tar.gz"
    _stored(tmp_path / "other" / "sweep", "elsewhere:1", finished=2)
    study.pack_carry(tmp_path / "other" / "sweep", carry)
    sweep = tmp_path / "scratch" / "sweep"
    _stored(sweep, "here:1", finished=1)
    assert study.restore_carry(carry, sweep) and study.finished_trials(sweep) == 2
    assert not (sweep / "0" / "checkpoints").exists()  # the carried folder, not the old one
    assert not study.restore_carry(carry, sweep)  # a tie: kept
    assert (sweep / "0" / "metrics.json").is_file()
    assert sorted(p.name for p in sweep.parent.iterdir()) == ["sweep"]

    # interrupted trials do not count as done (the sweeper runs their parameters again)
    import optuna

    from lopt.sweep.study import INTERRUPTED

    crowded = tmp_path / "crowded" / "sweep"
    stored = _stored(crowded, "here:1", finished=1)
    for _ in range(3):
        trial = stored.ask({"model.lambda_value": optuna.distributions.FloatDistribution(0.0, 1.0)})
        trial.set_user_attr(INTERRUPTED, True)
        stored.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert study.restore_carry(carry, crowded) and study.done_trials(crowded) == 2
    # a scratch folder without a stored study (stopped before its first trial) never wins
    empty = tmp_path / "empty" / "sweep"
    empty.mkdir(parents=True)
    assert study.restore_carry(carry, empty) and study.done_trials(empty) == 2


def _git_repo(repo: Path) -> None:
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "study@example.org")
    _git(repo, "config", "user.name", "study")


@pytest.mark.slow
def test_a_suspended_tuning_chunk_commits_its_stored_study_and_resumes_it_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-trial λFix study stopped after its first trial: the stop commits the chunk's carry and
    exits with SUSPENDED_EXIT (``--plan`` calls the chunk ``part``); from another scratch folder
    (another machine) the same command restores it, runs the second trial only, and the chunk's
    commit removes the carry."""
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    repo = tmp_path / "repo"
    path = _plan(
        repo, methods={"fix": {"tune": "fix", "overrides": ["model=fix"]}}, selections={}, blocks=["paper"], trials=2
    )
    _git_repo(repo)
    chunk = study.Chunk("tune", "temporal", "paper", "fix")
    real_run = study._run

    def stopped_after_one_trial(command, log: Path) -> None:  # type: ignore[no-untyped-def]
        real_run([c if c != "study.n_trials=2" else "study.n_trials=1" for c in command], log)
        raise study.Suspended("SIGTERM")

    monkeypatch.setattr(study, "_run", stopped_after_one_trial)
    args = [str(path), "--commit", "--max-chunks", "1"]
    assert study.main([*args, "--scratch", str(tmp_path / "a")]) == study.SUSPENDED_EXIT
    assert "1 of 2 trials finished) is kept in carry/tune--temporal--paper--fix.tar.gz, committed" in (
        capsys.readouterr().out
    )
    assert _git(repo, "log", "--format=%s").splitlines() == [
        "study synthetic: suspend tune/temporal/paper/fix (1 of 2 trials finished)"
    ]
    assert not (repo / "results" / chunk.marker).exists()
    assert study.main([str(path), "--plan"]) == 0
    assert "  part  tune/temporal/paper/fix" in capsys.readouterr().out
    first = study.stored_study(tmp_path / "a" / chunk.name / "sweep").trials[0]
    with tarfile.open(repo / "results" / chunk.carry) as tar:
        spent = json.loads(tar.extractfile("./" + study.SECONDS_FILE).read())["seconds"]  # type: ignore[union-attr]
    assert spent > 0

    monkeypatch.setattr(study, "_run", real_run)
    assert study.main([*args, "--scratch", str(tmp_path / "b")]) == 0
    assert "resumed from carry/tune--temporal--paper--fix.tar.gz: 1 of 2 trials finished" in capsys.readouterr().out
    trials = study.stored_study(tmp_path / "b" / chunk.name / "sweep").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].datetime_complete == first.datetime_complete  # kept, not run again
    assert trials[0].params == first.params
    log = [line.split(" (")[0] for line in _git(repo, "log", "--format=%s").splitlines()]
    assert log == ["study synthetic: tune/temporal/paper/fix", "study synthetic: suspend tune/temporal/paper/fix"]
    assert not (repo / "results" / chunk.carry).exists() and _git(repo, "ls-files", "results/carry") == ""
    assert _git(repo, "status", "--porcelain", "results/carry", "results/studies", "results/chunks") == ""
    records = list((repo / "results" / "studies" / "temporal" / "paper" / "fix").rglob("metrics.json"))
    assert len(records) == 2
    assert json.loads((repo / "results" / chunk.marker).read_text())["seconds"] > spent  # both runs' seconds
    rows = list(csv.DictReader((repo / "results" / "studies" / "temporal" / "paper" / "fix" / "trials.csv").open()))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]


def _processes_naming(text: str) -> list[str]:
    """The ids of live processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_stops_the_chunk_s_jobs_and_its_study_resumes_from_the_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM to the driver while the launcher's jobs start: every process of the chunk ends
    (none finishes its trial after the stop), the stored study is carried with its running trials
    marked a dead driver's, the exit status is SUSPENDED_EXIT; the same command with another
    scratch folder re-runs those trials' parameters and finishes the chunk."""
    repo = tmp_path / "repo"
    path = _plan(
        repo,
        methods={"fix": {"tune": "fix", "overrides": ["model=fix"]}},
        selections={},
        blocks=["paper"],
        trials=2,
        overrides=[*DATA, "hydra/launcher=local"],
    )
    scratch = tmp_path / "scratch"
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    command = [sys.executable, str(REPO_ROOT / "experiments" / "study.py"), str(path), "--scratch", str(scratch)]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = scratch / "tune" / "temporal" / "paper" / "fix" / "sweep" / ".submitit"
    deadline = time.monotonic() + 300
    while driver.poll() is None and not _processes_naming(str(jobs)) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the launcher's jobs run (they take seconds to import before training)
    assert driver.poll() is None and _processes_naming(str(jobs)), driver.communicate()[0]
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == study.SUSPENDED_EXIT, out
    assert "suspended (SIGTERM) in chunk tune/temporal/paper/fix" in out
    assert not _processes_naming(str(scratch)), "processes of the stopped chunk still run"
    carry = repo / "results" / study.Chunk("tune", "temporal", "paper", "fix").carry
    restored = tmp_path / "restored" / "sweep"
    assert study.restore_carry(carry, restored)
    running = [t for t in study.stored_study(restored).trials if t.state.name == "RUNNING"]
    assert running and all(t.system_attrs["lopt:driver"].startswith("suspended:") for t in running)
    finished = [t.number for t in running if (restored / str(t.number) / "metrics.json").exists()]
    assert not finished, f"trials {finished} ran on after the stop"

    assert study.main([str(path), "--scratch", str(tmp_path / "elsewhere")]) == 0
    trials = study.stored_study(tmp_path / "elsewhere" / "tune" / "temporal" / "paper" / "fix" / "sweep").trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    assert retried == {t.number for t in running}  # the cut-short trials' parameters, run again
    listed = repo / "results" / "studies" / "temporal" / "paper" / "fix" / "trials.csv"
    states = {r["trial"]: r["state"] for r in csv.DictReader(listed.open())}
    assert [states[str(n)] for n in sorted(retried)] == ["FAIL (interrupted)"] * len(retried)
    assert "run_dir" not in listed.read_text() and str(tmp_path) not in listed.read_text()


# A launcher job as submitit runs one: SIGTERM ignored (its job environment waits for a requeue),
# a job of its own in the same group, a result written if it is left to run.
_SIGTERM_DEAF_JOB = """
import signal, subprocess, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: None)
if len(sys.argv) == 1:
    subprocess.Popen([sys.executable, __file__, "inner"])
Path(__file__).with_name("started-" + ("inner" if len(sys.argv) > 1 else "outer")).touch()
time.sleep(8)
Path(__file__).with_name("finished").touch()
"""


@pytest.mark.slow
def test_a_stop_ends_jobs_that_ignore_sigterm_even_when_the_driver_ignores_sigint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's command whose processes ignore SIGTERM, run by a driver that ignores SIGINT (as
    one started in the background does): a stop ends the whole group within a few seconds, long
    before STOP_GRACE_S, and no process of it lives to write its result."""
    script = tmp_path / "job.py"
    script.write_text(_SIGTERM_DEAF_JOB, encoding="utf-8")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(study._STOP, "asked", None)

            def ask_when_both_run(*_: object) -> None:
                if all((tmp_path / f"started-{which}").exists() for which in ("outer", "inner")):
                    study._STOP["asked"] = "SIGTERM"

            old_alarm = signal.signal(signal.SIGALRM, ask_when_both_run)
            signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
            started = time.monotonic()
            try:
                with pytest.raises(study.Suspended):
                    study._run([sys.executable, str(script)], tmp_path / "chunk.log")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0.0)
                signal.signal(signal.SIGALRM, old_alarm)
            stopped_in = time.monotonic() - started
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stopped_in < study.STOP_GRACE_S / 2, f"the group took {stopped_in:.1f} s to end"
    time.sleep(max(0.0, 8.5 - (time.monotonic() - started)))  # past the jobs' own end
    assert not (tmp_path / "finished").exists(), "a process of the stopped group ran to its end"


@pytest.mark.slow
def test_hours_suspends_the_study(tmp_path: Path) -> None:
    """``--hours`` stops the study as SIGTERM would (exit status SUSPENDED_EXIT, nothing of the
    chunk left running); a non-positive value is refused. The study's 20 trials outlast the 5.4 s
    on any machine."""
    repo = tmp_path / "repo"
    path = _plan(
        repo, methods={"fix": {"tune": "fix", "overrides": ["model=fix"]}}, selections={}, blocks=["paper"], trials=20
    )
    scratch = tmp_path / "scratch"
    env = {**os.environ, "LOPT_DATA_DIR": str(tmp_path / "data"), "WANDB_MODE": "disabled"}
    command = [sys.executable, str(REPO_ROOT / "experiments" / "study.py"), str(path), "--scratch", str(scratch)]
    done = subprocess.run([*command, "--hours", "0.0015"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == study.SUSPENDED_EXIT, done.stdout + done.stderr
    assert "suspended (SIGALRM) in chunk tune/temporal/paper/fix" in done.stdout
    assert not _processes_naming(str(scratch))
    assert study.main([str(path), "--hours", "0"]) == 2


def _write_done_chunk(plan, chunk) -> None:  # type: ignore[no-untyped-def]
    """``chunk``'s record (runs/…/mf-lfix/seed0) and marker, written as a finished chunk leaves
    them before its commit."""
    record = plan.results / "runs" / "temporal" / "paper" / "mf-lfix" / "seed0"
    record.mkdir(parents=True)
    (record / "metrics.json").write_text("{}")
    marker = plan.results / chunk.marker
    marker.parent.mkdir(parents=True)
    summary = {"chunk": chunk.name, "records": ["runs/temporal/paper/mf-lfix"], "code_commit": "abc", "seconds": 1.0}
    marker.write_text(json.dumps(summary))


@pytest.mark.slow
def test_a_chunk_whose_commit_failed_is_committed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's records and marker written, its commit lost (the driver killed between them):
    the next run with ``--commit`` commits them before anything else, given the plan by a path
    relative to the caller's folder; a carry staged by a suspension whose commit was lost leaves
    the index."""
    repo = tmp_path / "repo"
    path = _plan(repo)
    _git_repo(repo)
    plan = study.load_plan(path)
    chunk = study.Chunk("runs", "temporal", "paper", "fix")
    _write_done_chunk(plan, chunk)
    carry = plan.results / chunk.carry
    carry.parent.mkdir()
    carry.write_bytes(b"carry")
    _git(repo, "add", str(carry))
    carry.unlink()
    monkeypatch.chdir(tmp_path)
    assert study.main([str(path.relative_to(tmp_path)), "--commit", "--max-chunks", "0"]) == 0
    assert _git(repo, "log", "--format=%s").splitlines() == [
        "study synthetic: runs/temporal/paper/fix (1 s, code abc) (committed by a later run)"
    ]
    assert _git(repo, "ls-files", "results").split() == [
        "results/chunks/runs--temporal--paper--fix.json",
        "results/runs/temporal/paper/mf-lfix/seed0/metrics.json",
    ]


@pytest.mark.slow
def test_code_runs_every_fit_from_another_checkout_and_names_its_commit(tmp_path: Path) -> None:
    """--code DIR: the fits' commands run DIR/run.py from DIR, the chunk records name DIR's
    commit; a folder without run.py is refused."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.py").write_text("import os, sys\nopen('ran.txt', 'w').write(os.getcwd() + ' ' + sys.argv[1])\n")
    _git(code, "init", "-q")
    _git(code, "config", "user.email", "study@example.org")
    _git(code, "config", "user.name", "study")
    _git(code, "add", "run.py")
    _git(code, "commit", "-q", "-m", "the study's code")
    plan = study.load_plan(_plan(tmp_path, methods={"fix": {"tune": "fix", "overrides": ["model=fix"]}}, selections={}))
    assert plan.code == REPO_ROOT
    plan.code = code
    chunk = study.Chunk("tune", "temporal", "paper", "fix")
    command = study.tune_command(plan, chunk, tmp_path / "sweep")
    assert command[:3] == [sys.executable, str(code / "run.py"), "-m"]
    assert study.code_commit(plan) == _git(code, "rev-parse", "HEAD").strip()
    study._run(command, tmp_path / "log.txt")
    assert (code / "ran.txt").read_text() == f"{code} -m"
    assert study.main([str(plan.path), "--code", str(tmp_path), "--max-chunks", "0"]) == 2


def test_the_trial_list_keeps_every_trial_and_no_machine_path(tmp_path: Path) -> None:
    """trials.csv: a failed trial (no record of its own) is listed with its error, whose folders
    are shortened; the run folder column is left out."""
    import optuna

    stored = _stored(tmp_path / "sweep", "host:1")
    failed = stored.ask({"model.lambda_value": optuna.distributions.FloatDistribution(0.0, 1.0)})
    failed.set_user_attr("error", "valid/auc=nan in /home/x/sweep/2/metrics.json")
    stored.tell(failed, state=optuna.trial.TrialState.FAIL)
    study.write_trials(stored, tmp_path / "trials.csv")
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "RUNNING"), ("2", "FAIL")]
    assert rows[2]["error"] == "valid/auc=nan in …/metrics.json" and "run_dir" not in rows[0]
    odd = stored.ask({"model.lambda_value": optuna.distributions.FloatDistribution(0.0, 1.0)})
    odd.set_user_attr("error", "no metrics.json in /srv/my runs/data/study/sweep/3; see /srv/my runs/log")
    stored.tell(odd, state=optuna.trial.TrialState.FAIL)
    study.write_trials(stored, tmp_path / "trials.csv", roots=[Path("/srv/my runs")])
    assert list(csv.DictReader((tmp_path / "trials.csv").open()))[3]["error"] == (
        "no metrics.json in …/data/study/sweep/3; see …/log"
    )


@pytest.mark.slow
def test_a_chunk_commit_removes_its_carry_whatever_git_holds_of_it(tmp_path: Path) -> None:
    """The carry of a suspended chunk is in the last commit; the chunk has finished (records and
    marker written) and its carry is gone with its folder, its deletion staged by someone: the
    next run with ``--commit`` commits the chunk and the carry's removal."""
    repo = tmp_path / "repo"
    path = _plan(repo)
    _git_repo(repo)
    plan = study.load_plan(path)
    chunk = study.Chunk("runs", "temporal", "paper", "fix")
    carry = plan.results / chunk.carry
    carry.parent.mkdir(parents=True)
    carry.write_bytes(b"carry")
    _git(repo, "add", str(carry))
    _git(repo, "commit", "-q", "-m", "suspend")
    _write_done_chunk(plan, chunk)
    _git(repo, "rm", "-q", "--cached", str(carry))
    shutil.rmtree(carry.parent)
    assert study.main([str(path), "--commit", "--max-chunks", "0"]) == 0
    assert _git(repo, "ls-files", "results").split() == [
        "results/chunks/runs--temporal--paper--fix.json",
        "results/runs/temporal/paper/mf-lfix/seed0/metrics.json",
    ]
    assert _git(repo, "status", "--porcelain", "results/carry", "results/runs", "results/chunks") == ""


def test_a_signal_the_driver_was_started_to_ignore_stays_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under nohup (SIGHUP ignored) the driver leaves SIGHUP ignored while the study runs; the
    other stops suspend it; every handler is restored after."""
    seen = {}

    def fake_study(*args: object) -> int:
        seen.update({sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)})
        return 0

    monkeypatch.setattr(study, "run_study", fake_study)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        assert study.main([str(_plan(tmp_path))]) == 0
        assert seen[signal.SIGHUP] is signal.SIG_IGN
        assert seen[signal.SIGTERM] is study._ask_stop and seen[signal.SIGINT] is study._ask_stop
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} == before
    finally:
        signal.signal(signal.SIGHUP, previous)


# A command of the pool: stamps its start and end (monotonic clock) into <name>.start/.end beside
# it, after sleeping argv[2] seconds; exits with argv[3]; writes the thread budget it was given.
_STAMPING_COMMAND = """
import os, sys, time
from pathlib import Path
here = Path(__file__).parent
name, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
(here / (name + ".start")).write_text(repr(time.monotonic()))
(here / (name + ".threads")).write_text(os.environ.get("OMP_NUM_THREADS", ""))
time.sleep(seconds)
if code == 0:
    (here / (name + ".end")).write_text(repr(time.monotonic()))
sys.exit(code)
"""


def _pool_commands(tmp_path: Path, specs: list[tuple[str, float, int]]) -> list[tuple[list[str], Path]]:
    script = tmp_path / "command.py"
    script.write_text(_STAMPING_COMMAND, encoding="utf-8")
    return [([sys.executable, str(script), n, str(s), str(c)], tmp_path / f"{n}.log") for n, s, c in specs]


@pytest.mark.slow
def test_the_pool_runs_its_commands_jobs_at_a_time_in_order(tmp_path: Path) -> None:
    """Five commands, 2 at a time: never more than 2 run at once, they start in the order given,
    each starts as soon as a place frees (the short ones do not wait for the long one), on_exit
    follows each end, and each gets the environment given."""
    specs = [("a", 15.0, 0), ("b", 0.5, 0), ("c", 0.5, 0), ("d", 0.5, 0), ("e", 0.5, 0)]
    began: list[str] = []
    ended: list[str] = []
    study._run_pool(
        _pool_commands(tmp_path, specs),
        2,
        lambda i: ended.append(specs[i][0]),
        env={"OMP_NUM_THREADS": "7"},
        on_start=lambda i: began.append(specs[i][0]),
    )
    span = {
        n: (float((tmp_path / f"{n}.start").read_text()), float((tmp_path / f"{n}.end").read_text())) for n, *_ in specs
    }
    moments = sorted({t for pair in span.values() for t in pair})
    assert max(sum(b <= t < e for b, e in span.values()) for t in moments) == 2
    assert began == ["a", "b", "c", "d", "e"]
    assert span["b"][1] <= span["c"][0] and span["c"][1] <= span["d"][0] and span["d"][1] <= span["e"][0]
    assert span["e"][1] < span["a"][1]  # b to e ran beside a, one after another
    assert ended[-1] == "a" and sorted(ended) == ["a", "b", "c", "d", "e"]
    assert {(tmp_path / f"{n}.threads").read_text() for n, *_ in specs} == {"7"}


@pytest.mark.slow
def test_a_stop_asked_while_a_command_s_end_is_handled_starts_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One command at a time; the stop is asked while the first one's on_exit runs (a chunk's
    records being committed): on_exit finishes, the pool raises Suspended, the second never starts."""
    monkeypatch.setitem(study._STOP, "asked", None)

    def on_exit(i: int) -> None:
        study._STOP["asked"] = "SIGTERM"

    with pytest.raises(study.Suspended):
        study._run_pool(_pool_commands(tmp_path, [("first", 0.1, 0), ("second", 0.1, 0)]), 1, on_exit)
    assert (tmp_path / "first.end").exists() and not (tmp_path / "second.start").exists()


@pytest.mark.slow
def test_a_failed_commit_leaves_the_chunk_done_for_the_next_run_to_commit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """finish_chunk outside a git repository: the marker is written, the failed commit is reported
    and does not stop the study (the next run with --commit commits the chunk)."""
    plan = study.load_plan(_plan(tmp_path / "repo"))
    chunk = study.Chunk("runs", "temporal", "paper", "fix")
    study.finish_chunk(plan, chunk, [], time.perf_counter(), study._now(), commit=True)
    assert study.done(plan, chunk)
    assert f"the commit of chunk {chunk.name} failed" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_command_stops_the_pool_and_names_its_log(tmp_path: Path) -> None:
    """A command exits with 3 while another runs: the other's group is stopped (it never ends
    its work), the pool raises naming the failed command's log, and no command after them starts."""
    specs = [("slow", 6.0, 0), ("fails", 0.5, 3), ("never", 0.1, 0)]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with 3; its output is in .*fails\.log"):
        study._run_pool(_pool_commands(tmp_path, specs), 2)
    assert time.monotonic() - started < 5.0
    time.sleep(max(0.0, 6.5 - (time.monotonic() - started)))
    assert not (tmp_path / "slow.end").exists() and not (tmp_path / "never.start").exists()


def test_wall_time_counts_chunks_that_ran_at_once_once() -> None:
    """Two chunks spanning 10:00:00–10:10:00 and 10:05:00–10:20:00 took 20 min of wall time, plus a
    suspended chunk's earlier 60 s, plus 100 s of a marker written before markers had spans."""
    markers = [
        {
            "seconds": 600.0,
            "earlier_seconds": 0.0,
            "started": "2026-12-08T10:00:00Z",
            "finished": "2026-12-08T10:10:00Z",
        },
        {
            "seconds": 960.0,
            "earlier_seconds": 60.0,
            "started": "2026-12-08T10:05:00Z",
            "finished": "2026-12-08T10:20:00Z",
        },
        {"seconds": 100.0},
    ]
    assert study.wall_seconds(markers) == 20 * 60 + 60 + 100
    assert (
        study.wall_seconds(
            markers[:1] + [{**markers[0], "started": "2026-12-08T11:00:00Z", "finished": "2026-12-08T11:01:00Z"}]
        )
        == 660
    )


@pytest.mark.slow
def test_pooled_seed_runs_write_the_records_of_one_multirun_per_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs chunks (λFix, λOpt-D) × 3 seeds through the pool, 2 fits at a time, against each
    chunk's seeds as one multirun of the local launcher (the chunk as one command): the same
    records, bit for bit but the train seconds, the run folder and the commit; D's first fit
    starts while λFix's last one runs, and each marker spans its chunk's fits."""
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    repo = tmp_path / "repo"
    path = _plan(
        repo,
        methods={
            "fix": {"overrides": ["model=fix"]},
            "d": {"overrides": ["model=lambda_opt", "granularity=d"], "learns_lambda": True},
        },
        selections={"fix": {"model.lambda_value": 0.01}, "d": {"lambda_optimizer.lr": 0.001}},
        blocks=["paper"],
        seeds=[0, 1, 2],
        overrides=[*DATA, "hydra/launcher=local"],
    )
    plan = study.load_plan(path)
    assert study.main([str(path), "--scratch", str(tmp_path / "pool"), "--jobs", "2"]) == 0
    pooled = {p.relative_to(plan.results / "runs"): p for p in (plan.results / "runs").rglob("*") if p.is_file()}
    fix, d = (json.loads((plan.results / c.marker).read_text()) for c in study.chunks(plan))
    assert fix["started"] <= d["started"] <= fix["finished"] <= d["finished"]  # D's first fit beside λFix's last

    one = tmp_path / "one"
    for chunk in study.chunks(plan):
        sweep = one / chunk.name / "sweep"
        study._run(study.runs_command(plan, chunk, sweep), one / chunk.name / "log.txt")
        study.collect([sweep], one / "records" / chunk.name)
    multirun = {}
    for chunk in study.chunks(plan):
        labels = one / "records" / chunk.name / "sweep"
        for p in labels.rglob("*"):
            if p.is_file():
                multirun[Path(chunk.split, chunk.block) / p.relative_to(labels)] = p
    assert sorted(pooled) == sorted(multirun) and len(pooled) >= 12
    for relative, p in pooled.items():
        if p.name == "metrics.json":
            a, b = json.loads(p.read_text()), json.loads(multirun[relative].read_text())
            for record in (a, b):  # the checkout's commit may move between the two (a commit made meanwhile)
                record.pop("train_seconds"), record.pop("output_dir"), record["provenance"].pop("git_commit")
            assert a == b, relative
        else:
            assert p.read_bytes() == multirun[relative].read_bytes(), relative


@pytest.mark.slow
def test_a_stop_in_the_pool_finishes_the_chunks_done_and_names_the_ones_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three runs chunks of 2 fits, 2 at a time; a stop while the second chunk's fits run: the
    first chunk is finished (its records and marker), the second is named as cut short, the third
    never starts, and no fit of the pool runs on."""
    methods = {m: {"overrides": ["model=fix"]} for m in ("a", "b", "c")}
    plan = study.load_plan(
        _plan(tmp_path / "repo", seeds=[0, 1], methods=methods, selections=dict.fromkeys(methods, {}))
    )
    group = [study.Chunk("runs", "temporal", "paper", m) for m in methods]
    length = {"a": 0.2, "b": 8.0, "c": 8.0}
    script = tmp_path / "command.py"
    script.write_text(_STAMPING_COMMAND, encoding="utf-8")

    def fit_commands(plan, chunk, scratch):  # type: ignore[no-untyped-def]
        return [
            ([sys.executable, str(script), f"{chunk.method}{s}", str(length[chunk.method]), "0"], tmp_path / "log")
            for s in plan.seeds
        ]

    finished: list[str] = []
    monkeypatch.setattr(study, "fit_commands", fit_commands)
    monkeypatch.setattr(study, "collect_runs", lambda plan, chunk, scratch: [])
    monkeypatch.setattr(study, "finish_chunk", lambda plan, chunk, *a, **k: finished.append(chunk.method))
    monkeypatch.setitem(study._STOP, "asked", None)

    def ask_when_b_runs(*_: object) -> None:
        if all((tmp_path / f"b{s}.start").exists() for s in (0, 1)):
            study._STOP["asked"] = "SIGTERM"

    previous = signal.signal(signal.SIGALRM, ask_when_b_runs)
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
    try:
        with pytest.raises(study.Suspended) as stop:
            study.run_runs(plan, group, tmp_path / "scratch", commit=False, jobs=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
    assert finished == ["a"]
    assert [c.method for c in stop.value.chunks] == ["b"]
    assert not list(tmp_path.glob("c*.start")) and not _processes_naming(str(script))


def test_fits_run_here_unless_a_cluster_s_launcher_runs_them(tmp_path: Path) -> None:
    """The pool sizes itself and its fits' threads by this machine's cores only where the fits
    run on it: the local or basic launcher, or none named; not SLURM's."""
    chunk = study.Chunk("runs", "temporal", "paper", "fix")
    for overrides, here in (([], True), (["hydra/launcher=local"], True), (["hydra/launcher=slurm"], False)):
        plan = study.load_plan(_plan(tmp_path / str(len(overrides)) / str(here), overrides=[*DATA, *overrides]))
        assert study.runs_here(plan, chunk) is here, overrides
