"""Blockwise evaluation of a split under the lambdaopt or the standard protocol.

:class:`RankingEvaluator` precomputes, once, two CSR structures over users: the positives of the
evaluated split (valid or test) and the items excluded from the user's ranking. For a block of
users and their dense (B, n_items) scores it scatters both into (B, n_items) masks on the scores'
device (positives P_u; candidates N_u = the other rankable items) and computes the protocol's
metrics (:mod:`lopt.eval.metrics`; both protocols share the same exact ranking kernel). Memory
is bounded by the block: no (n_users, n_items) tensor is ever built.

Candidates (docs/protocol.md): for the test split, items outside the user's train ∪ valid ∪ test;
for the valid split, items outside train ∪ valid — the test split is unknown at selection time,
so test items are candidates (``valid_candidates="paper"``: also remove them, as the paper's code
did). Under the standard protocol the ranked list is P_u ∪ N_u: all items outside the user's
train (valid split) or train ∪ valid (test split).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from lopt.eval.beyond import BeyondAccuracy
from lopt.eval.metrics import (
    PROTOCOLS,
    Protocol,
    Ties,
    _check_ks,
    _check_ties,
    _output_dtype,
    lambdaopt_from_ranks,
    metric_names,
    positive_ranks,
    standard_from_ranks,
)
from lopt.types import PreparedSplit

__all__ = ["VALID_CANDIDATES", "RankingEvaluator"]

#: ``eval.valid_candidates``: "clean" (test items are candidates when ranking the valid split)
#: or "paper" (the paper's code: they are removed, so selection peeks at the test split).
VALID_CANDIDATES: tuple[str, ...] = ("clean", "paper")


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr (n_users+1,) int64, indices (nnz,) int64) with each user's items ascending."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((items, users))
    counts = np.bincount(users, minlength=n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return torch.from_numpy(indptr), torch.from_numpy(items[order])


def _gather_rows(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (block row, item) pairs of the CSR rows ``users`` (all on one device)."""
    start = indptr[users]
    counts = indptr[users + 1] - start
    total = int(counts.sum())
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    row_first = torch.cumsum(counts, 0) - counts
    offset_in_row = torch.arange(total, device=users.device) - row_first[rows]
    return rows, indices[start[rows] + offset_in_row]


