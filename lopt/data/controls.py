"""Which interactions a run trains on, under the paper's protocol and the two matched fairness
controls (docs/protocol.md, "Fairness controls").

``FitArrays`` names the (user, item) pairs of the two triple streams of a fit: the Θ stream
(training triples) and the Λ stream (the triples of λOpt's Λ-step), plus the pairs the Λ
stream's negatives must avoid. :func:`fit_arrays` builds them from a :class:`PreparedSplit`:

* paper protocol — Θ: train; Λ: valid, negatives outside train ∪ valid;
* ``train_on_valid`` (the refit control's second fit) — Θ: train ∪ valid; no Λ stream;
* ``lambda_split_ratio`` (the inner control) — Λ: the latest ⌊n_u·ratio⌋ train interactions of
  each user (the Λ-split, :func:`carve_latest`); Θ: the rest of train; Λ negatives outside train.
  The valid split is left to checkpoint selection alone.

Θ negatives always avoid exactly the Θ stream's own pairs, as in the paper's protocol.

The controls are *matched*: each changes every method's run the same way (:func:`matched_control_changes`),
so a control block runs every method itself. :func:`parse_control` reads and checks the ``control``
config group; :func:`control_block` names the table block a run belongs to, and
:func:`blocks_served` the blocks one run stands for unchanged (the only rows a block may borrow).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lopt.data.split import floor_times, ratio_fraction
from lopt.types import PreparedSplit

KEY_LAMBDA_SPLIT_RATIO = "control.lambda_split_ratio"
#: The values of ``control.name``: the paper's protocol and the two fairness controls.
CONTROLS = ("none", "refit", "inner")
#: The values of ``control.lambda`` (refit): Λ frozen at the selected checkpoint's, or replayed
#: along the first fit's per-epoch snapshots up to it.
REFIT_LAMBDA = ("final", "trajectory")
#: What the Θ stream of a fit holds, by control (metrics.json ``control.theta_data``).
THETA_DATA = {"none": "train", "inner": "train minus the Λ-split", "refit": "train ∪ valid"}


@dataclass(frozen=True)
class ControlSettings:
    """The ``control`` config group, checked: ``name`` (one of :data:`CONTROLS`),
    ``lambda_split_ratio`` (inner only), ``lambda_mode`` (refit only: ``control.lambda``)."""

    name: str
    lambda_split_ratio: float | None = None
    lambda_mode: str | None = None


def parse_control(node: Mapping[str, Any]) -> ControlSettings:
    """The checked settings of the ``control`` config node. Each control takes exactly its keys
    (``inner``: ``lambda_split_ratio``; ``refit``: ``lambda``); an unknown or missing key is an
    error that names it."""
    node = dict(node)
    name = node.pop("name", None)
    if name not in CONTROLS:
        raise ValueError(f"control.name must be one of {', '.join(CONTROLS)}, got {name!r} (config group `control`)")
    expected = {"none": set(), "inner": {"lambda_split_ratio"}, "refit": {"lambda"}}[name]
    if set(node) != expected:
        unknown, missing = sorted(set(node) - expected), sorted(expected - set(node))
        raise ValueError(
            f"control={name} takes the keys {sorted(expected) or 'none besides name'}: "
            + (f"unknown control.{', control.'.join(unknown)} " if unknown else "")
            + (f"missing control.{', control.'.join(missing)} " if missing else "")
            + f"(see conf/control/{name}.yaml)"
        )
    if name == "inner":
        ratio = node["lambda_split_ratio"]
        ratio_fraction(ratio, KEY_LAMBDA_SPLIT_RATIO)
        if float(ratio) <= 0.0:
            raise ValueError(f"{KEY_LAMBDA_SPLIT_RATIO} must be > 0 under control=inner (the Λ-split), got {ratio!r}")
        return ControlSettings(name, lambda_split_ratio=float(ratio))
    if name == "refit":
        mode = node["lambda"]
        if mode not in REFIT_LAMBDA:
            raise ValueError(f"control.lambda must be one of {', '.join(REFIT_LAMBDA)}, got {mode!r}")
        return ControlSettings(name, lambda_mode=str(mode))
    return ControlSettings(name)


def matched_control_changes(control: str) -> bool:
    """Whether the matched control ``control`` changes a method's run: ``inner`` (Θ trains on
    train minus the Λ-split) and ``refit`` (Θ retrained on train ∪ valid) change every method,
    with or without a Λ-step; ``none`` is the paper's protocol."""
    if control not in CONTROLS:
        raise ValueError(f"control.name must be one of {', '.join(CONTROLS)}, got {control!r} (config group `control`)")
    return control != "none"


