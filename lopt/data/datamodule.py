"""The LightningDataModule: prepared split → BPR triple batches and user blocks for ranking.

Randomness is a pure function of ``(seed, epoch)``: epoch ``e`` draws its permutation and its
negatives from ``np.random.default_rng([seed, stream, e])``. A resumed run therefore re-draws
exactly the batches an uninterrupted run would see; the training loader is *stateful* in
Lightning's sense (``state_dict``/``load_state_dict``) so a mid-epoch checkpoint also resumes
at the right batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch

from lopt.data.cache import load_or_build, split_fingerprint
from lopt.data.controls import fit_arrays
from lopt.data.preprocess import prepare_split
from lopt.data.sampling import NegativeSampler
from lopt.data.split import SPLIT_RULE_VERSION
from lopt.types import PreparedSplit, Triples

log = logging.getLogger("lopt.data")

TRAIN_STREAM, VALID_STREAM = 0, 1


class TripleEpochs:
    """Shuffled (users, pos, neg) int64 triples of one split, drawn afresh for every epoch.

    Epoch ``e`` is a pure function of ``(seed, stream, e)``: a permutation and one uniform
    negative per positive (docs/protocol.md).
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        sampler: NegativeSampler,
        batch_size: int,
        seed: int,
        stream: int,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size} (config keys data.*batch_size)")
        self.users = users.astype(np.int64)
        self.items = items.astype(np.int64)
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self._cached: tuple[int, Triples] | None = None

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def epoch_triples(self, epoch: int) -> Triples:
        """All triples of one epoch, shuffled, as int64 tensors (deterministic in seed, epoch)."""
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            order = rng.permutation(len(self.users))
            users, items = self.users[order], self.items[order]
            negatives = self.sampler.sample(users, rng).astype(np.int64)
            self._cached = (epoch, (torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(negatives)))
        return self._cached[1]

    def batch(self, index: int) -> Triples:
        """Batch ``index`` counted across epochs (epoch ``index // len(self)``)."""
        epoch, position = divmod(index, len(self))
        users, items, negatives = self.epoch_triples(epoch)
        window = slice(position * self.batch_size, (position + 1) * self.batch_size)
        return users[window], items[window], negatives[window]


class TrainBatches:
    """Training iterable; one ``iter()`` is one epoch of ``{"train": triples}`` batches, plus
    ``{"valid": triples}`` (λOpt's Λ-step) when a validation stream is given.

    The epoch number comes from ``current_epoch()`` (the trainer's), and training batch ``g``
    (counted across epochs) is paired with validation batch ``g`` of the endlessly repeated,
    per-epoch reshuffled valid split — so every batch is a function of the seed and its
    position alone. Stateful in Lightning's sense: a mid-epoch checkpoint records how many
    batches of the epoch were handed out, and the resumed epoch skips them.
    """

    def __init__(self, train: TripleEpochs, valid: TripleEpochs | None, current_epoch: Callable[[], int]) -> None:
        self.train, self.valid = train, valid
        self.current_epoch = current_epoch
        self._epoch = 0
        self._handed_out = 0
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.train)

    def __iter__(self) -> Iterator[dict[str, Triples]]:
        epoch = self.current_epoch()
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        self._epoch, self._handed_out = epoch, skip
        for position in range(skip, len(self.train)):
            index = epoch * len(self.train) + position
            batch = {"train": self.train.batch(index)}
            if self.valid is not None:
                batch["valid"] = self.valid.batch(index)
            self._handed_out = position + 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches_done": self._handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"]))


