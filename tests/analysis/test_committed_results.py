"""The committed records of ml-100k's first (unmatched) study regenerate its table and figure data exactly.

experiments/results/ml100k/unmatched/runs/ holds the compact records of every run behind
experiments/results/ml100k/unmatched/table.md and verdict.md (metrics.json, config, per-user test metrics,
DUI trajectories); study_fix/ those of λFix's tuning study behind Figure 2. The table and the
verdict are compared byte for byte, each figure's data (CSV) too; the PNGs only have to be drawn.
The results README may state only numbers that these generated files (or the runs' configs) hold.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import REPO_ROOT
from tests.helpers.scripts import load_script

RESULTS = Path("experiments") / "results" / "ml100k" / "unmatched"  # relative: the table names the folder it read


@pytest.fixture()
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo_root")
def test_committed_records_regenerate_table_and_verdict_byte_for_byte(tmp_path: Path) -> None:
    reproduce = load_script("reproduce_table")
    out = tmp_path / "table.md"
    assert reproduce.main([str(RESULTS / "runs"), "--out", str(out)]) == 0
    assert out.read_bytes() == (RESULTS / "table.md").read_bytes()
    assert (tmp_path / "verdict.md").read_bytes() == (RESULTS / "verdict.md").read_bytes()


#: A number in prose: not part of a word (ml-100k, ML-10M, fig2), an issue number or a hash.
NUMBER = re.compile(r"(?<![\w.#-])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w])")


def _numbers(text: str) -> set[str]:
    text = text.replace("−", "-")
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # commands
    text = re.sub(r"`[^`]*`", " ", text)  # file names, keys, the commit
    text = re.sub(r"^ {4,}.*$", " ", text, flags=re.M)  # indented commands
    return set(NUMBER.findall(text))


def _config_values(node: object) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_config_values(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_config_values(v) for v in node)) if node else set()
    return {str(node)} if isinstance(node, int | float) and not isinstance(node, bool) else set()


def test_results_readme_states_only_generated_numbers() -> None:
    """Every number of experiments/results/ml100k/unmatched/README.md is in the generated table.md or
    verdict.md (checked byte for byte against the records above) or is a value of the runs'
    config; its verdict lines match verdict.md; the sentence the audit refuted is gone."""
    readme = (REPO_ROOT / RESULTS / "README.md").read_text(encoding="utf-8")
    generated = "\n".join(
        (REPO_ROOT / RESULTS / name).read_text(encoding="utf-8") for name in ("table.md", "verdict.md")
    )
    known = _numbers(generated)
    for config in (REPO_ROOT / RESULTS / "runs").glob("*/*/seed0/.hydra/config.yaml"):
        known |= _config_values(yaml.safe_load(config.read_text(encoding="utf-8")))
    stated = _numbers(readme)
    assert stated, "the README states no number"
    assert stated <= known, f"numbers in the README that no generated file or config holds: {sorted(stated - known)}"
    assert "The gain comes from the data Λ sees, not from the finer regularization." not in readme
    assert "not matched controls" in readme and "matched study is pending" in readme
    verdict = (REPO_ROOT / RESULTS / "verdict.md").read_text(encoding="utf-8")
    for block, claim, outcome in (
        ("none", "MF-λFix", "HOLDS"),
        ("none", "MF-λOpt-D", "HOLDS"),
        ("inner", "MF-λOpt-D", "HOLDS"),
        ("inner", "MF-λFix", "no verdict"),
        ("refit", "MF-λFix", "no verdict"),
    ):
        line = f"control={block} | claim MF-λOpt-DUI > {claim}: {outcome}"
        assert line in verdict, line
    # "Under the paper's protocol DUI gains in every quintile, and more for more active users."
    fig7 = [
        row
        for row in csv.DictReader((REPO_ROOT / RESULTS / "fig7_ml100k.csv").open())
        if row["method"] == "MF-λOpt-DUI"
    ]
    gains = [float(row["rel_gain_pct"]) for row in sorted(fig7, key=lambda row: int(row["bucket"]))]
    assert len(gains) == 5 and min(gains) > 0 and gains == sorted(gains)


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo_root")
def test_committed_records_regenerate_the_figure_data(tmp_path: Path) -> None:
    import lopt.analysis.figures as figures

    written = figures.make_figures(RESULTS / "runs", tmp_path) + figures.make_figures(RESULTS / "study_fix", tmp_path)
    committed = sorted(p.name for p in RESULTS.glob("fig*.csv"))
    assert sorted(p.with_suffix(".csv").name for p in written) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (RESULTS / name).read_bytes(), name
        assert os.path.getsize(tmp_path / name.replace(".csv", ".png")) > 10_000


def test_committed_records_are_compact() -> None:
    """Records only: no checkpoint, log or Λ snapshot, and small enough to keep in git: every run's
    record (the folder of its metrics.json) under 256 KiB; a tuning trial's (``studies/``) holds
    its metrics and config only, under 32 KiB."""
    files = [p for p in (REPO_ROOT / "experiments" / "results").rglob("*") if p.is_file()]  # every study
    allowed = {"metrics.json", "config.yaml", "per_user_test.parquet", "lambda_trajectories.parquet"}
    summaries = {"selection.json", "trials.csv"}  # a tuning study's selection and its trial list
    records = [p for p in files if {"runs", "study_fix", "studies"} & set(p.parts) and p.name not in summaries]
    assert records, "no committed records under experiments/results"
    assert {p.name for p in records} <= allowed
    for metrics in (p for p in records if p.name == "metrics.json"):
        size = sum(f.stat().st_size for f in metrics.parent.rglob("*") if f.is_file())
        assert size < (32 if "studies" in metrics.parts else 256) * 2**10, metrics.parent
    trials = [p for p in records if "studies" in p.parts]
    assert {p.name for p in trials} <= {"metrics.json", "config.yaml"}


def test_collect_records_copies_records_only_without_local_paths(tmp_path: Path) -> None:
    collect = load_script("collect_records")
    run = tmp_path / "block" / "ml100k_fix" / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    metrics = {"test": {"auc": 0.5}, "method": "MF-λFix", "dataset": "ml100k", "seed": 3, "output_dir": str(run)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".hydra" / "config.yaml").write_text("dataset:\n  source:\n    path: /somewhere/local/u.data\nseed: 3\n")
    (run / "per_user_test.parquet").write_bytes(b"per-user")
    out = tmp_path / "records"
    [record] = collect.collect([tmp_path / "block"], out)
    assert record == out / "block" / "mf-lfix" / "seed3"
    assert sorted(p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()) == [
        ".hydra/config.yaml",
        "metrics.json",
        "per_user_test.parquet",
    ]
    assert json.loads((record / "metrics.json").read_text())["output_dir"] == "block/mf-lfix/seed3"
    assert "/somewhere" not in (record / ".hydra" / "config.yaml").read_text()
    assert "path: u.data" in (record / ".hydra" / "config.yaml").read_text()
    with pytest.raises(FileExistsError):
        collect.collect([tmp_path / "block"], out)


def _dui_run(root: Path, trajectories: bool | None, write_trajectories: bool) -> Path:
    run = root / "block" / "ml100k_dui" / "0"
    (run / ".hydra").mkdir(parents=True)
    metrics = {"test": {"auc": 0.5}, "method": "MF-λOpt-DUI", "dataset": "ml100k", "seed": 1, "output_dir": str(run)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    tracking = "" if trajectories is None else f"tracking:\n  trajectories:\n    enabled: {str(trajectories).lower()}\n"
    (run / ".hydra" / "config.yaml").write_text(f"seed: 1\n{tracking}")
    (run / "per_user_test.parquet").write_bytes(b"per-user")
    if write_trajectories:
        (run / "lambda_trajectories.parquet").write_bytes(b"trajectories")
    return run


@pytest.mark.parametrize(
    ("trajectories", "written", "expected"),
    [
        (True, True, ["lambda_trajectories.parquet"]),
        (None, True, ["lambda_trajectories.parquet"]),  # a config from before the key: always written
        (False, False, []),  # Λ tracking off (a tuning trial): nothing to copy, nothing missing
    ],
)
def test_collect_records_copies_dui_trajectories_where_the_run_tracked_them(
    tmp_path: Path, trajectories: bool | None, written: bool, expected: list[str]
) -> None:
    collect = load_script("collect_records")
    _dui_run(tmp_path, trajectories, written)
    [record] = collect.collect([tmp_path / "block"], tmp_path / "records")
    files = sorted(p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file())
    assert files == sorted([".hydra/config.yaml", "metrics.json", "per_user_test.parquet", *expected])


def test_collect_records_refuses_a_tracked_run_without_its_trajectories_and_keeps_trials_small(tmp_path: Path) -> None:
    collect = load_script("collect_records")
    _dui_run(tmp_path, True, write_trajectories=False)
    with pytest.raises(ValueError, match="lambda_trajectories.parquet is missing"):
        collect.collect([tmp_path / "block"], tmp_path / "records")
    config = tmp_path / "block" / "ml100k_dui" / "0" / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "study:\n  dir: /home/someone/scratch/tune/paper/dui\n  name: sweep\n")
    [record] = collect.collect([tmp_path / "block"], tmp_path / "trials", trials=True)
    assert sorted(p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()) == [
        ".hydra/config.yaml",
        "metrics.json",
    ]
    kept = (record / ".hydra" / "config.yaml").read_text()
    assert "/home/someone" not in kept and "dir: dui" in kept  # a trial's study folder: its name only


@pytest.mark.parametrize("dataset", ["ml100k", "lastfm2k"])
def test_a_matched_study_s_records_name_the_one_code_commit_its_readme_states(dataset: str) -> None:
    """Every chunk marker and record of a study folder names the commit its README states (a clean
    tree), so that the whole study ran on one code commit."""
    folder = REPO_ROOT / "experiments" / "results" / dataset
    stated = re.findall(r"frozen code commit, `([0-9a-f]{7,40})`", (folder / "README.md").read_text(encoding="utf-8"))
    markers = sorted((folder / "chunks").glob("*.json"))
    if not markers:
        return  # no chunk has run: nothing to check yet
    assert len(stated) == 1, f"{folder}/README.md must state the study's code commit once"
    for marker in markers:
        assert json.loads(marker.read_text(encoding="utf-8"))["code_commit"].startswith(stated[0]), marker
    for metrics in [*folder.glob("studies/**/metrics.json"), *folder.glob("runs/*/*/*/*/metrics.json")]:
        provenance = json.loads(metrics.read_text(encoding="utf-8"))["provenance"]
        assert provenance["git_commit"].startswith(stated[0]) and provenance["git_dirty"] is False, metrics


def test_the_matched_study_s_bookkeeping_numbers_are_the_records() -> None:
    """The ml-100k README's list of what the records leave out quotes chunk markers' seconds and
    the SGDA studies' trial counts: each is checked against the committed markers, trial records
    and trials.csv."""
    folder = REPO_ROOT / "experiments" / "results" / "ml100k"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    quoted = re.findall(r"`(tune/\w+/\w+/\w+)` \((\d+) s\)", readme)
    assert len(quoted) == 2, quoted
    for chunk, seconds in quoted:
        marker = json.loads((folder / "chunks" / f"{chunk.replace('/', '--')}.json").read_text(encoding="utf-8"))
        assert round(marker["seconds"]) == int(seconds), chunk
    paper = re.search(r"SGDA study had (\d+) diverged trials\s+\((\d+) complete\)", readme)
    complete = len(list((folder / "studies" / "temporal" / "paper" / "sgda").glob("*/*/metrics.json")))
    assert (int(paper[1]), int(paper[2])) == (30 - complete, complete)
    inner = re.search(r"study's (\d+) diverged trials \((\d+) complete\)", readme)
    rows = list(csv.DictReader((folder / "studies" / "temporal" / "inner" / "sgda" / "trials.csv").open()))
    assert (int(inner[1]), int(inner[2])) == (
        sum(r["state"] == "FAIL" for r in rows),
        sum(r["state"] == "COMPLETE" for r in rows),
    )