class RankingEvaluator:
    """Exact per-user metrics of one split (``"valid"`` or ``"test"``) computed block by block.

    Attributes:
        users: (n_eval,) int64 CPU tensor, ascending, of the users with ≥1 positive in the split.
        n_users, n_items: shape of the score matrix rows/columns.
        ks: the metric cut-offs.
        protocol: "lambdaopt" (AUC, HR@K, NDCG@K) or "standard" (see :mod:`lopt.eval.metrics`).
        ties: "pessimistic" or "paper" (the paper's optimistic rank).
        metric_names: keys of every returned dict, in order.
    """

    def __init__(
        self,
        split: PreparedSplit,
        which: Literal["valid", "test"],
        ks: Sequence[int] = (50, 100),
        *,
        protocol: Protocol = "lambdaopt",
        ties: Ties = "pessimistic",
        valid_candidates: str = "clean",
    ) -> None:
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r} (config key protocol.name)")
        if valid_candidates not in VALID_CANDIDATES:
            raise ValueError(
                f"valid_candidates must be one of {VALID_CANDIDATES}, got {valid_candidates!r} "
                "(config key eval.valid_candidates)"
            )
        self.which = which
        self.ks = _check_ks(ks)
        self.protocol = protocol
        self.ties = _check_ties(ties)
        self.valid_candidates = valid_candidates
        self.metric_names = metric_names(self.ks, protocol)
        self.n_users = int(split.n_users)
        self.n_items = int(split.n_items)
        self._item_frequency = split.item_train_frequency()
        self._user_frequency = split.user_train_frequency()
        self.beyond: BeyondAccuracy | None = None

        pos_users = getattr(split, f"{which}_users")
        pos_items = getattr(split, f"{which}_items")
        # Items removed from the user's ranking besides the positives themselves.
        parts = ["train", "valid"] if which == "valid" and valid_candidates == "clean" else ["train", "valid", "test"]
        all_users = np.concatenate([getattr(split, f"{p}_users") for p in parts])
        all_items = np.concatenate([getattr(split, f"{p}_items") for p in parts])
        for name, arr, bound in (
            ("users", all_users, self.n_users),
            ("items", all_items, self.n_items),
        ):
            if arr.size and (arr.min() < 0 or arr.max() >= bound):
                raise ValueError(f"split {name} ids out of range [0, {bound})")

        self._pos = _csr(pos_users, pos_items, self.n_users)
        self._seen = _csr(all_users, all_items, self.n_users)
        n_pos = self._pos[0][1:] - self._pos[0][:-1]
        self.users: torch.Tensor = torch.nonzero(n_pos > 0).squeeze(1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    # ------------------------------------------------------------------ masks
    def _csr_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device.type == "cpu":
            return (*self._pos, *self._seen)
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in (*self._pos, *self._seen))
        return self._on_device[device]

    def masks(self, users: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(positives, candidates): two (B, n_items) bool masks on ``device`` for ``users`` (B,).

        positives = the split's held-out items; candidates = the other rankable items (module
        docstring).
        """
        positives, candidates, _ = self._masks(self._check_users(users), torch.device(device))
        return positives, candidates

    def _masks(
        self, users: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`masks` of checked ``users``, and the positives' (rows, items) (row-major, as
        ``positives.nonzero`` gives them: the CSR keeps each user's items ascending)."""
        users = users.to(device)
        pos_indptr, pos_idx, seen_indptr, seen_idx = self._csr_on(device)
        shape = (users.numel(), self.n_items)
        positives = torch.zeros(shape, dtype=torch.bool, device=device)
        positive_index = _gather_rows(pos_indptr, pos_idx, users)
        positives[positive_index] = True
        candidates = torch.ones(shape, dtype=torch.bool, device=device)
        candidates[_gather_rows(seen_indptr, seen_idx, users)] = False
        return positives, candidates, positive_index

    def _check_users(self, users: torch.Tensor) -> torch.Tensor:
        if not isinstance(users, torch.Tensor) or users.dim() != 1:
            raise ValueError("users must be a 1-D integer tensor")
        if users.is_floating_point() or users.dtype == torch.bool:
            raise TypeError(f"users must be an integer tensor, got {users.dtype}")
        users = users.long()
        if users.numel() and (int(users.min()) < 0 or int(users.max()) >= self.n_users):
            raise ValueError(f"users out of range [0, {self.n_users})")
        return users

    # ---------------------------------------------------------------- metrics
    def block_metrics(self, users: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-user metrics (B,) for ``users`` (B,) given their scores (B, n_items).

        The masks are built on ``scores.device``; results are on that device too (see
        :func:`ranking_metrics`: NaN for users without positives, NaN AUC without candidates).
        """
        users = self._check_users(users)
        expected = (users.numel(), self.n_items)
        if tuple(scores.shape) != expected:
            raise ValueError(f"scores has shape {tuple(scores.shape)}, expected {expected} = (len(users), n_items)")
        positives, candidates, positive_index = self._masks(users, scores.device)
        out_dtype = _output_dtype(scores.device)
        ranks = positive_ranks(
            scores, positives, candidates, self.ties, with_items=self.beyond is not None, positive_index=positive_index
        )
        if ranks is None:
            nan = torch.full((users.numel(),), math.nan, dtype=out_dtype, device=scores.device)
            return {name: nan.clone() for name in self.metric_names}
        if self.protocol == "lambdaopt":
            metrics = lambdaopt_from_ranks(ranks, self.ks, out_dtype)
            rank = ranks.above + 1
        else:
            metrics = standard_from_ranks(ranks, self.ks, out_dtype)
            rank = ranks.list_rank
        if self.beyond is not None:
            assert ranks.items is not None
            self.beyond.observe(scores, positives | candidates, ranks.items, rank, ranks.real)
        return metrics

    # ---------------------------------------------------------- beyond accuracy
    def track_beyond(self) -> None:
        """Start a fresh beyond-accuracy accumulation (fed by every later :meth:`block_metrics`)."""
        self.beyond = BeyondAccuracy(self._item_frequency, self._user_frequency, self.ks)

    def beyond_summary(self, per_user: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The beyond-accuracy block of the blocks seen since :meth:`track_beyond` ({} if none)."""
        return {} if self.beyond is None else self.beyond.summary(per_user)
