"""The matched fairness controls: refit (every model retrained on train ∪ valid for the selected
epochs, Λ frozen or replayed) and inner (every model's Θ on train minus a Λ-split carved from
train), from the carving kernel to end-to-end runs through run.py; and the early-stopping record."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch

from lopt import pipeline
from lopt.data.controls import (
    ControlSettings,
    blocks_served,
    carve_latest,
    control_block,
    fit_arrays,
    matched_control_changes,
    parse_control,
)
from lopt.data.preprocess import prepare_split
from lopt.models.granularity import LambdaGranularity
from lopt.modules.fix import MFBPRModule
from lopt.pipeline import build_datamodule, build_module, control_applies
from lopt.tracking.lambda_replay import LambdaReplay, epoch_snapshot_path, load_lambda_
from lopt.tracking.lambda_stats import write_lambda
from tests.helpers.cli import TINY_OVERRIDES, read_metrics, run_cli
from tests.helpers.hydra import compose_config
from tests.helpers.trainer import fit_batches


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
    with pytest.raises(ValueError, match="control.lambda_split_ratio"):
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


def _cfg(tmp_path: Path, *overrides: str, output_dir: Path | None = None):
    return compose_config([*TINY_OVERRIDES, *overrides], data_dir=tmp_path / "data", output_dir=output_dir)


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
    module = build_module(cfg, split.n_users, split.n_items)  # the ratio is a control setting, not a module's
    assert not hasattr(module, "lambda_split_ratio") and "lambda_split_ratio" not in cfg.model


#: Every model of the study, by its overrides: λFix, the four λOpt granularities, SGDA, AMF, NeuMF.
MODELS = {
    "fix": ["model=fix"],
    "d": ["granularity=d"],
    "du": ["granularity=du"],
    "di": ["granularity=di"],
    "dui": ["granularity=dui"],
    "sgda": ["model=sgda", "optimizer=sgd", "optimizer.lr=0.05"],
    "amf": ["model=amf", "model.pretrain_epochs=1"],
    "neumf": ["model=neumf", "model.mlp_layers=[16,8]"],
}
LEARNS_LAMBDA = {"d", "du", "di", "dui", "sgda"}


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_inner_theta_stream_is_the_same_remainder_for_every_model(tmp_path: Path, ratio: float) -> None:
    """Under control=inner every model trains Θ on train minus the Λ-split of the block's one ratio;
    only the models with a Λ-step get a Λ stream (the Λ-split)."""
    sizes = {}
    for name, overrides in MODELS.items():
        datamodule = build_datamodule(
            _cfg(tmp_path, *overrides, "control=inner", f"control.lambda_split_ratio={ratio}")
        )
        datamodule.setup("fit")
        split = datamodule.load_split()
        carved = int(carve_latest(split.train_users, ratio).sum())
        assert 0 < carved < len(split.train_users)
        expected = (len(split.train_users) - carved, carved if name in LEARNS_LAMBDA else 0)
        sizes[name] = datamodule.stream_sizes()
        assert sizes[name] == expected, name
        theta_users = datamodule.train_dataloader().train.users
        assert np.array_equal(
            np.bincount(theta_users, minlength=split.n_users),
            np.bincount(split.train_users, minlength=split.n_users)
            - np.bincount(split.train_users[carve_latest(split.train_users, ratio)], minlength=split.n_users),
        )
    assert len({theta for theta, _ in sizes.values()}) == 1
    paper = build_datamodule(_cfg(tmp_path, "model=fix"))
    paper.setup("fit")
    assert paper.stream_sizes() == (len(paper.load_split().train_users), 0)


def test_control_settings_are_checked(tmp_path: Path) -> None:
    assert parse_control({"name": "none"}) == ControlSettings("none")
    assert parse_control({"name": "inner", "lambda_split_ratio": 0.25}).lambda_split_ratio == 0.25
    assert parse_control({"name": "refit", "lambda": "trajectory"}).lambda_mode == "trajectory"
    with pytest.raises(ValueError, match="control.name"):
        control_applies(_cfg(tmp_path, "control.name=other"), "refit")
    with pytest.raises(ValueError, match="missing control.lambda_split_ratio"):
        parse_control({"name": "inner"})
    with pytest.raises(ValueError, match="unknown control.lambda "):
        parse_control({"name": "inner", "lambda_split_ratio": 0.25, "lambda": "final"})
    with pytest.raises(ValueError, match="control.lambda must be one of final, trajectory"):
        parse_control({"name": "refit", "lambda": "last"})
    with pytest.raises(ValueError, match="must be > 0"):
        parse_control({"name": "inner", "lambda_split_ratio": 0.0})
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        parse_control({"name": "inner", "lambda_split_ratio": 1.5})


def test_matched_controls_change_every_model_and_borrow_only_the_identical_refit() -> None:
    assert not matched_control_changes("none")
    assert matched_control_changes("inner") and matched_control_changes("refit")
    final, trajectory = (
        ControlSettings("refit", lambda_mode="final"),
        ControlSettings("refit", lambda_mode="trajectory"),
    )
    inner = ControlSettings("inner", lambda_split_ratio=0.25)
    assert [control_block(s) for s in (ControlSettings("none"), inner, final, trajectory)] == [
        "paper",
        "inner",
        "refit-final",
        "refit-trajectory",
    ]
    # control.lambda does not reach a model without a Λ-step: its refit serves both refit blocks
    assert blocks_served(final, learns_lambda=False) == ("refit-final", "refit-trajectory")
    assert blocks_served(trajectory, learns_lambda=False) == ("refit-trajectory", "refit-final")
    assert blocks_served(final, learns_lambda=True) == ("refit-final",)
    assert blocks_served(inner, learns_lambda=False) == ("inner",)
    assert blocks_served(ControlSettings("none"), learns_lambda=False) == ("paper",)


def _split_sizes(tmp_path: Path) -> tuple[int, int]:
    datamodule = build_datamodule(_cfg(tmp_path, "model=fix"))
    split = datamodule.load_split()
    return len(split.train_users), len(split.valid_users)


def _lambda_of_checkpoint(path: Path) -> dict[str, np.ndarray]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("granularity."): v.numpy() for k, v in state.items() if k.startswith("granularity.")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,mode", [("fix", "final"), ("dui", "final"), ("dui", "trajectory"), ("sgda", "final"), ("amf", "final")]
)
def test_refit_trains_the_selected_epochs_on_train_and_valid(tmp_path: Path, name: str, mode: str) -> None:
    """Every model is refit: the epochs and Θ-steps the refit trainer actually ran are best_epoch + 1
    epochs of ⌈|train ∪ valid| / batch⌉ steps (a refit that trained best_epoch epochs has fewer steps);
    the selection (valid metrics, best epoch) is the first fit's."""
    cfg = _cfg(
        tmp_path,
        *MODELS[name],
        "trainer.max_epochs=3",
        "control=refit",
        f"control.lambda={mode}",
        output_dir=tmp_path / "run",
    )
    metrics = pipeline.run(cfg)
    block = metrics["control"]
    n_train, n_valid = _split_sizes(tmp_path)
    epochs = metrics["best_epoch"] + 1
    assert block["epochs"] == block["epochs_trained"] == epochs
    assert block["steps_trained"] == epochs * math.ceil((n_train + n_valid) / cfg.data.batch_size)
    assert block["theta_interactions"] == n_train + n_valid and block["selection_theta_interactions"] == n_train
    assert block["theta_data"] == "train ∪ valid" and block["borrowed"] is False and block["matched"] is True
    assert metrics["epochs_trained"] == 3 and metrics["stopped_early"] is False
    learns = name in LEARNS_LAMBDA
    assert block["lambda"] == (mode if learns else None)
    assert block["serves"] == ([f"refit-{mode}"] if learns else ["refit-final", "refit-trajectory"])
    assert block["selection_test"] != metrics["test"]
    if mode == "trajectory":
        assert block["lambda_snapshots"] == [f"epoch_{e:03d}.npz" for e in range(epochs)]


