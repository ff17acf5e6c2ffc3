"""Beyond-accuracy statistics of a test pass: catalogue coverage, popularity and concentration
of the top-K lists, and accuracy by user- and item-frequency quintile.

:class:`BeyondAccuracy` is fed block by block (the same blocks, scores and ranks as the
accuracy metrics, see :class:`lopt.eval.evaluator.RankingEvaluator`) and summarised once:

- ``coverage@K``: share of the catalogue that appears in at least one user's top K;
- ``popularity_percentile@K``: mean, over every recommended slot, of the item's training
  popularity percentile (mid-rank: 100·(#items less popular + ½·#equally popular)/n_items; 50 =
  a median item, near 100 = the head);
- ``gini@K``: Gini index of the recommendation counts over all items (0 = every item recommended
  equally often, → 1 = all slots on one item);
- ``user_quintiles``: per quintile of users by training frequency (equal-sized groups of the
  evaluated users, ties by user index, sparse → active), the mean of every per-user metric;
- ``item_quintiles``: per quintile of the catalogue by training frequency (equal-sized, ties by
  item index, long tail → head), the share of that quintile's test pairs ranked within K
  (``recall@K``).

A user's top-K list holds the items the protocol ranks for that user (positives ∪ candidates:
every item outside the user's train ∪ valid for the test split), by descending score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

N_QUANTILES = 5


def quantile_buckets(frequency: np.ndarray, n: int = N_QUANTILES) -> np.ndarray:
    """(len(frequency),) int64 bucket in [0, n): equal-sized groups by (frequency, index)."""
    order = np.lexsort((np.arange(len(frequency)), frequency))
    bucket = np.empty(len(frequency), dtype=np.int64)
    bucket[order] = (np.arange(len(frequency)) * n) // max(len(frequency), 1)
    return bucket


def popularity_percentile(frequency: np.ndarray) -> np.ndarray:
    """(n_items,) float64 mid-rank percentile of each item's training frequency, in [0, 100]."""
    sorted_freq = np.sort(frequency)
    below = np.searchsorted(sorted_freq, frequency, side="left")
    equal = np.searchsorted(sorted_freq, frequency, side="right") - below
    return 100.0 * (below + 0.5 * equal) / max(len(frequency), 1)


