"""The committed ml-100k records regenerate the committed table and figure data exactly.

experiments/results/ml100k/runs/ holds the compact records of every run behind
experiments/results/ml100k/table.md (metrics.json, config, per-user test metrics, DUI
trajectories); study_fix/ those of λFix's tuning study behind Figure 2. The table is compared
byte for byte, each figure's data (CSV) too; the PNGs only have to be drawn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e import REPO_ROOT
from tests.test_reproduce_table import load_script

RESULTS = Path("experiments") / "results" / "ml100k"  # relative: the table names the folder it read


@pytest.fixture()
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo_root")
def test_committed_records_regenerate_table_md_byte_for_byte(tmp_path: Path) -> None:
    reproduce = load_script("reproduce_table")
    out = tmp_path / "table.md"
    assert reproduce.main([str(RESULTS / "runs"), "--out", str(out)]) == 0
    assert out.read_bytes() == (RESULTS / "table.md").read_bytes()


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
    """Records only: no checkpoint, log or Λ snapshot, and small enough to keep in git."""
    files = [p for p in (REPO_ROOT / RESULTS).rglob("*") if p.is_file()]
    allowed = {"metrics.json", "config.yaml", "per_user_test.parquet", "lambda_trajectories.parquet"}
    records = [p for p in files if "runs" in p.parts or "study_fix" in p.parts]
    assert records, "no committed records under experiments/results/ml100k"
    assert {p.name for p in records} <= allowed
    assert sum(p.stat().st_size for p in records) < 12 * 2**20


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