@pytest.mark.slow
def test_refit_that_trains_fewer_epochs_than_selected_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = pipeline.refit_on_train_and_valid
    monkeypatch.setattr(
        pipeline,
        "refit_on_train_and_valid",
        lambda cfg, out, epochs, selected: original(cfg, out, epochs - 1, selected),
    )
    cfg = _cfg(tmp_path, "model=fix", "trainer.max_epochs=2", "control=refit", output_dir=tmp_path / "run")
    with pytest.raises(RuntimeError, match="the refit trained 1 epochs, not the selected 2"):
        pipeline.run(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["final", "trajectory"])
def test_refit_keeps_the_selected_lambda_frozen(tmp_path: Path, mode: str) -> None:
    """λOpt-DUI under refit: the refit model's Λ (lambda.npz) is the selected checkpoint's, bit for
    bit: frozen (final), or the last replayed snapshot, which is the selected epoch's (trajectory)."""
    run_dir = tmp_path / "run"
    cfg = _cfg(
        tmp_path,
        "granularity.init=0.01",
        "lambda_optimizer.lr=0.5",
        "trainer.max_epochs=3",
        "control=refit",
        f"control.lambda={mode}",
        output_dir=run_dir,
    )
    metrics = pipeline.run(cfg)
    selected = _lambda_of_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    refit = np.load(run_dir / "lambda.npz")
    assert np.array_equal(refit["user_lambda"], selected["lambda_user"])
    assert np.array_equal(refit["item_lambda"], selected["lambda_item"])
    assert not np.allclose(selected["lambda_user"], 0.01)  # Λ was learned in the first fit
    if mode == "trajectory":
        best = np.load(run_dir / "lambda_epochs" / f"epoch_{metrics['best_epoch']:03d}.npz")
        assert np.array_equal(best["user_lambda"], selected["lambda_user"])
        first = np.load(run_dir / "lambda_epochs" / "epoch_000.npz")
        assert metrics["best_epoch"] == 0 or not np.array_equal(first["user_lambda"], best["user_lambda"])
    else:
        assert not (run_dir / "lambda_epochs").exists()