def control_changes(control: str, learns_lambda: bool) -> bool:
    """The rule of the *unmatched* controls that records without ``control.matched`` (written before
    the controls were matched, e.g. the committed ml-100k records) were run under: ``refit``
    changed models without a Λ-step only, ``inner`` models with one only, and a control block took
    the other methods' paper-protocol runs. New runs follow :func:`matched_control_changes`."""
    if control not in CONTROLS:
        raise ValueError(f"control.name must be one of {', '.join(CONTROLS)}, got {control!r} (config group `control`)")
    if control == "refit":
        return not learns_lambda
    if control == "inner":
        return learns_lambda
    return False


def control_block(settings: ControlSettings) -> str:
    """The table block a run under ``settings`` belongs to: ``paper``, ``inner``, ``refit-final``
    or ``refit-trajectory``."""
    if settings.name == "none":
        return "paper"
    if settings.name == "refit":
        return f"refit-{settings.lambda_mode}"
    return settings.name


def blocks_served(settings: ControlSettings, learns_lambda: bool) -> tuple[str, ...]:
    """The blocks whose run of this method is exactly this run: its own block and, for a method
    without a Λ-step under refit, the other refit block (``control.lambda`` does not reach it, so
    its refit-final and refit-trajectory runs are the same run). No other block may borrow it:
    every other pair of blocks trains the method on different data."""
    own = control_block(settings)
    if settings.name == "refit" and not learns_lambda:
        return (own, *(f"refit-{mode}" for mode in REFIT_LAMBDA if f"refit-{mode}" != own))
    return (own,)


@dataclass(frozen=True)
class FitArrays:
    """int32 (user, item) pair arrays of a fit (see the module docstring); ``lambda_*`` are empty
    when the fit has no Λ stream."""

    train_users: np.ndarray
    train_items: np.ndarray
    lambda_users: np.ndarray
    lambda_items: np.ndarray
    lambda_seen_users: np.ndarray
    lambda_seen_items: np.ndarray


def carve_latest(users: np.ndarray, ratio: float, key: str = KEY_LAMBDA_SPLIT_RATIO) -> np.ndarray:
    """bool mask of the latest ⌊n_u·ratio⌋ rows of each user.

    ``users`` must be grouped by user with each user's rows in time order — the order of
    :class:`PreparedSplit`'s train arrays (``prepare_split`` sorts them by user, then time).
    ``ratio`` in [0, 1), floored exactly as the split's own ratios (``split.ratio_fraction``).
    Vectorized: one pass over the rows, no loop over users.
    """
    fraction = ratio_fraction(ratio, key)
    users = np.asarray(users)
    n = users.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    change = users[1:] != users[:-1]
    if bool((users[1:][change] < users[:-1][change]).any()):
        raise ValueError(
            "carve_latest needs the rows grouped by ascending user (the train split's order); "
            "got a user id that decreases"
        )
    starts = np.concatenate(([0], np.flatnonzero(change) + 1)).astype(np.int64)
    sizes = np.diff(np.append(starts, n))
    position = np.arange(n, dtype=np.int64) - np.repeat(starts, sizes)
    return position >= np.repeat(sizes - floor_times(sizes, fraction), sizes)


def fit_arrays(
    split: PreparedSplit, *, train_on_valid: bool = False, lambda_split_ratio: float | None = None
) -> FitArrays:
    """The pair arrays of a fit on ``split`` (see the module docstring); the two controls exclude
    each other."""
    if train_on_valid and lambda_split_ratio is not None:
        raise ValueError("train_on_valid (refit) and lambda_split_ratio (inner) are different controls; pick one")
    seen_users = np.concatenate([split.train_users, split.valid_users])
    seen_items = np.concatenate([split.train_items, split.valid_items])
    if train_on_valid:
        empty = np.empty(0, dtype=np.int32)
        return FitArrays(seen_users, seen_items, empty, empty.copy(), empty.copy(), empty.copy())
    if lambda_split_ratio is not None:
        carved = carve_latest(split.train_users, lambda_split_ratio)
        return FitArrays(
            split.train_users[~carved],
            split.train_items[~carved],
            split.train_users[carved],
            split.train_items[carved],
            split.train_users,
            split.train_items,
        )
    return FitArrays(split.train_users, split.train_items, split.valid_users, split.valid_items, seen_users, seen_items)
