"""The custom-TSV recipe of docs/recipes.md typed into a real shell (``bash -c``), with a rating
threshold and float timestamps; and the DataModule's side of ``dataset.preprocess.min_rating``."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lopt.data.datamodule import InteractionDataModule
from lopt.data.sources import CustomSource, NoRatingsError, SyntheticSource
from tests.helpers.cli import REPO_ROOT

PREPROCESS = dict(min_users_per_item=0, min_items_per_user=0, iterative=False, test_ratio=0.2, valid_ratio=0.25)


def _write_tsv(path: Path, n_users: int = 120, n_items: int = 130, n: int = 4000, seed: int = 0) -> pl.DataFrame:
    """A TSV with a header (uid, sku, stars, ts): string ids, ratings 1–5, float timestamps."""
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "uid": [f"u{k}" for k in rng.integers(0, n_users, n)],
            "sku": [f"s{k}" for k in rng.integers(0, n_items, n)],
            "stars": rng.integers(1, 6, n),
            "ts": 978300760.0 + rng.random(n) * 1e5,
        }
    )
    frame.write_csv(path, separator="\t")
    return frame


def _datamodule(source, tmp_path: Path, **preprocess) -> InteractionDataModule:
    return InteractionDataModule(
        source=source,
        preprocess={**PREPROCESS, **preprocess},
        cache_dir=tmp_path / "cache",
        cache=True,
        batch_size=64,
        valid_batch_size=64,
        eval_batch_users=64,
        seed=0,
        valid_triples=False,
    )


def test_datamodule_reads_ratings_only_for_min_rating(tmp_path: Path) -> None:
    """min_rating=null: the source is read as before and the cache key is the one it had before
    the option existed; min_rating=4: ratings are read and filtered, under another key; a source
    without ratings stops with the keys to change."""
    tsv = tmp_path / "r.tsv"
    frame = _write_tsv(tsv)
    source = CustomSource(tsv, "uid", "sku", "ts", separator="tab", rating_col="stars")
    off = _datamodule(source, tmp_path, min_rating=None)
    assert off.cache_key()["preprocess"] == PREPROCESS
    assert off.load_split().train_users.size + off.load_split().valid_users.size + off.load_split().test_users.size == (
        frame.unique(["uid", "sku"]).height
    )
    on = _datamodule(source, tmp_path, min_rating=4)
    assert on.cache_key()["preprocess"]["min_rating"] == 4 and on.split_fingerprint() != off.split_fingerprint()
    split = on.load_split()
    kept = frame.filter(pl.col("stars") >= 4).unique(["uid", "sku"]).height
    assert split.train_users.size + split.valid_users.size + split.test_users.size == kept
    with pytest.raises(NoRatingsError, match=r"dataset=synthetic"):
        _datamodule(SyntheticSource(50, 50, 500, 2, 0.5, 0.5, 0.3, 0), tmp_path, min_rating=4).load_split()


@pytest.mark.slow
def test_custom_tsv_recipe_through_a_shell(tmp_path: Path) -> None:
    """`dataset.source.separator='\\t'` typed in bash reaches Hydra as backslash-t and is read as
    a tab; with dataset.preprocess.min_rating=4 only ratings ≥ 4 are kept; float timestamps are
    accepted. The run finishes and its metrics.json counts the filtered data's users and items."""
    tsv = tmp_path / "clicks.tsv"
    frame = _write_tsv(tsv)
    run_dir = tmp_path / "run"
    command = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO_ROOT / 'run.py'))} dataset=custom "
        f"dataset.source.path={shlex.quote(str(tsv))} dataset.source.separator='\\t' "
        "dataset.source.user_col=uid dataset.source.item_col=sku dataset.source.timestamp_col=ts "
        "dataset.source.rating_col=stars dataset.preprocess.min_rating=4 "
        "model.dim=8 trainer.max_epochs=1 logger=none "
        f"hydra.run.dir={shlex.quote(str(run_dir))}"
    )
    assert "separator='\\t'" in command  # the recipe's quoting, as a user types it
    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    kept = frame.filter(pl.col("stars") >= 4)
    assert metrics["n_users"] == kept["uid"].n_unique() and metrics["n_items"] == kept["sku"].n_unique()
    log = (run_dir / "run.log").read_text()
    assert "preprocess rating" in log and "dataset.preprocess.min_rating=4" in log
