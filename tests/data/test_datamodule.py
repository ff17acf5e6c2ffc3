"""The DataModule: deterministic epochs, valid pairing, stateful resume, evaluation blocks."""

from __future__ import annotations

import pytest
import torch

from lopt.data.datamodule import InteractionDataModule
from lopt.data.sources import SyntheticSource
from lopt.eval.evaluator import RankingEvaluator


def _datamodule(tmp_path, valid_triples=True, seed=0, epoch_box=None) -> InteractionDataModule:
    source = SyntheticSource(
        n_users=60, n_items=50, n_interactions=1500, rank=4, user_alpha=0.6, item_alpha=0.9, noise=0.3, seed=1
    )
    dm = InteractionDataModule(
        source=source,
        preprocess=dict(min_users_per_item=0, min_items_per_user=0, iterative=False, test_ratio=0.2, valid_ratio=0.25),
        cache_dir=tmp_path / "cache",
        cache=True,
        batch_size=64,
        valid_batch_size=50,
        eval_batch_users=16,
        seed=seed,
        valid_triples=valid_triples,
    )
    dm.setup("fit")
    if epoch_box is not None:
        dm.train_dataloader().current_epoch = lambda: epoch_box[0]
    return dm


def _epoch(dm) -> list[dict]:
    return list(iter(dm.train_dataloader()))


def test_epoch_covers_train_once_with_valid_negatives(tmp_path) -> None:
    dm = _datamodule(tmp_path)
    split = dm.load_split()
    batches = _epoch(dm)
    users = torch.cat([b["train"][0] for b in batches]).numpy()
    pos = torch.cat([b["train"][1] for b in batches]).numpy()
    neg = torch.cat([b["train"][2] for b in batches]).numpy()
    assert sorted(zip(users, pos)) == sorted(zip(split.train_users, split.train_items))
    train_pairs = set(zip(split.train_users.tolist(), split.train_items.tolist()))
    assert not any((u, j) in train_pairs for u, j in zip(users.tolist(), neg.tolist()))
    seen = train_pairs | set(zip(split.valid_users.tolist(), split.valid_items.tolist()))
    for batch in batches:
        vu, vi, vj = (t.tolist() for t in batch["valid"])
        assert all((u, i) in seen for u, i in zip(vu, vi))
        assert not any((u, j) in seen for u, j in zip(vu, vj))
        assert all(t.dtype == torch.int64 for t in batch["train"] + batch["valid"])


def test_epochs_differ_and_are_reproducible(tmp_path) -> None:
    box = [0]
    first = _epoch(_datamodule(tmp_path, epoch_box=box))
    again = _epoch(_datamodule(tmp_path, epoch_box=box))
    box[0] = 1
    second = _epoch(_datamodule(tmp_path, epoch_box=box))
    same = all(torch.equal(a["train"][k], b["train"][k]) for a, b in zip(first, again) for k in range(3))
    assert same
    assert not torch.equal(first[0]["train"][0], second[0]["train"][0])  # reshuffled
    other_seed = _epoch(_datamodule(tmp_path / "s", seed=9))
    assert not torch.equal(first[0]["train"][2], other_seed[0]["train"][2])


def test_valid_stream_continues_across_epochs(tmp_path) -> None:
    """Training batch g is paired with validation batch g of the repeated valid split."""
    box = [0]
    dm = _datamodule(tmp_path, epoch_box=box)
    loader = dm.train_dataloader()
    n_train, n_valid = len(loader.train), len(loader.valid)
    valid_batches = []
    for epoch in range(3):
        box[0] = epoch
        valid_batches += [b["valid"] for b in loader]
    expected = [loader.valid.batch(g) for g in range(3 * n_train)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(valid_batches, expected) for k in range(3))
    assert 3 * n_train > n_valid  # the stream wrapped into a new valid epoch


def test_mid_epoch_state_resumes_at_the_next_batch(tmp_path) -> None:
    box = [2]
    dm = _datamodule(tmp_path, epoch_box=box)
    full = _epoch(dm)
    iterator = iter(dm.train_dataloader())
    for _ in range(3):
        next(iterator)
    state = dm.train_dataloader().state_dict()
    assert state == {"epoch": 2, "batches_done": 3}
    fresh = _datamodule(tmp_path, epoch_box=box)
    fresh.train_dataloader().load_state_dict(state)
    rest = _epoch(fresh)
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a["train"][k], b["train"][k]) for a, b in zip(rest, full[3:]) for k in range(3))
    assert len(_epoch(fresh)) == len(full)  # the skip applies to the resumed epoch only


def test_evaluation_blocks_cover_users_with_positives(tmp_path) -> None:
    dm = _datamodule(tmp_path, valid_triples=False)
    split = dm.load_split()
    with pytest.raises(RuntimeError, match="use_eval_users"):
        dm.val_dataloader()  # the evaluated users are handed over, never derived here
    dm.use_eval_users({which: RankingEvaluator(split, which, (5,)).users for which in ("valid", "test")})
    for _which, loader, users in (
        ("valid", dm.val_dataloader(), split.valid_users),
        ("test", dm.test_dataloader(), split.test_users),
    ):
        blocks = list(loader)
        assert all(len(b) <= 16 for b in blocks)
        assert torch.cat(blocks).tolist() == sorted(set(users.tolist()))
    assert "valid" not in _epoch(dm)[0]


def test_empty_valid_split_is_a_clear_error(tmp_path) -> None:
    source = SyntheticSource(
        n_users=30, n_items=40, n_interactions=300, rank=4, user_alpha=0.6, item_alpha=0.9, noise=0.3, seed=1
    )
    dm = InteractionDataModule(
        source=source,
        preprocess=dict(min_users_per_item=0, min_items_per_user=0, iterative=False, test_ratio=0.2, valid_ratio=0.0),
        cache_dir=tmp_path / "cache",
        cache=False,
        batch_size=64,
        valid_batch_size=64,
        eval_batch_users=16,
        seed=0,
        valid_triples=True,
    )
    with pytest.raises(ValueError, match="valid_ratio"):
        dm.setup("fit")