class _LambdaSpy(L.Callback):
    """The module's Λ (one value: the DUI storage is constant in these tests) at each batch's start
    and end."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._start = float(pl_module.granularity.lambda_user.mean())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        gran = pl_module.granularity
        assert torch.equal(gran.lambda_user, torch.full_like(gran.lambda_user, self._start))
        self.seen.append((trainer.current_epoch, self._start, float(gran.lambda_item.mean())))


def test_trajectory_replay_uses_the_snapshots_in_order_up_to_the_selected_epoch(tmp_path: Path) -> None:
    """Snapshot e (Λ = e + 1 everywhere) drives refit epoch e; snapshots after the selected epoch are
    never read, Λ does not move within an epoch, and the Θ-steps leave it as loaded."""
    n_users, n_items, dim = 7, 9, 4
    snapshots = []
    for epoch in range(5):
        gran = LambdaGranularity("dui", n_users, n_items, dim, float(epoch + 1))
        snapshots.append(epoch_snapshot_path(tmp_path, epoch))
        write_lambda(snapshots[-1], gran, compressed=True)
    frozen = LambdaGranularity("dui", n_users, n_items, dim, 0.0).requires_grad_(False)
    module = MFBPRModule(n_users, n_items, dim, 0.1, functools.partial(torch.optim.Adam, lr=0.01), frozen)
    replay, spy = LambdaReplay(snapshots[:3]), _LambdaSpy()
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"train": (torch.randint(0, n_users, (8,), generator=gen), *torch.randint(0, n_items, (2, 8), generator=gen))}
        for _ in range(2)
    ]
    fit_batches(module, batches, max_epochs=3, callbacks=[replay, spy])
    assert replay.loaded == snapshots[:3]
    assert [(e, u, i) for e, u, i in spy.seen] == [(e, e + 1.0, e + 1.0) for e in range(3) for _ in range(2)]
    with pytest.raises(RuntimeError, match="refit epoch 3 has no snapshot"):
        fit_batches(
            MFBPRModule(n_users, n_items, dim, 0.1, functools.partial(torch.optim.Adam, lr=0.01), frozen),
            batches,
            max_epochs=4,
            callbacks=[LambdaReplay(snapshots[:3])],
        )


def test_load_lambda_refuses_a_snapshot_of_another_granularity(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    write_lambda(path, LambdaGranularity("du", 5, 6, 3, 0.5))
    with pytest.raises(ValueError, match="granularity 'du', the run's is 'dui'"):
        load_lambda_(LambdaGranularity("dui", 5, 6, 3, 0.0), path)
    with pytest.raises(ValueError, match="expected \\(4, 3\\)"):
        load_lambda_(LambdaGranularity("du", 4, 6, 3, 0.0), path)
    target = LambdaGranularity("du", 5, 6, 3, 0.0)
    load_lambda_(target, path)
    assert torch.equal(target.dense_item_lambda(), torch.full((6, 3), 0.5))


@pytest.mark.slow
def test_inner_control_trains_every_model_on_the_remainder(tmp_path: Path) -> None:
    """λFix under control=inner is run, not borrowed: Θ on train minus the Λ-split, no Λ stream."""
    metrics = pipeline.run(_cfg(tmp_path, "model=fix", "control=inner", output_dir=tmp_path / "run"))
    datamodule = build_datamodule(_cfg(tmp_path, "model=fix"))
    split = datamodule.load_split()
    carved = int(carve_latest(split.train_users, 0.25).sum())
    block = metrics["control"]
    assert block["theta_interactions"] == len(split.train_users) - carved and block["lambda_interactions"] == 0
    assert block["block"] == "inner" and block["applied"] is True and block["borrowed"] is False
    assert block["theta_data"] == "train minus the Λ-split" and block["lambda_data"] is None


@pytest.mark.slow
def test_early_stopping_is_recorded(tmp_path: Path) -> None:
    """metrics.json says how many epochs the fit ran and whether early stopping ended it."""
    base = ("model=fix", "trainer.max_epochs=6")
    capped = pipeline.run(_cfg(tmp_path, *base, output_dir=tmp_path / "capped"))
    assert capped["epochs_trained"] == 6 and capped["max_epochs"] == 6 and capped["stopped_early"] is False
    # no improvement of at least 1.0 AUC is possible: stops after the first evaluation + patience 1
    stopped = pipeline.run(
        _cfg(
            tmp_path,
            *base,
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1.0",
            output_dir=tmp_path / "stopped",
        )
    )
    assert stopped["epochs_trained"] == 2 and stopped["stopped_early"] is True and stopped["best_epoch"] <= 1


@pytest.mark.slow
def test_refit_control_end_to_end(tmp_path: Path) -> None:
    """λFix under control=refit through run.py: the selection is the paper protocol's (same valid
    metrics, best epoch, selected checkpoint's test), the reported test is that of a model trained
    on train ∪ valid for best_epoch + 1 epochs."""
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
    assert paper["control"]["name"] == "none" and paper["control"]["block"] == "paper"
    assert paper["control"]["theta_interactions"] == refit["control"]["selection_theta_interactions"]
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
    assert block["lambda_data"] == "Λ-split" and paper["control"]["lambda_data"] == "valid"
    assert inner["valid"] != paper["valid"] and inner["test"] != paper["test"]
    lam = np.load(sweep / "1" / "lambda.npz")
    assert (lam["user_lambda"] >= 0).all() and not np.allclose(lam["user_lambda"], 0.01)
