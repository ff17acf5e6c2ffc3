"""Which interactions a run trains on, under the paper's protocol and the two fairness controls.

``FitArrays`` names the (user, item) pairs of the two triple streams of a fit: the Θ stream
(training triples) and the Λ stream (the triples of λOpt's Λ-step), plus the pairs the Λ
stream's negatives must avoid. :func:`fit_arrays` builds them from a :class:`PreparedSplit`:

* paper protocol — Θ: train; Λ: valid, negatives outside train ∪ valid;
* ``train_on_valid`` (the refit control's second fit) — Θ: train ∪ valid; no Λ stream;
* ``lambda_split_ratio`` (the inner control) — Λ: the latest ⌊n_u·ratio⌋ train interactions of
  each user (the Λ-split, :func:`carve_latest`); Θ: the rest of train; Λ negatives outside train.
  The valid split is left to checkpoint selection alone.

Θ negatives always avoid exactly the Θ stream's own pairs, as in the paper's protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lopt.data.split import floor_times, ratio_fraction
from lopt.types import PreparedSplit

KEY_LAMBDA_SPLIT_RATIO = "model.lambda_split_ratio"
#: The values of ``control.name``: the paper's protocol and the two fairness controls.
CONTROLS = ("none", "refit", "inner")


def control_changes(control: str, learns_lambda: bool) -> bool:
    """Whether the control ``control`` changes the run of a model: ``refit`` changes models without
    a Λ-step (λFix, AMF, NeuMF), ``inner`` models with one (λOpt, SGDA); under either switch the
    other models run the paper's protocol, exactly as under ``none``."""
    if control not in CONTROLS:
        raise ValueError(f"control.name must be one of {', '.join(CONTROLS)}, got {control!r} (config group `control`)")
    if control == "refit":
        return not learns_lambda
    if control == "inner":
        return learns_lambda
    return False


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