def gini(counts: np.ndarray) -> float:
    """Gini index of non-negative counts (NaN when all are zero)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(c), c.sum()
    if n == 0 or total == 0:
        return math.nan
    index = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * index - n - 1) * c).sum() / (n * total))


def _range(frequency: np.ndarray, bucket: np.ndarray, b: int) -> tuple[int, int]:
    members = frequency[bucket == b]
    return (int(members.min()), int(members.max())) if members.size else (0, -1)


class BeyondAccuracy:
    """Accumulates top-K recommendation counts and per-item-quintile hits over blocks.

    ``item_frequency``/``user_frequency``: (n_items,)/(n_users,) training interaction counts.
    """

    def __init__(self, item_frequency: np.ndarray, user_frequency: np.ndarray, ks: Sequence[int]) -> None:
        self.ks = tuple(ks)
        self.item_frequency = np.asarray(item_frequency, dtype=np.int64)
        self.user_frequency = np.asarray(user_frequency, dtype=np.int64)
        self.n_items = len(self.item_frequency)
        self.item_bucket = torch.from_numpy(quantile_buckets(self.item_frequency))
        self.rec_counts = torch.zeros((len(self.ks), self.n_items), dtype=torch.int64)
        self.item_hits = torch.zeros((len(self.ks), N_QUANTILES), dtype=torch.int64)
        self.item_pairs = torch.zeros(N_QUANTILES, dtype=torch.int64)
        self._bucket_on: dict[torch.device, torch.Tensor] = {}

    def observe(
        self,
        scores: torch.Tensor,
        allowed: torch.Tensor,
        items: torch.Tensor,
        rank: torch.Tensor,
        real: torch.Tensor,
    ) -> None:
        """One block: ``scores``/``allowed`` (B, n_items) (the ranked items), and per sorted
        positive its item ``items``, ``rank`` and ``real`` mask (B, W)."""
        device = scores.device
        if device not in self._bucket_on:
            self._bucket_on[device] = self.item_bucket.to(device)
        bucket_of = self._bucket_on[device]
        k_max = min(max(self.ks), self.n_items)
        top = torch.topk(scores.masked_fill(~allowed, -math.inf), k_max, dim=1, sorted=True).indices
        top_ok = allowed.gather(1, top)  # drop slots past a user's last rankable item
        pos_bucket = bucket_of[items.clamp_min(0)]
        self.item_pairs += torch.bincount(pos_bucket[real], minlength=N_QUANTILES).cpu()
        for index, k in enumerate(self.ks):
            kk = min(k, k_max)
            chosen = top[:, :kk][top_ok[:, :kk]]
            self.rec_counts[index] += torch.bincount(chosen, minlength=self.n_items).cpu()
            hit = real & (rank <= k)
            self.item_hits[index] += torch.bincount(pos_bucket[hit], minlength=N_QUANTILES).cpu()

    def summary(self, per_user: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The ``beyond`` block of metrics.json. ``per_user``: ``{"user": (n,), metric: (n,)}``
        of the same pass (user quintiles average these)."""
        out: dict[str, Any] = {}
        percentile = popularity_percentile(self.item_frequency)
        for index, k in enumerate(self.ks):
            counts = self.rec_counts[index].numpy()
            total = counts.sum()
            out[f"coverage@{k}"] = float((counts > 0).sum() / max(self.n_items, 1))
            out[f"popularity_percentile@{k}"] = float((counts * percentile).sum() / total) if total else math.nan
            out[f"gini@{k}"] = gini(counts)
        item_bucket = self.item_bucket.numpy()
        item_rows = []
        for b in range(N_QUANTILES):
            lo, hi = _range(self.item_frequency, item_bucket, b)
            pairs = int(self.item_pairs[b])
            row: dict[str, Any] = {
                "quintile": b + 1,
                "freq_lo": lo,
                "freq_hi": hi,
                "items": int((item_bucket == b).sum()),
                "test_pairs": pairs,
            }
            for index, k in enumerate(self.ks):
                row[f"recall@{k}"] = float(self.item_hits[index, b]) / pairs if pairs else math.nan
            item_rows.append(row)
        out["item_quintiles"] = item_rows

        users = per_user["user"].numpy() if "user" in per_user else np.empty(0, dtype=np.int64)
        frequency = self.user_frequency[users]
        user_bucket = quantile_buckets(frequency)
        user_rows = []
        for b in range(N_QUANTILES):
            members = user_bucket == b
            lo, hi = _range(frequency, user_bucket, b)
            row = {"quintile": b + 1, "freq_lo": lo, "freq_hi": hi, "users": int(members.sum())}
            for name, values in per_user.items():
                if name == "user":
                    continue
                v = values.numpy()[members]
                v = v[~np.isnan(v)]
                row[name] = float(v.mean()) if v.size else math.nan
            user_rows.append(row)
        out["user_quintiles"] = user_rows
        return out


def flatten_beyond(beyond: dict[str, Any], prefix: str = "test_beyond/", quintiles: bool = True) -> dict[str, float]:
    """Scalar view of a ``beyond`` block for loggers: ``coverage@20``, ``user_q1/ndcg@20``, …
    (``quintiles=False``: the catalogue-level scalars only)."""
    flat: dict[str, float] = {}
    for key, value in beyond.items():
        if isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = float(value)
    for side in ("user", "item") if quintiles else ():
        for row in beyond.get(f"{side}_quintiles", []):
            for key, value in row.items():
                if key not in ("quintile",) and isinstance(value, (int, float)):
                    flat[f"{prefix}{side}_q{row['quintile']}/{key}"] = float(value)
    return flat


def quintile_rows(beyond: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The user- and item-frequency quintile breakdown of ``beyond`` as (columns, rows):
    ``side, quintile, <the rows' keys>``, one row per side and quintile."""
    rows = [(side, row) for side in ("user", "item") for row in beyond.get(f"{side}_quintiles", [])]
    keys = list(dict.fromkeys(k for _, row in rows for k in row if k != "quintile"))
    return ["side", "quintile", *keys], [[side, row["quintile"], *(row.get(k) for k in keys)] for side, row in rows]