class UserBlocks:
    """Iterable of ascending int64 user-id blocks (the users a ranking evaluation covers)."""

    def __init__(self, users: torch.Tensor, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError(f"block size must be positive, got {block_size} (config key data.eval_batch_users)")
        self.users, self.block_size = users, block_size

    def __len__(self) -> int:
        return -(-len(self.users) // self.block_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.split(self.users, self.block_size))


class InteractionDataModule(L.LightningDataModule):
    """Loads (or builds and caches) the prepared split and serves triple batches and user blocks.

    ``valid_triples=True`` adds validation triples to every training batch (λOpt's Λ-step).
    ``split``: ``{"kind": …, "seed": …}`` (see :func:`lopt.data.split.split_interactions`;
    None = the paper's temporal split); ``prepared``: an already prepared split to serve instead of
    reading ``source``. The evaluation blocks cover the users the valid / test evaluators rank,
    handed over by the composition root with :meth:`use_eval_users` (``lopt.pipeline.prepare_data``).
    The controls (``lopt.data.controls``): ``train_on_valid=True`` trains on train ∪ valid (no
    Λ-step possible); ``lambda_split_ratio`` trains Θ on train minus its latest part per user (the
    Λ-split), for every model, and draws the Λ-step's triples (``valid_triples``) from the Λ-split
    instead of the valid split. :meth:`stream_sizes` counts the interactions of both streams.
    """

    def __init__(
        self,
        source: Any,
        preprocess: dict[str, Any],
        cache_dir: str | Path,
        cache: bool,
        batch_size: int,
        valid_batch_size: int,
        eval_batch_users: int,
        seed: int,
        valid_triples: bool,
        split: dict[str, Any] | None = None,
        train_on_valid: bool = False,
        lambda_split_ratio: float | None = None,
        prepared: PreparedSplit | None = None,
    ) -> None:
        super().__init__()
        if train_on_valid and valid_triples:
            raise ValueError("a fit on train ∪ valid has no validation triples left for a Λ-step")
        self.source = source
        self.preprocess = dict(preprocess)
        self.cache_dir = Path(cache_dir)
        self.cache = cache
        self.batch_size = batch_size
        self.valid_batch_size = valid_batch_size
        self.eval_batch_users = eval_batch_users
        self.seed = seed
        self.valid_triples = valid_triples
        self.split_spec = {"kind": "temporal_user", **dict(split or {})}
        self.train_on_valid = train_on_valid
        self.lambda_split_ratio = lambda_split_ratio
        self.split: PreparedSplit | None = prepared
        self.eval_users: Mapping[str, torch.Tensor] = {}
        self._train_batches: TrainBatches | None = None
        self._key: dict[str, Any] | None = None

    def split_fingerprint(self) -> str:
        """Identifies the prepared split (see ``lopt.data.cache.split_fingerprint``)."""
        return split_fingerprint(self.cache_key())

    def load_split(self) -> PreparedSplit:
        """The prepared split (built once, then read from the on-disk cache)."""
        if self.split is None:
            self.split = load_or_build(
                self.cache_key(),
                lambda: prepare_split(
                    self._read_source(),
                    **self.preprocess,
                    split_kind=self.split_spec["kind"],
                    split_seed=int(self.split_spec.get("seed", 0)),
                    drop_latest=float(self.split_spec.get("drop_latest", 0.0)),
                ),
                self.cache_dir,
                enabled=self.cache,
            )
        return self.split

    def cache_key(self) -> dict[str, Any]:
        """The prepared split's cache key: source identity, preprocessing, split kind and rule."""
        split = {"kind": self.split_spec["kind"], "rule": SPLIT_RULE_VERSION}
        if split["kind"] == "random_user":
            split["seed"] = int(self.split_spec.get("seed", 0))
        if float(self.split_spec.get("drop_latest", 0.0)):  # 0 leaves the key as before the option
            split["drop_latest"] = float(self.split_spec["drop_latest"])
        if self._key is None:
            source = self.source.fingerprint(memo_dir=self.cache_dir if self.cache else None)
            # min_rating unset (null) leaves the key as it was before the option existed.
            preprocess = {k: v for k, v in self.preprocess.items() if not (k == "min_rating" and v is None)}
            self._key = {"source": source, "preprocess": preprocess, "split": split}
        return self._key

    def _read_source(self) -> pl.DataFrame:
        """The source's canonical frame, with a log line before and after (large files take a
        while, and a batch job's log should say what it is doing)."""
        name = getattr(self.source, "path", None) or type(self.source).__name__
        log.info("reading %s (the prepared split is cached afterwards)", name)
        started = time.perf_counter()
        # Ratings are read only when dataset.preprocess.min_rating filters by them.
        frame = self.source.load(rating=True) if self.preprocess.get("min_rating") is not None else self.source.load()
        log.info("read %s interactions in %.1f s", f"{frame.height:,}", time.perf_counter() - started)
        return frame

    def use_eval_users(self, users: Mapping[str, torch.Tensor]) -> None:
        """``{"valid": …, "test": …}``: the ascending users each evaluation loader covers in blocks
        (those the evaluator of that split ranks: ``RankingEvaluator.users``)."""
        self.eval_users = users

    def _eval_users(self, which: str) -> torch.Tensor:
        if which not in self.eval_users:
            raise RuntimeError(
                f"no {which!r} users to evaluate: hand the evaluators' users to datamodule.use_eval_users "
                "(lopt.pipeline.prepare_data does it)"
            )
        return self.eval_users[which]

    def setup(self, stage: str | None = None) -> None:
        split = self.load_split()
        if self._train_batches is None:
            arrays = fit_arrays(split, train_on_valid=self.train_on_valid, lambda_split_ratio=self.lambda_split_ratio)
            train_sampler = NegativeSampler(
                split.n_items, arrays.train_users, arrays.train_items, n_users=split.n_users
            )
            train = TripleEpochs(
                arrays.train_users, arrays.train_items, train_sampler, self.batch_size, self.seed, TRAIN_STREAM
            )
            valid = None
            if self.valid_triples:
                if len(arrays.lambda_users) == 0:
                    where = (
                        "the Λ-split is empty; raise control.lambda_split_ratio"
                        if self.lambda_split_ratio is not None
                        else "the valid split is empty; raise dataset.preprocess.valid_ratio"
                    )
                    raise ValueError(
                        f"λOpt needs validation triples but {where} or use a dataset with more interactions per user"
                    )
                valid_sampler = NegativeSampler(
                    split.n_items, arrays.lambda_seen_users, arrays.lambda_seen_items, n_users=split.n_users
                )
                valid = TripleEpochs(
                    arrays.lambda_users,
                    arrays.lambda_items,
                    valid_sampler,
                    self.valid_batch_size,
                    self.seed,
                    VALID_STREAM,
                )
            self._train_batches = TrainBatches(train, valid, self._current_epoch)

    def stream_sizes(self) -> tuple[int, int]:
        """(Θ-stream interactions, Λ-stream interactions) of the fit set up by :meth:`setup`; the
        second is 0 without a Λ-step."""
        batches = self.train_dataloader()
        return len(batches.train.users), 0 if batches.valid is None else len(batches.valid.users)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> TrainBatches:
        assert self._train_batches is not None, "call setup() first"
        return self._train_batches

    def val_dataloader(self) -> UserBlocks:
        return UserBlocks(self._eval_users("valid"), self.eval_batch_users)

    def test_dataloader(self) -> UserBlocks:
        return UserBlocks(self._eval_users("test"), self.eval_batch_users)
