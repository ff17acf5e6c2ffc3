"""Λ statistics, tracked-entity choice, trajectory recording and the trajectory/snapshot files."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from lopt.models.granularity import LambdaGranularity
from lopt.tracking.callbacks import (
    LambdaSnapshotCallback,
    LambdaStatsCallback,
    LambdaTrajectoryCallback,
    WandbRunCallback,
    build_tracking_callbacks,
)
from lopt.tracking.lambda_stats import lambda_histogram, lambda_statistics, quantile_key, quantile_sample
from lopt.tracking.trajectories import (
    TRAJECTORY_SCHEMA,
    TrajectoryRecorder,
    choose_by_strata,
    choose_tracked,
    thin_steps,
)
from lopt.types import PreparedSplit
from tests.helpers.finished_runs import TRACK_EVERY
from tests.helpers.hydra import compose_config

STRATA = {"sparse": (0.0, 0.1), "median": (0.45, 0.55), "active": (0.9, 1.0)}


def _granularity(name: str, n_users: int = 50, n_items: int = 30, dim: int = 4) -> LambdaGranularity:
    g = LambdaGranularity(name, n_users, n_items, dim, 0.0)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(torch.rand_like(p))
    return g


@pytest.mark.parametrize("name", ["dui", "du", "d", "u", "global"])
def test_statistics_equal_those_of_the_dense_lambda(name: str) -> None:
    g = _granularity(name)
    for side, dense in (("user", g.dense_user_lambda()), ("item", g.dense_item_lambda())):
        storage = g.user_storage if side == "user" else g.item_storage
        stats = lambda_statistics(storage.detach(), quantiles=(0.1, 0.5, 0.9), per_dim=False)
        flat = dense.double().numpy().ravel()
        assert stats["mean"] == pytest.approx(flat.mean(), rel=1e-5)
        assert stats["std"] == pytest.approx(flat.std(), rel=1e-4, abs=1e-7)
        assert (stats["min"], stats["max"]) == pytest.approx((flat.min(), flat.max()))
        stored = storage.detach().double().numpy().ravel()
        assert stats["q50"] == pytest.approx(np.quantile(stored, 0.5), rel=1e-5)
        assert flat.min() <= stats["q10"] <= stats["q50"] <= stats["q90"] <= flat.max()
    per_dim = lambda_statistics(g.user_storage.detach(), quantiles=(), per_dim=True)
    width = g.user_storage.shape[1]
    assert [per_dim[f"dim_mean/{k:03d}"] for k in range(width)] == pytest.approx(
        g.user_storage.detach().mean(0).tolist()
    )


def test_quantiles_on_a_fixed_sample_and_keys() -> None:
    values = torch.rand(5000, 4)
    sample = quantile_sample(values.numel(), 2000, seed=3, device=values.device)
    assert (
        sample is not None
        and len(sample) == 2000
        and torch.equal(sample, quantile_sample(values.numel(), 2000, 3, values.device))
    )
    stats = lambda_statistics(values, (0.5,), per_dim=False, sample=sample)
    assert stats["q50"] == pytest.approx(0.5, abs=0.05)
    assert quantile_sample(100, 2000, 0, values.device) is None
    assert [quantile_key(q) for q in (0.05, 0.5, 0.999)] == ["q05", "q50", "q99.9"]
    counts, edges = lambda_histogram(torch.full((3, 2), 0.25), bins=4)
    assert sum(counts) == 6 and len(edges) == 5 and edges[0] < 0.25 < edges[-1]


def test_strata_choice_is_deterministic_disjoint_and_ordered() -> None:
    freq = np.random.default_rng(0).zipf(1.8, size=400).clip(max=500)
    a_idx, a_names = choose_by_strata(freq, STRATA, 4, np.random.default_rng(7))
    b_idx, b_names = choose_by_strata(freq, STRATA, 4, np.random.default_rng(7))
    assert np.array_equal(a_idx, b_idx) and list(a_names) == list(b_names)
    assert len(set(a_idx.tolist())) == 12 and list(a_names).count("median") == 4
    by = {s: freq[a_idx[a_names == s]] for s in STRATA}
    assert by["sparse"].max() <= by["median"].min() <= by["median"].max() <= by["active"].min()
    c_idx, _ = choose_by_strata(freq, STRATA, 4, np.random.default_rng(8))
    assert not np.array_equal(a_idx, c_idx)
    with pytest.raises(ValueError, match="strata.bad"):
        choose_by_strata(freq, {"bad": (0.5, 0.2)}, 1, np.random.default_rng(0))


def test_recorder_rows_match_lambda() -> None:
    g = _granularity("dui")
    freq = np.arange(50)
    users = choose_tracked("user", freq, np.arange(50) + 1000, STRATA, 2, seed=0)
    items = choose_tracked("item", np.arange(30), np.array([f"i{k}" for k in range(30)]), STRATA, 2, seed=0)
    recorder = TrajectoryRecorder([users, items], full_vector=True)
    recorder.record(g, step=0, epoch=0)
    with torch.no_grad():
        g.lambda_user.mul_(2)
    recorder.record(g, step=5, epoch=1)
    frame = recorder.drain()
    assert recorder.pending == 0 and frame.schema == pl.Schema(TRAJECTORY_SCHEMA)
    assert frame.height == 2 * (6 + 6) * (4 + 1)
    last = frame.filter((pl.col("step") == 5) & (pl.col("side") == "user")).sort("entity_id", "dim")
    expected = g.dense_user_lambda().double().numpy()
    for entity, raw, dim, value in last.select("entity_id", "raw_id", "dim", "value").iter_rows():
        assert raw == str(entity + 1000)
        assert value == pytest.approx(expected[entity].mean() if dim == -1 else expected[entity, dim], rel=1e-6)
    assert list(thin_steps(np.arange(1000), 5)) == [0, 250, 500, 749, 999]


def _split(n_users: int = 40, n_items: int = 20) -> PreparedSplit:
    rng = np.random.default_rng(0)
    users = rng.integers(0, n_users, 300).astype(np.int32)
    items = rng.integers(0, n_items, 300).astype(np.int32)
    empty = np.zeros(0, np.int32)
    return PreparedSplit(
        users, items, empty, empty, empty, empty, n_users, n_items, np.arange(n_users), np.arange(n_items)
    )


def test_build_tracking_callbacks_from_config(tmp_path) -> None:
    cfg = compose_config(["logger=wandb", "paths.output_dir=" + str(tmp_path)])
    plain = compose_config(["~tracking", "logger=csv", "paths.output_dir=" + str(tmp_path)])
    callbacks = build_tracking_callbacks(cfg, _split(), tmp_path)
    assert [type(c) for c in callbacks] == [
        LambdaStatsCallback,
        LambdaTrajectoryCallback,
        LambdaSnapshotCallback,
        WandbRunCallback,
    ]
    assert callbacks[0].every_n_steps == cfg.trainer.log_every_n_steps
    assert callbacks[1].path == tmp_path / "lambda_trajectories.parquet"  # the run's output_dir, injected
    assert callbacks[2].dir == tmp_path / "lambda_snapshots"
    assert build_tracking_callbacks(plain, _split(), tmp_path) == []


def test_tracking_nodes_built_from_their_target_when_enabled(tmp_path) -> None:
    overrides = [
        "tracking.stats.enabled=false",
        "tracking.stats.every_n_steps=3",
        "tracking.trajectories.every_n_steps=7",
    ]
    cfg = compose_config(["logger=csv", *overrides])
    callbacks = build_tracking_callbacks(cfg, _split(), tmp_path)
    assert [type(c) for c in callbacks] == [LambdaTrajectoryCallback, LambdaSnapshotCallback]  # stats: off
    assert callbacks[0].every_n_steps == 7


@pytest.mark.slow
def test_trajectory_parquet_matches_checkpointed_lambda(finished_runs) -> None:  # noqa: F811
    """Users and items of every stratum at several steps; the last recorded step is last.ckpt's Λ."""
    run = finished_runs / "opt_sweep" / "0"  # DUI, seed 0, full vectors recorded every TRACK_EVERY steps
    frame = pl.read_parquet(run / "lambda_trajectories.parquet")
    assert frame.schema == pl.Schema(TRAJECTORY_SCHEMA)
    counts = (
        frame.filter(pl.col("dim") == -1)
        .group_by("side", "stratum")
        .agg(pl.col("entity_id").n_unique().alias("entities"), pl.col("step").n_unique().alias("steps"))
    )
    assert counts.height == 6 and (counts["entities"] == 3).all() and (counts["steps"] >= 4).all()
    steps = sorted(frame["step"].unique().to_list())
    assert steps[0] == 0 and all(s % TRACK_EVERY == 0 for s in steps[1:-1])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert steps[-1] == checkpoint["global_step"]
    state = checkpoint["state_dict"]
    final = frame.filter(pl.col("step") == steps[-1])
    for side, key in (("user", "granularity.lambda_user"), ("item", "granularity.lambda_item")):
        lam = state[key].double().numpy()
        part = final.filter(pl.col("side") == side)
        ids = part["entity_id"].to_numpy()
        dims = part["dim"].to_numpy()
        expected = np.where(dims == -1, lam[ids].mean(axis=1), lam[ids, np.maximum(dims, 0)])
        np.testing.assert_allclose(part["value"].to_numpy(), expected, rtol=1e-6, atol=1e-12)
        assert np.abs(lam[ids]).max() > 0  # Λ moved (init 0.01, lr 0.5): a non-trivial comparison
    snapshots = sorted((run / "lambda_snapshots").glob("epoch_*.npz"))
    assert [p.name for p in snapshots] == ["epoch_000.npz", "epoch_001.npz"]
    with np.load(snapshots[-1]) as snap:
        sizes = json.loads((run / "metrics.json").read_text())
        assert snap["user_lambda"].shape == (sizes["n_users"], 8) and snap["item_lambda"].shape == (sizes["n_items"], 8)
    fix_run = finished_runs / "fix_sweep" / "0"
    assert not (fix_run / "lambda_trajectories.parquet").exists()  # no learned Λ: nothing tracked


