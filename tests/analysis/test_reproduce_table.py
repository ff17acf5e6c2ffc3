"""experiments/reproduce_table.py on a folder of tiny real runs made through run.py.

The runs (a 2-λ × 2-seed MF-λFix multirun and a DUI/DU × 2-seed λOpt multirun with tracking) are
made once per test session (cached under pytest's base temp) and shared with test_figures.py and
test_tracking.py through the ``finished_runs`` fixture.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.cli import REPO_ROOT


@pytest.fixture(scope="module")
def table() -> ModuleType:
    import lopt.analysis.table

    return lopt.analysis.table


@pytest.mark.slow
def test_table_renders_every_row(finished_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "reproduce_table.py"),
            str(finished_runs),
            "--out",
            str(out),
            "--latex",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    markdown = out.read_text()
    assert markdown in proc.stdout
    main_table = markdown.split("## synthetic")[1].split("Selection (validation only)")[0]
    lines = [line for line in main_table.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines}
    order = [line.split(" | ")[0].lstrip("| ") for line in lines]
    paper_rows = ["SGDA", "AMF", "NeuMF", "MF-λFix", "MF-λOpt-D", "MF-λOpt-DU", "MF-λOpt-DI", "MF-λOpt-DUI"]
    assert order[1 : 1 + len(paper_rows)] == paper_rows  # after the header, in the paper's order
    for method in ("MF-λFix", "MF-λOpt-DU", "MF-λOpt-DUI"):
        cells = rows[method].strip("| ").split(" | ")
        assert cells[1:3] == ["2", "own"], cells  # two seeds, the block's own runs
        assert cells[3].endswith("/2") and cells[4].endswith(" / 2"), cells  # stopped early, best epoch / cap
        assert "±" in cells[5] and cells[6] == "—"  # ours with std; synthetic has no paper value
    assert set(rows["SGDA"].strip("| ").split(" | ")[1:]) == {"—"}
    assert "λ=" in markdown and "selected by mean valid auc" in markdown
    differences = markdown.split("Holm-adjusted over the")[1]
    assert "| MF-λOpt-DUI | MF-λFix | yes |" in differences and "| MF-λOpt-DU | MF-λFix | yes |" in differences
    assert "p=" in differences and "hierarchical bootstrap" in markdown
    verdict = out.with_name("verdict.md").read_text()
    assert "synthetic | lambdaopt | control=none | AUC | MF-λOpt-DUI − MF-λFix: Δ = " in verdict
    tex = out.with_suffix(".tex").read_text()
    assert r"\begin{tabular}" in tex and r"MF-$\lambda$Opt-DUI" in tex


def _copy_fix_runs(src: Path, dst: Path) -> dict[float, list[Path]]:
    by_lambda: dict[float, list[Path]] = {}
    for metrics in sorted((src / "fix_sweep").glob("*/metrics.json")):
        target = dst / metrics.parent.name
        shutil.copytree(metrics.parent, target, ignore=shutil.ignore_patterns("checkpoints"))
        by_lambda.setdefault(json.loads(metrics.read_text())["lambda_value"], []).append(target)
    return by_lambda


def _set(run: Path, valid_auc: float, test_auc: float) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["valid"]["auc"], metrics["test"]["auc"] = valid_auc, test_auc
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.slow
@pytest.mark.parametrize("winner", [0.0, 0.01])
def test_selection_uses_validation_only(finished_runs: Path, tmp_path: Path, table: ModuleType, winner: float) -> None:
    """Validation and test disagree: the λ with the better VALIDATION auc is selected."""
    by_lambda = _copy_fix_runs(finished_runs, tmp_path)
    assert sorted(by_lambda) == [0.0, 0.01] and all(len(v) == 2 for v in by_lambda.values())
    for lam, runs in by_lambda.items():
        for k, run in enumerate(runs):
            good = lam == winner
            _set(run, valid_auc=0.9 + 0.01 * k if good else 0.2, test_auc=0.1 + 0.02 * k if good else 0.95)
    markdown = table.render(tmp_path).markdown
    fix_row = next(line for line in markdown.splitlines() if line.startswith("| MF-λFix |"))
    assert fix_row.split(" | ")[5] == "0.1100 ± 0.0141"  # mean/std of the validation winner's test AUC
    assert f"λ={winner:g} selected by mean valid auc" in markdown


@pytest.mark.slow
def test_select_metric_option(finished_runs: Path, tmp_path: Path, table: ModuleType) -> None:
    by_lambda = _copy_fix_runs(finished_runs, tmp_path)
    for lam, runs in by_lambda.items():
        for run in runs:
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["valid"]["auc"] = 0.9 if lam == 0.0 else 0.1  # auc prefers λ=0 …
            metrics["valid"]["ndcg@50"] = 0.1 if lam == 0.0 else 0.9  # … ndcg@50 prefers λ=0.01
            (run / "metrics.json").write_text(json.dumps(metrics))
    assert "λ=0 selected by mean valid auc" in table.render(tmp_path, "auc").markdown
    assert "λ=0.01 selected by mean valid ndcg@50" in table.render(tmp_path, "ndcg@50").markdown


@pytest.mark.slow
def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "reproduce_table.py"), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_paper_results_match_method_md(table: ModuleType) -> None:
    """paper_results.yaml holds the table of docs/method.md (spot checks of every row's AUC)."""
    paper, aliases = table.load_paper()
    assert paper["amazon_food"]["MF-λOpt-DUI"] == {
        "auc": 0.8743,
        "hr@50": 0.4470,
        "hr@100": 0.5251,
        "ndcg@50": 0.2946,
        "ndcg@100": 0.2920,
    }
    assert paper["ml10m"]["MF-λFix"]["auc"] == 0.9497 and paper["ml10m"]["NeuMF"]["ndcg@100"] == 0.0865
    assert all(len(rows) == 8 for rows in paper.values()) and aliases["amazon_food_snap"] == "amazon_food"


def _fake_run(root: Path, name: str, control: str, valid_auc: float, test_auc: float, lam: float) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"model:\n  name: fix\n  lambda_value: {lam}\ncontrol:\n  name: {control}\nseed: 0\n"
    )
    metrics = {
        "test": {"auc": test_auc},
        "valid": {"auc": valid_auc},
        "best_epoch": 3,
        "model": "fix",
        "method": "MF-λFix",
        "dataset": "ml100k",
        "seed": 0,
        "lambda_value": lam,
        "control": {"name": control, "applied": control != "none"},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_fairness_controls_get_their_own_tables(tmp_path: Path, table: ModuleType) -> None:
    """A refit run has the same valid scores as its paper-protocol twin: the two blocks must be
    tabulated apart, never selected against each other."""
    _fake_run(tmp_path, "paper", "none", valid_auc=0.9, test_auc=0.80, lam=0.01)
    _fake_run(tmp_path, "refit", "refit", valid_auc=0.9, test_auc=0.85, lam=0.01)
    _fake_run(tmp_path, "paper_small", "none", valid_auc=0.7, test_auc=0.70, lam=1.0)
    markdown = table.render(tmp_path, "auc", False, ["auc"], "generic").markdown
    assert "## ml100k\n" not in markdown
    plain, refit = markdown.split("## ml100k (control=none)")[1].split("## ml100k (control=refit)")
    assert "| MF-λFix | 1 | own | — | 4 | 0.8000 |" in plain and "0.8500" not in plain
    assert "| MF-λFix | 1 | own | — | 4 | 0.8500 |" in refit and "0.8000" not in refit
