"""The protocol group and the eval options reach the evaluators, and the split options the cache key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lopt.data.split import SPLIT_RULE_VERSION
from lopt.pipeline import build_datamodule, build_module, prepare_data
from tests.helpers.hydra import compose_config

TINY = ["dataset.source.n_users=60", "dataset.source.n_items=40", "dataset.source.n_interactions=1500"]


def _datamodule(tmp_path: Path, overrides: list[str]):
    cfg = compose_config([*TINY, f"paths.cache_dir={tmp_path}", *overrides])
    return cfg, build_datamodule(cfg)


def test_default_is_the_paper_protocol_with_the_safe_options(tmp_path: Path) -> None:
    cfg, dm = _datamodule(tmp_path, [])
    assert (cfg.protocol.name, list(cfg.eval.ks)) == ("lambdaopt", [50, 100])
    dm, _, evaluators = prepare_data(cfg)
    for which in evaluators:  # the datamodule's loaders cover the users the evaluators rank
        assert torch.equal(dm.eval_users[which], evaluators[which].users)
    for which, evaluator in evaluators.items():
        assert (evaluator.protocol, evaluator.ties, evaluator.valid_candidates) == (
            "lambdaopt",
            "pessimistic",
            "clean",
        ), which
        assert evaluator.metric_names == ["auc", "hr@50", "ndcg@50", "hr@100", "ndcg@100"]
    assert dm.cache_key()["split"] == {"kind": "temporal_user", "rule": SPLIT_RULE_VERSION}


def test_standard_protocol_and_paper_options(tmp_path: Path) -> None:
    cfg, dm = _datamodule(
        tmp_path,
        ["protocol=standard", "protocol.split.kind=leave_one_out", "eval.ties=paper", "eval.valid_candidates=paper"],
    )
    assert list(cfg.eval.ks) == [10, 20, 50]
    dm, _, evaluators = prepare_data(cfg)
    evaluator = evaluators["test"]
    assert (evaluator.protocol, evaluator.ties, evaluators["valid"].valid_candidates) == (
        "standard",
        "paper",
        "paper",
    )
    assert "recall@20" in evaluator.metric_names and "map@50" in evaluator.metric_names
    # leave-one-out: at most one test and one valid item per user
    split = dm.load_split()
    assert max(split.test_users.tolist().count(u) for u in set(split.test_users.tolist())) == 1
    # every split kind (and random_user's seed) is its own cache entry
    keys = {
        str(_datamodule(tmp_path, ["protocol=standard", f"protocol.split.kind={kind}"])[1].cache_key())
        for kind in ("temporal_user", "temporal_global", "random_user", "leave_one_out")
    }
    keys.add(
        str(
            _datamodule(tmp_path, ["protocol=standard", "protocol.split.kind=random_user", "protocol.split.seed=3"])[
                1
            ].cache_key()
        )
    )
    assert len(keys) == 5


def test_module_ranks_with_the_evaluators_handed_to_it(tmp_path: Path) -> None:
    cfg, _ = _datamodule(tmp_path, ["model=fix"])
    _, split, evaluators = prepare_data(cfg)
    module = build_module(cfg, split.n_users, split.n_items)
    users = evaluators["valid"].users[:4]
    with pytest.raises(RuntimeError, match="use_evaluators"):
        module.validation_step(users, 0)  # nothing reached through a trainer
    module.use_evaluators(evaluators)
    module.on_validation_epoch_start()
    module.validation_step(users, 0)
    per_user = module._collect()
    assert torch.equal(per_user["user"], users)
    expected = evaluators["valid"].block_metrics(users, module.score_users(users).detach())
    assert torch.allclose(per_user["auc"], expected["auc"])


def test_beyond_accuracy_is_gathered_by_the_test_phase_only(tmp_path: Path) -> None:
    """The test pass starts a fresh beyond-accuracy accumulation; building loaders or validating
    does not (the switch belongs to the test phase)."""
    cfg, _ = _datamodule(tmp_path, ["model=fix"])
    datamodule, split, evaluators = prepare_data(cfg)
    module = build_module(cfg, split.n_users, split.n_items)
    module.use_evaluators(evaluators)
    users = evaluators["test"].users
    datamodule.test_dataloader()
    with torch.no_grad():  # the test evaluator scoring outside a test pass
        per_user = evaluators["test"].block_metrics(users, module.score_users(users))
    assert evaluators["test"].beyond_summary({"user": users, **per_user}) == {}
    module.on_test_epoch_start()
    module.test_step(users, 0)
    module.on_test_epoch_end = lambda: None  # no trainer to log to
    assert evaluators["test"].beyond_summary(module._collect())


def test_an_earlier_split_has_its_own_cache_key_and_fingerprint(tmp_path: Path) -> None:
    cfg, paper = _datamodule(tmp_path, [])
    _, earlier = _datamodule(tmp_path, ["protocol.split.drop_latest=0.1"])
    assert "drop_latest" not in paper.cache_key()["split"]  # the paper's split keeps its key
    assert earlier.cache_key()["split"]["drop_latest"] == 0.1
    assert earlier.split_fingerprint() != paper.split_fingerprint()
    assert earlier.load_split().train_users.size < paper.load_split().train_users.size
