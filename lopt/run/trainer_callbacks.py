"""Trainer callbacks from the ``callbacks`` config group (``conf/callbacks/``).

:class:`EvaluationCheckpoint` keeps ``best.ckpt`` (by the monitored metric) and ``last.ckpt``
(at every evaluation: Lightning's ModelCheckpoint writes it only at evaluations that also wrote
``best.ckpt``); when both are due at one evaluation, ``last.ckpt`` becomes a hard link to the
``best.ckpt`` just written, one write of the state instead of two.

Every node of ``cfg.callbacks`` with a ``_target_`` is instantiated into one callback, in the
order of the composed config; a null node, or a factory that returns None (early stopping with
``patience: null``, progress with ``style: none``), adds none.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig

from lopt.io import atomic_link

#: The node of ``cfg.callbacks`` that selects the reported checkpoint.
CHECKPOINT_NODE = "model_checkpoint"


class EvaluationCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) whose ``last.ckpt`` is written at every evaluation.

    At an evaluation that improves the monitored metric, the best checkpoint has just been
    written with the state ``last.ckpt`` would hold: ``last.ckpt`` becomes a hard link to it
    (:func:`lopt.io.atomic_link`) instead of a second write, fsync and rename of the same
    state. The two files differ only in what the checkpoint records about its own writing (this
    callback's ``last_model_path``, "" at the first evaluation; the training clock's seconds, a
    few milliseconds earlier), which a resume does not depend on. Where the filesystem has no
    hard links, ``last.ckpt`` is written as usual."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._evaluated_at_step = -1  # the global step of the latest evaluation (not a sanity check)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking:
            return
        self._evaluated_at_step = trainer.global_step
        if not self._should_save_on_train_epoch_end(trainer):
            self._write_last_if_due(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning saves at the epoch's end when every epoch is evaluated once; an epoch without
        # an evaluation writes nothing.
        if self._should_save_on_train_epoch_end(trainer) and self._evaluated_at_step == trainer.global_step:
            self._write_last_if_due(trainer)

    def _write_last_if_due(self, trainer: L.Trainer) -> None:
        """last.ckpt, unless this step's state is already written: Lightning writes it only after
        an evaluation that also wrote a top-k checkpoint."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        best = self._last_checkpoint_saved
        just_saved_best = (
            self.save_last is True
            and best
            and best == self.best_model_path
            and self._last_global_step_saved == trainer.global_step
            and trainer.is_global_zero
            and trainer.world_size == 1
        )
        if not just_saved_best:
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        try:
            atomic_link(best, filepath)
        except OSError:
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        previous, self.last_model_path = self.last_model_path, filepath
        if previous and previous != filepath and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)


def early_stopping(
    monitor: str, patience: int | None, min_delta: float = 0.0, mode: str = "max"
) -> EarlyStopping | None:
    """Lightning's EarlyStopping on ``monitor``, or None (off) when ``patience`` is None."""
    if patience is None:
        return None
    if int(patience) < 1:
        raise ValueError(f"callbacks.early_stopping.patience must be ≥ 1 or null (off), got {patience}")
    return EarlyStopping(monitor=monitor, patience=int(patience), min_delta=float(min_delta), mode=mode, strict=True)


def periodic_checkpoint(dirpath: str, every_n_train_steps: int) -> ModelCheckpoint | None:
    """``last.ckpt`` in ``dirpath`` every ``every_n_train_steps`` iterations (besides the one
    written at each evaluation), or None (off) when it is 0 (``checkpoint.every_n_train_steps``)."""
    if int(every_n_train_steps) <= 0:
        return None
    return ModelCheckpoint(
        dirpath=dirpath,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=int(every_n_train_steps),
        enable_version_counter=False,
    )


def instantiate_callbacks(nodes: DictConfig | None) -> dict[str, L.Callback]:
    """{node name: callback} for the nodes of ``cfg.callbacks`` that build one."""
    built: dict[str, L.Callback] = {}
    for name, node in (nodes or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(
                f"callbacks.{name} has no _target_: each node of the callbacks group must name the "
                "callback class (or a factory) to build; choose configs with callbacks=[default,...]"
            )
        callback = instantiate(node)
        if callback is not None:
            built[str(name)] = callback
    return built


def best_checkpoint(callbacks: dict[str, L.Callback]) -> ModelCheckpoint:
    """The best-validation ModelCheckpoint of the built callbacks (clear error when missing)."""
    best = callbacks.get(CHECKPOINT_NODE)
    if not isinstance(best, ModelCheckpoint) or best.monitor is None:
        raise ValueError(
            f"callbacks.{CHECKPOINT_NODE} must be a ModelCheckpoint with a monitor: the test runs on "
            "its best checkpoint. Keep `default` in the callbacks list, e.g. callbacks=[default,early_stopping]"
        )
    return best
