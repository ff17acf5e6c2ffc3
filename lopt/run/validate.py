"""Checks that run before any data is read or any step is taken, so a bad value fails in
seconds with a message naming the config key, the expected type/range and what was given.

* :func:`check_config` — right after composition: types and ranges of the keys lopt reads
  (``data.batch_size=abc`` → "data.batch_size must be an integer ≥ 1, got 'abc' (str)"), and
  that the monitored metric is one the evaluator reports for ``eval.ks``.
* :func:`check_split` — after the split is prepared, before the first step: no empty
  train/valid/test part, and every cut-off K of ``eval.ks`` at most the number of items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lopt.types import PreparedSplit


class ConfigError(ValueError):
    """A config value has the wrong type or range (the message names every bad key)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


_Rule = tuple[str, Callable[[Any], bool], str]

#: (key, test, expected) of the scalar keys lopt reads; a key absent from the config is skipped
#: (its group does not use it).
RULES: tuple[_Rule, ...] = (
    ("seed", lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    ("resume", lambda v: isinstance(v, bool), "true or false"),
    ("overwrite", lambda v: isinstance(v, bool), "true or false"),
    ("data.batch_size", lambda v: _is_int(v) and v >= 1, "an integer ≥ 1"),
    ("data.valid_batch_size", lambda v: _is_int(v) and v >= 1, "an integer ≥ 1"),
    ("data.eval_batch_users", lambda v: _is_int(v) and v >= 1, "an integer ≥ 1"),
    ("data.cache", lambda v: isinstance(v, bool), "true or false"),
    ("eval.every_n_epochs", lambda v: _is_int(v) and v >= 1, "an integer ≥ 1"),
    ("eval.monitor", lambda v: isinstance(v, str), "a metric name such as auc or ndcg@50"),
    ("checkpoint.every_n_train_steps", lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    ("checkpoint.keep", lambda v: v in ("all", "best", "none", "auto"), "all, best, none or auto"),
    ("trainer.max_epochs", lambda v: _is_int(v) and v >= 1, "an integer ≥ 1 (epochs to train)"),
    ("model.dim", lambda v: _is_int(v) and v >= 1, "an integer ≥ 1"),
    ("model.lambda_value", lambda v: _is_number(v) and v >= 0, "a number ≥ 0"),
    ("optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("lambda_optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("granularity.init", lambda v: _is_number(v) and v >= 0, "a number ≥ 0"),
    ("dataset.download", lambda v: isinstance(v, bool), "true or false"),
)


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return f"{value!r} ({type(value).__name__})"


#: Keys every config of this lopt version has and a config recorded by an older version may lack.
CURRENT_KEYS = ("model.label", "model.needs_valid_triples", "model.reported_granularity")


def check_recorded_config(cfg: DictConfig, source: Any) -> None:
    """Raise :class:`ConfigError` when a run's recorded config (read from ``source``) predates keys
    this version builds the run from (:data:`CURRENT_KEYS`): such a run cannot be rebuilt."""
    missing = [key for key in CURRENT_KEYS if OmegaConf.select(cfg, key, default="__absent__") == "__absent__"]
    if missing:
        raise ConfigError(
            f"{source} was recorded by an older lopt version: its config lacks {', '.join(missing)}, "
            "which this version needs to rebuild the run. Start a new run with the same overrides "
            "(the recorded ones are in .hydra/overrides.yaml), or use the lopt version that made it."
        )


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every key of ``cfg`` with a bad type or range."""
    problems = []
    for key, test, expected in RULES:
        value = OmegaConf.select(cfg, key, default="__absent__")
        if isinstance(value, str) and value == "__absent__":
            continue
        if not test(value):
            problems.append(f"{key} must be {expected}, got {_shown(value)}")
    ks = OmegaConf.select(cfg, "eval.ks")
    ks_ok = (
        isinstance(ks, ListConfig)
        and len(ks) > 0
        and len(set(ks)) == len(ks)
        and all(_is_int(k) and k >= 1 for k in ks)
    )
    if not ks_ok:
        problems.append(
            f"eval.ks must be a non-empty list of distinct integers ≥ 1, e.g. eval.ks=[50,100], got {_shown(ks)}"
        )
    else:
        from lopt.eval.metrics import metric_names

        protocol = OmegaConf.select(cfg, "protocol.name", default="lambdaopt")
        names = metric_names(tuple(ks), protocol)
        monitor = OmegaConf.select(cfg, "eval.monitor")
        if isinstance(monitor, str) and monitor not in names:
            problems.append(
                f"eval.monitor={monitor} is not a metric the run reports: with "
                f"protocol={protocol} and eval.ks={list(ks)} it must be one of {names} "
                "(add its K to eval.ks)"
            )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def check_split(cfg: DictConfig, split: PreparedSplit) -> None:
    """Raise :class:`ConfigError` when a part of ``split`` is empty or a K exceeds the items."""
    problems = []
    for part in ("train", "valid", "test"):
        if len(getattr(split, f"{part}_users")) == 0:
            problems.append(
                f"the {part} split of dataset {cfg.dataset.name} is empty ({split.n_users} users, "
                f"{split.n_items} items after preprocessing): every model needs train, valid and "
                "test interactions. Check dataset.preprocess.test_ratio / valid_ratio (the "
                "latest ⌊n·ratio⌋ interactions of each user are held out, so users need enough "
                "interactions) and the min_* filters"
            )
    too_big = [k for k in cfg.eval.ks if k > split.n_items]
    if too_big:
        problems.append(
            f"eval.ks={list(cfg.eval.ks)} has K={too_big} above the {split.n_items} "
            f"items of dataset {cfg.dataset.name} (HR@K would be 1 by construction): "
            f"use cut-offs ≤ {split.n_items}"
        )
    if problems:
        raise ConfigError("cannot train on this split:\n  " + "\n  ".join(problems))
