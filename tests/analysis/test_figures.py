"""experiments/figures.py on the shared folder of tiny real runs (see test_reproduce_table.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import polars as pl
import pytest

from tests.helpers.cli import REPO_ROOT


@pytest.mark.slow
def test_figures_written(finished_runs: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "figures.py"), str(finished_runs), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for stem in ("fig2_synthetic", "fig7_synthetic", "fig8_synthetic"):
        png = out / f"{stem}.png"
        assert png.stat().st_size > 10_000, stem
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 400 and np.ptp(image) > 0  # a real, non-blank picture
        assert pl.read_csv(out / f"{stem}.csv").height > 0
    fig2 = pl.read_csv(out / "fig2_synthetic.csv")
    assert sorted(fig2["lambda"].unique().to_list()) == [0.0, 0.01] and set(fig2["n"].to_list()) == {2}
    fig7 = pl.read_csv(out / "fig7_synthetic.csv")
    assert set(fig7["method"].to_list()) == {"MF-λOpt-DUI", "MF-λOpt-DU"}
    assert fig7.group_by("method").agg(pl.col("users").sum())["users"].to_list() == [120, 120]  # every user in a bucket
    fig8 = pl.read_csv(out / "fig8_synthetic.csv")
    assert set(fig8["stratum"].to_list()) == {"sparse", "median", "active"} and set(fig8["side"].to_list()) == {
        "user",
        "item",
    }
    assert fig8["method"].unique().to_list() == ["MF-λOpt-DUI"]


def test_zero_lambda_gets_its_own_log_position() -> None:
    import lopt.analysis.figures as figures

    x, zero_at = figures.lambda_positions(np.array([0.0, 1e-4, 1e-2, 10.0]))
    assert zero_at == pytest.approx(1e-5) and x[0] == zero_at and list(x[1:]) == [1e-4, 1e-2, 10.0]
    assert figures.lambda_positions(np.array([1e-3, 1.0]))[1] is None


def test_frequency_buckets_cover_every_user() -> None:
    import lopt.analysis.figures as figures

    freq = np.array([1, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55])
    bucket, edges = figures.frequency_buckets(freq, 5)
    assert bucket.min() == 0 and bucket.max() == len(edges) - 2
    assert np.all(np.diff(bucket[np.argsort(freq, kind="stable")]) >= 0)  # monotone in frequency
