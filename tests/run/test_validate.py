"""Config validation before any data is read, and split checks before the first step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lopt.run.validate import ConfigError, check_config, check_split
from lopt.types import PreparedSplit
from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, run_cli
from tests.helpers.faults import (
    assert_fails_before_training,
)
from tests.helpers.hydra import compose_config as _cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", "data.batch_size must be an integer ≥ 1, got 'abc' (str)"),
        ("data.valid_batch_size=0", "data.valid_batch_size must be an integer ≥ 1, got 0"),
        ("data.eval_batch_users=-5", "data.eval_batch_users must be an integer ≥ 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be an integer ≥ 1"),
        ("eval.monitor=hr@20", "eval.monitor=hr@20 is not a metric the run reports"),
        ("eval.ks=[]", "eval.ks must be a non-empty list"),
        ("eval.ks=[50,0]", "eval.ks must be a non-empty list of distinct integers ≥ 1"),
        ("eval.every_n_epochs=0", "eval.every_n_epochs must be an integer ≥ 1"),
        ("seed=-1", "seed must be an integer ≥ 0"),
        ("resume=yes", "resume must be true or false, got 'yes' (str)"),
        ("overwrite=1", "overwrite must be true or false"),
        ("data.cache=maybe", "data.cache must be true or false"),
        ("checkpoint.every_n_train_steps=-1", "checkpoint.every_n_train_steps must be an integer ≥ 0"),
        ("optimizer.lr=0", "optimizer.lr must be a number > 0"),
        ("model.dim=1.5", "model.dim must be an integer ≥ 1"),
    ],
)
def test_config_check_names_key_and_expected_type(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_config(_cfg([override]))


def test_monitor_is_checked_against_the_protocols_metrics() -> None:
    check_config(_cfg(["protocol=standard", "eval.monitor=recall@20"]))
    with pytest.raises(ConfigError, match=r"eval\.monitor=recall@20 is not a metric .* protocol=lambdaopt"):
        check_config(_cfg(["eval.monitor=recall@20"]))


def test_every_shipped_config_passes_the_check() -> None:
    check_config(_cfg([]))
    for experiment in sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")):
        check_config(_cfg([f"+experiment={experiment}"]))


def _split(n_train: int = 4, n_valid: int = 2, n_test: int = 2, n_items: int = 5) -> PreparedSplit:
    def part(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.int32)

    return PreparedSplit(
        part(n_train),
        part(n_train),
        part(n_valid),
        part(n_valid),
        part(n_test),
        part(n_test),
        n_users=1,
        n_items=n_items,
        user_ids=np.arange(1),
        item_ids=np.arange(n_items),
    )


@pytest.mark.parametrize("part", ["train", "valid", "test"])
def test_empty_split_part_is_refused(part: str) -> None:
    sizes = {"n_train": 4, "n_valid": 2, "n_test": 2, f"n_{part}": 0}
    with pytest.raises(ConfigError, match=f"the {part} split of dataset synthetic is empty"):
        check_split(_cfg(["model=fix"]), _split(**sizes))


def test_cut_off_above_the_number_of_items_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"eval\.ks=\[50, 100\] has K=\[50, 100\] above the 5 items"):
        check_split(_cfg([]), _split())
    check_split(_cfg(["eval.ks=[5]", "eval.monitor=auc"]), _split())


@pytest.mark.slow
def test_cli_bad_type_fails_before_any_data(tmp_path: Path) -> None:
    proc = run_cli(
        [*TINY_OVERRIDES, "data.batch_size=abc", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert_fails_before_training(proc, tmp_path / "run", "data.batch_size must be an integer ≥ 1, got 'abc' (str)")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=fix", "dataset.preprocess.test_ratio=0"], "the test split of dataset synthetic is empty"),
        (["model=fix", "dataset.preprocess.valid_ratio=0"], "the valid split of dataset synthetic is empty"),
        (["eval.ks=[5000]", "eval.monitor=hr@5000"], "has K=[5000] above the 120 items"),
    ],
    ids=["empty-test-fix", "empty-valid-fix", "k-above-items"],
)
@pytest.mark.slow
def test_cli_bad_split_fails_before_the_first_step(tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = run_cli(
        [*TINY_OVERRIDES, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, check=False, timeout=180
    )
    assert_fails_before_training(proc, tmp_path / "run", message)
