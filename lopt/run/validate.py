"""Checks that run before any data is read or any step is taken, so a bad value fails in
seconds with a message naming the config key, the expected type/range and what was given.

* :func:`check_config` — right after composition: types and ranges of the keys lopt reads
  (``data.batch_size=abc`` → "data.batch_size must be an integer ≥ 1, got 'abc' (str)"), and
  that the monitored metric is one the evaluator reports for ``eval.ks``.
* :func:`check_split` — after the split is prepared, before the first step: no empty
  train/valid/test part, and every cut-off K of ``eval.ks`` at most the number of items.
* :func:`check_targets` — a config recorded in a run directory (read on resume and by
  ``lopt.recommend``) may only name the ``_target_``s of :func:`allowed_target`: a run directory
  is data, and instantiating an arbitrary callable from it would run a stranger's code.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lopt.data.controls import CONTROLS
from lopt.data.split import SPLIT_KINDS
from lopt.eval.evaluator import VALID_CANDIDATES
from lopt.eval.metrics import PROTOCOLS, TIES
from lopt.tracking.progress import PROGRESS_STYLES
from lopt.types import PreparedSplit


class ConfigError(ValueError):
    """A config value has the wrong type or range (the message names every bad key)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _one_device(value: Any) -> bool:
    """``trainer.devices`` naming one device: 1, "1", or a one-element list such as [0]."""
    if isinstance(value, (list, tuple, ListConfig)):
        return len(value) == 1
    if _is_int(value):
        return value == 1
    return isinstance(value, str) and value.strip() in ("1", "[0]", "0,")


def _file_name(value: Any) -> bool:
    """A plain file name: no folder part, no ``..``, not absolute (it stays in its directory)."""
    if not isinstance(value, str) or not value or value in (".", ".."):
        return False
    return "/" not in value and "\\" not in value and PurePath(value).name == value and ".." not in value


def _ratio(v: Any) -> bool:
    return _is_number(v) and 0 <= v < 1


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
    ("dataset.preprocess.test_ratio", _ratio, "a number in [0, 1)"),
    ("dataset.preprocess.valid_ratio", _ratio, "a number in [0, 1)"),
    ("dataset.preprocess.min_users_per_item", lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    ("dataset.preprocess.min_items_per_user", lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    ("dataset.preprocess.iterative", lambda v: isinstance(v, bool), "true or false"),
    ("model.lambda_split_ratio", lambda v: v is None or (_is_number(v) and 0 < v < 1), "a number in (0, 1)"),
    (
        "trainer.devices",
        _one_device,
        "1: training on several devices is not supported yet (each device would start its own run "
        "into one output directory); use trainer.devices=1",
    ),
    (
        "callbacks.model_checkpoint.filename",
        _file_name,
        "a plain file name (no '/' or '..'): checkpoints stay in the run's checkpoints/ folder",
    ),
)


def _choices() -> tuple[_Rule, ...]:
    """The enum-like keys and their allowed values (each list lives beside the code that reads
    the key)."""

    def one_of(allowed: tuple[str, ...]) -> Callable[[Any], bool]:
        return lambda v: isinstance(v, str) and v in allowed

    return (
        ("protocol.name", one_of(PROTOCOLS), f"one of {list(PROTOCOLS)}"),
        ("protocol.split.kind", one_of(SPLIT_KINDS), f"one of {list(SPLIT_KINDS)}"),
        ("control.name", one_of(CONTROLS), f"one of {list(CONTROLS)} (config group control)"),
        ("eval.ties", one_of(TIES), f"one of {list(TIES)}"),
        ("eval.valid_candidates", one_of(VALID_CANDIDATES), f"one of {list(VALID_CANDIDATES)}"),
        ("callbacks.progress.style", one_of(PROGRESS_STYLES), f"one of {list(PROGRESS_STYLES)}"),
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
    gone = {key: target for key, target in recorded_targets(OmegaConf.to_container(cfg)).items() if _moved(target)}
    if gone:
        listed = ", ".join(f"{key}: {target}" for key, target in gone.items())
        raise ConfigError(
            f"{source} was recorded by an older lopt version whose classes have since moved ({listed}); "
            "this version cannot rebuild the run. Start a new run with the same overrides (the recorded "
            "ones are in .hydra/overrides.yaml), or use the lopt version that made it."
        )


def _moved(target: Any) -> bool:
    """Whether ``target`` names a module of lopt that this version does not have (a class path of an
    older layout); only lopt's own module names are looked up, nothing is imported."""
    if not isinstance(target, str) or not target.startswith("lopt."):
        return False
    module = target.rsplit(".", 1)[0]
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # a parent package is missing
        return True


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every key of ``cfg`` with a bad type or range."""
    problems = []
    for key, test, expected in (*RULES, *_choices()):
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


#: ``_target_``s a recorded config may name: exactly these, or one below these prefixes (lopt's
#: own sources, models, optimizers, callbacks, loggers and sweep plugins; the submitit launchers;
#: torch's optimizers; Lightning's callbacks and loggers). Never underscore-prefixed names.
ALLOWED_TARGETS: tuple[str, ...] = ("lightning.pytorch.Trainer",)
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "lopt.data.sources.",
    "lopt.models.",
    "lopt.modules.",
    "lopt.optim.",
    "lopt.lookahead.",
    "lopt.run.trainer_callbacks.",
    "lopt.tracking.callbacks.",
    "lopt.tracking.loggers.",
    "lopt.tracking.progress.",
    "lopt.sweep.",
    "hydra_plugins.lopt_sweeper.",
    "hydra_plugins.hydra_submitit_launcher.",
    "torch.optim.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
)
_DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")


def allowed_target(target: Any) -> bool:
    """Whether a recorded config may instantiate ``target`` (see :data:`ALLOWED_TARGET_PREFIXES`)."""
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        return False
    return target in ALLOWED_TARGETS or target.startswith(ALLOWED_TARGET_PREFIXES)


def recorded_targets(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every ``_target_`` in a config container (dicts and lists)."""
    found: dict[str, Any] = {}
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if key == "_target_":
            found[path] = value
        elif isinstance(value, (dict, list)):
            found.update(recorded_targets(value, path + "."))
    return found


def check_targets(config: Any, source: Any) -> None:
    """Raise :class:`ConfigError` naming every ``_target_`` of ``config`` (a plain container, or
    a DictConfig, read from ``source``) that :func:`allowed_target` refuses."""
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    refused = {k: v for k, v in recorded_targets(config).items() if not allowed_target(v)}
    if refused:
        listed = "\n  ".join(f"{key}: {value!r}" for key, value in refused.items())
        raise ConfigError(
            f"{source} names code lopt does not run from a run directory:\n  {listed}\n"
            "A recorded config may only instantiate lopt's own classes, torch.optim.*, "
            "lightning.pytorch.Trainer and lightning.pytorch.callbacks/loggers.*. "
            "If you did not write this, the run directory was tampered with; start a new run"
        )
