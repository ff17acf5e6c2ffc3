"""Whole-split evaluation on top of :meth:`lopt.eval.RankingEvaluator.block_metrics`.

Training evaluates block by block inside Lightning's loops; the tests score a whole split at
once with these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lopt.eval import RankingEvaluator, mean_ignoring_nan

#: Users per block when a test does not choose.
DEFAULT_BLOCK_SIZE = 1024


def evaluate_per_user(
    evaluator: RankingEvaluator,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, torch.Tensor]:
    """Run ``score_fn(users (B,) int64 CPU) -> scores (B, n_items)`` over ``evaluator.users``.

    Returns the per-user metrics concatenated in the order of ``evaluator.users``, on the CPU.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in evaluator.metric_names}
    for start in range(0, evaluator.users.numel(), block_size):
        block = evaluator.users[start : start + block_size]
        for name, value in evaluator.block_metrics(block, score_fn(block)).items():
            parts[name].append(value.cpu())
    return {name: torch.cat(vals) if vals else torch.empty(0, dtype=torch.float64) for name, vals in parts.items()}


def aggregate(per_user: dict[str, torch.Tensor]) -> dict[str, float]:
    """:func:`lopt.eval.mean_ignoring_nan` of each (n,) metric tensor."""
    return {name: mean_ignoring_nan(values) for name, values in per_user.items()}


def evaluate(
    evaluator: RankingEvaluator,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, float]:
    """User-averaged metrics: :func:`aggregate` of :func:`evaluate_per_user`."""
    return aggregate(evaluate_per_user(evaluator, score_fn, block_size))
