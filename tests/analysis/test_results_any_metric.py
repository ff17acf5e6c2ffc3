"""The results tools on standard-protocol runs with non-default K: any metric key, the generic
layout, figures by metric name; and the runs' beyond-accuracy block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES
from tests.helpers.finished_runs import made_once

STANDARD = ["protocol=standard", "eval.ks=[5,20]", "seed=0,1", "logger=csv"]
TINY = [o for o in TINY_OVERRIDES if not o.startswith("logger=")]


@pytest.fixture(scope="module")
def standard_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """λFix (λ ∈ {0, 0.01}) and λOpt-DUI, seeds 0 and 1, on the standard protocol with K = 5, 20."""
    sweeps = {
        "fix": [*TINY, *STANDARD, "model=fix", "model.lambda_value=0,0.01"],
        "dui": [*TINY, *STANDARD, "tracking.trajectories.every_n_steps=3"],
    }
    return made_once(tmp_path_factory.getbasetemp(), "standard_runs", sweeps)


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_runs_record_protocol_metrics_and_beyond(standard_runs: Path) -> None:
    metrics = json.loads(next((standard_runs / "dui").glob("*/metrics.json")).read_text())
    assert metrics["protocol"] == "standard"
    assert {"auc", "mrr", "recall@20", "precision@5", "ndcg@20", "hr@5", "map@20"} <= set(metrics["test"])
    beyond = metrics["beyond"]
    for key in ("coverage@20", "popularity_percentile@20", "gini@20", "coverage@5"):
        assert 0.0 <= beyond[key] <= 100.0, key
    assert [row["quintile"] for row in beyond["user_quintiles"]] == [1, 2, 3, 4, 5]
    assert (
        sum(row["users"] for row in beyond["user_quintiles"])
        == pl.read_parquet(next((standard_runs / "dui").glob("*/per_user_test.parquet"))).height
    )
    assert "recall@20" in beyond["item_quintiles"][0] and "ndcg@20" in beyond["user_quintiles"][0]
    logged = pl.read_csv(next((standard_runs / "dui").glob("*/csv/metrics.csv")))
    assert logged["test_beyond/coverage@20"].drop_nulls().to_list() == [beyond["coverage@20"]]
    assert "test_beyond/item_q1/recall@5" in logged.columns


@pytest.mark.slow
def test_table_any_metric_and_layouts(standard_runs: Path, tmp_path: Path) -> None:
    proc = _script(
        "reproduce_table", str(standard_runs), "--metrics", "recall@20,ndcg@20", "--select-metric", "ndcg@20"
    )
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Method"))
    # generic layout: the runs are not on the paper's protocol
    assert header == "| Method | runs | rows | stopped early | best epoch (median / cap) | Recall@20 | NDCG@20 |"
    fix_row = next(line for line in proc.stdout.splitlines() if line.startswith("| MF-λFix |"))
    assert "±" in fix_row and "—" not in fix_row
    assert "selected by mean valid ndcg@20" in proc.stdout
    paper = _script("reproduce_table", str(standard_runs), "--metrics", "ndcg@20", "--layout", "paper")
    assert paper.returncode == 0 and "| NDCG@20 | NDCG@20 (paper) |" in paper.stdout
    default = _script("reproduce_table", str(standard_runs))
    assert default.returncode == 0 and "MAP@5" in default.stdout and "MRR" in default.stdout
    bad = _script("reproduce_table", str(standard_runs), "--select-metric", "hr@50")
    assert bad.returncode != 0 and "hr@50" in bad.stderr and "ndcg@20" in bad.stderr


@pytest.mark.slow
def test_figures_by_metric_name(standard_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = _script(
        "figures",
        str(standard_runs),
        "--out",
        str(out),
        "--metric",
        "ndcg@20",
        "--select-metric",
        "recall@20",
        "--fig2-metrics",
        "recall@20,ndcg@20",
    )
    assert proc.returncode == 0, proc.stderr
    assert set(pl.read_csv(out / "fig2_synthetic.csv")["metric"].to_list()) == {"recall@20", "ndcg@20"}
    assert pl.read_csv(out / "fig7_synthetic.csv")["metric"].unique().to_list() == ["ndcg@20"]
    # defaults pick metrics the runs have (AUC and two others), never the paper's absent K = 50
    import lopt.analysis.figures as figures
    from lopt.analysis.results import find_runs

    assert figures.default_fig2_metrics(find_runs(standard_runs)) == ["auc", "mrr", "recall@5"]


@pytest.mark.slow
def test_recommend_from_a_run(standard_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from lopt.pipeline import build_datamodule
    from lopt.recommend import load_run_config, main

    run_dir = next((standard_runs / "dui").glob("*/metrics.json")).parent
    monkeypatch.setenv("LOPT_DATA_DIR", str(standard_runs.parent / "data"))
    out = tmp_path / "recs.parquet"
    assert main([str(run_dir), "--k", "7", "--out", str(out)]) == 0
    recs = pl.read_parquet(out)
    split = build_datamodule(load_run_config(run_dir)).load_split()
    assert recs.columns == ["raw_user_id", "rank", "raw_item_id", "score"]
    per_user = recs.group_by("raw_user_id").agg(pl.len(), pl.col("rank").sort())
    assert per_user.height == split.n_users and set(per_user["len"].to_list()) == {7}
    assert all(r == list(range(1, 8)) for r in per_user["rank"].to_list())
    # raw ids round-trip and no train/valid item is recommended
    seen = set(
        zip(
            split.user_ids[np.concatenate([split.train_users, split.valid_users])].tolist(),
            split.item_ids[np.concatenate([split.train_items, split.valid_items])].tolist(),
            strict=True,
        )
    )
    pairs = set(zip(recs["raw_user_id"].to_list(), recs["raw_item_id"].to_list(), strict=True))
    assert len(pairs) == recs.height and not pairs & seen
    assert set(recs["raw_item_id"].to_list()) <= set(split.item_ids.tolist())
    # scores descend with the rank
    assert (
        recs.sort("raw_user_id", "rank")
        .group_by("raw_user_id", maintain_order=True)
        .agg((pl.col("score").diff() <= 0).drop_nulls().all())["score"]
        .all()
    )
    # a user file: only those users, in their order; an unknown id names the file and line
    chosen = [str(split.user_ids[5]), str(split.user_ids[2])]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(chosen) + "\n")
    assert main([str(run_dir), "--k", "3", "--users", str(users_file), "--out", str(out)]) == 0
    picked = pl.read_parquet(out)
    assert [str(u) for u in picked["raw_user_id"].unique(maintain_order=True).to_list()] == chosen
    assert picked.height == 6
    users_file.write_text(f"{chosen[0]}\nnobody\n")
    assert main([str(run_dir), "--users", str(users_file), "--out", str(out)]) == 2