def test_snapshot_cap(tmp_path) -> None:
    """The size cap stops snapshots once the next one would exceed it."""

    class _Trainer:
        sanity_checking, is_global_zero, global_step = False, True, 3

        def __init__(self, epoch: int) -> None:
            self.current_epoch = epoch

    class _Module:
        granularity = _granularity("dui", 400, 300, 16)

    callback = LambdaSnapshotCallback(tmp_path, max_mb=0.05)
    callback.on_validation_end(_Trainer(0), _Module())  # ~ 45 KB compressed: fits
    callback.on_validation_end(_Trainer(1), _Module())  # would exceed 50 KB: skipped
    assert [p.name for p in (tmp_path / "lambda_snapshots").iterdir()] == ["epoch_000.npz"]


@pytest.mark.parametrize("compressed", [False, True])
def test_written_lambda_reads_back_exactly(tmp_path, compressed: bool) -> None:
    """write_lambda's .npz (stored, or deflated at the fast level) is what np.load reads: the dense
    λU, λI, the granularity's name and the extra arrays, bit for bit."""
    import zipfile

    from lopt.tracking.lambda_stats import FAST_DEFLATE, write_lambda

    gran = _granularity("dui", 40, 30, 6)
    path = tmp_path / "lam.npz"
    write_lambda(path, gran, compressed=compressed, epoch=np.int64(7))
    with np.load(path) as z:
        assert np.array_equal(z["user_lambda"], gran.dense_user_lambda().detach().numpy())
        assert np.array_equal(z["item_lambda"], gran.dense_item_lambda().detach().numpy())
        assert str(z["granularity"]) == "dui" and int(z["epoch"]) == 7
    with zipfile.ZipFile(path) as archive:
        kinds = {info.compress_type for info in archive.infolist()}
    assert kinds == ({zipfile.ZIP_DEFLATED} if compressed else {zipfile.ZIP_STORED})
    assert FAST_DEFLATE == 1
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_quantiles_equal_torch_quantile(n: int, dtype: torch.dtype) -> None:
    """The partition-based quantiles are torch.quantile's, bit for bit, ties and ends included."""
    from lopt.tracking.lambda_stats import linear_quantiles

    values = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=dtype) ** 3
    values[::3] = values[0]  # ties
    q = torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 0.999, 1.0], dtype=dtype)
    assert torch.equal(linear_quantiles(values, q), torch.quantile(values, q))
    values[n // 2] = float("nan")  # torch's NaN convention is kept
    assert torch.equal(linear_quantiles(values, q).isnan(), torch.quantile(values, q).isnan()) and bool(
        linear_quantiles(values, q).isnan().all()
    )
