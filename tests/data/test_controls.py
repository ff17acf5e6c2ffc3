"""The fairness controls: refit (train ∪ valid for the selected epochs) and inner (Λ-split carved
from train), from the carving kernel to end-to-end runs through run.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lopt.data.controls import carve_latest, fit_arrays
from lopt.data.preprocess import prepare_split
from lopt.pipeline import build_datamodule, build_module, control_applies
from tests.helpers.cli import TINY_OVERRIDES, read_metrics, run_cli
from tests.helpers.hydra import compose_config


def _pairs(users: np.ndarray, items: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(users.tolist(), items.tolist()))


def test_carve_latest_matches_a_per_user_brute_force() -> None:
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 40, 600))
    for ratio in (0.0, 0.25, 0.5, 0.9):
        mask = carve_latest(users, ratio)
        for user in np.unique(users):
            rows = np.flatnonzero(users == user)
            n_carved = int(len(rows) * ratio)
            expected = np.zeros(len(rows), dtype=bool)
            expected[len(rows) - n_carved :] = True
            assert np.array_equal(mask[rows], expected), (ratio, user)
    assert carve_latest(np.array([0, 0, 0, 0, 1, 2, 2]), 0.25).tolist() == [
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]


def test_carve_latest_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="model.lambda_split_ratio"):
        carve_latest(np.array([0, 0]), 1.0)
    with pytest.raises(ValueError, match="grouped by ascending user"):
        carve_latest(np.array([1, 1, 0]), 0.25)
    assert carve_latest(np.array([], dtype=np.int32), 0.25).shape == (0,)


def test_lambda_split_is_the_latest_train_interactions_of_each_user() -> None:
    """On a prepared split, every carved pair of a user is at least as late as every pair Θ keeps."""
    rng = np.random.default_rng(1)
    n = 4000
    frame = pl.DataFrame(
        {"user": rng.integers(0, 60, n), "item": rng.integers(0, 300, n), "timestamp": rng.integers(0, 10**6, n)}
    )
    split = prepare_split(
        frame, min_users_per_item=0, min_items_per_user=0, iterative=False, test_ratio=0.2, valid_ratio=0.25
    )
    # the time of each pair, as the split's dedupe keeps it: its earliest
    time_of = {(u, i): t for u, i, t in frame.group_by("user", "item").agg(pl.col("timestamp").min()).iter_rows()}
    arrays = fit_arrays(split, lambda_split_ratio=0.25)
    theta, lam = _pairs(arrays.train_users, arrays.train_items), _pairs(arrays.lambda_users, arrays.lambda_items)
    assert theta | lam == _pairs(split.train_users, split.train_items) and not theta & lam
    assert _pairs(arrays.lambda_seen_users, arrays.lambda_seen_items) == _pairs(split.train_users, split.train_items)
    counts = np.bincount(split.train_users, minlength=split.n_users)
    assert np.array_equal(np.bincount(arrays.lambda_users, minlength=split.n_users), counts // 4)
    for user in np.unique(arrays.lambda_users):
        raw = split.user_ids[user]
        latest_kept = max(time_of[(raw, split.item_ids[i])] for u, i in theta if u == user)
        earliest_carved = min(time_of[(raw, split.item_ids[i])] for u, i in lam if u == user)
        assert earliest_carved >= latest_kept

    refit = fit_arrays(split, train_on_valid=True)
    assert _pairs(refit.train_users, refit.train_items) == _pairs(split.train_users, split.train_items) | _pairs(
        split.valid_users, split.valid_items
    )
    assert len(refit.lambda_users) == 0
    with pytest.raises(ValueError, match="pick one"):
        fit_arrays(split, train_on_valid=True, lambda_split_ratio=0.25)


def _cfg(tmp_path: Path, *overrides: str):
    return compose_config([*TINY_OVERRIDES, *overrides], data_dir=tmp_path)


def test_inner_datamodule_draws_lambda_triples_from_the_carved_train_pairs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "control=inner")
    assert control_applies(cfg, "inner") and not control_applies(cfg, "refit")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    split = datamodule.load_split()
    carved = carve_latest(split.train_users, 0.25)
    lam_pairs = _pairs(split.train_users[carved], split.train_items[carved])
    train_pairs = _pairs(split.train_users, split.train_items)
    drawn_lam, drawn_theta = set(), set()
    for batch in datamodule.train_dataloader():
        users, pos, neg = (t.numpy() for t in batch["valid"])
        drawn_lam |= _pairs(users, pos)
        assert not _pairs(users, neg) & train_pairs  # Λ negatives avoid all of train
        drawn_theta |= _pairs(batch["train"][0].numpy(), batch["train"][1].numpy())
    assert drawn_lam == lam_pairs and drawn_theta == train_pairs - lam_pairs
    assert not drawn_lam & _pairs(split.valid_users, split.valid_items)
    module = build_module(cfg, split.n_users, split.n_items)  # lambda_split_ratio is not a module argument
    assert not hasattr(module, "lambda_split_ratio")


def test_controls_that_do_not_apply(tmp_path: Path) -> None:
    assert not control_applies(_cfg(tmp_path, "model=fix", "control=inner"), "inner")
    assert not control_applies(_cfg(tmp_path, "control=refit"), "refit")  # λOpt keeps the paper's protocol
    assert control_applies(_cfg(tmp_path, "model=fix", "control=refit"), "refit")
    with pytest.raises(ValueError, match="control.name"):
        control_applies(_cfg(tmp_path, "control.name=other"), "refit")


@pytest.mark.slow
def test_refit_control_end_to_end(tmp_path: Path) -> None:
    """λFix under control=refit: the selection is the paper protocol's (same valid metrics, best
    epoch, selected checkpoint's test), the reported test is that of a model trained on
    train ∪ valid for best_epoch + 1 epochs."""
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            *TINY_OVERRIDES,
            "model=fix",
            "model.lambda_value=0.01",
            "trainer.max_epochs=3",
            "seed=2",
            "control=none,refit",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    paper, refit = read_metrics(sweep / "0"), read_metrics(sweep / "1")
    assert paper["control"] == {"name": "none", "applied": False}
    block = refit["control"]
    assert block["name"] == "refit" and block["applied"] is True
    assert block["epochs"] == refit["best_epoch"] + 1 and refit["best_epoch"] == paper["best_epoch"]
    assert refit["valid"] == paper["valid"] and block["selection_test"] == paper["test"]
    assert refit["test"] != paper["test"]
    per_user = pl.read_parquet(sweep / "1" / "per_user_test.parquet")
    assert per_user["auc"].drop_nans().mean() == pytest.approx(refit["test"]["auc"], rel=1e-6)


@pytest.mark.slow
def test_inner_control_end_to_end(tmp_path: Path) -> None:
    """λOpt-DUI under control=inner learns Λ on the carved Λ-split; the valid split only selects."""
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            *TINY_OVERRIDES,
            "granularity.init=0.01",
            "lambda_optimizer.lr=0.5",
            "control=none,inner",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    paper, inner = read_metrics(sweep / "0"), read_metrics(sweep / "1")
    block = inner["control"]
    assert block["name"] == "inner" and block["applied"] is True and block["lambda_split_ratio"] == 0.25
    assert block["lambda_interactions"] > 0 and block["theta_interactions"] > block["lambda_interactions"]
    assert inner["valid"] != paper["valid"] and inner["test"] != paper["test"]
    lam = np.load(sweep / "1" / "lambda.npz")
    assert (lam["user_lambda"] >= 0).all() and not np.allclose(lam["user_lambda"], 0.01)
