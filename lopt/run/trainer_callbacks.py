"""Trainer callbacks from the ``callbacks`` config group (``conf/callbacks/``).

Every node of ``cfg.callbacks`` with a ``_target_`` is instantiated into one callback, in the
order of the composed config; a null node, or a factory that returns None (early stopping with
``patience: null``, progress with ``style: none``), adds none.
"""

from __future__ import annotations

import lightning.pytorch as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig

#: The node of ``cfg.callbacks`` that selects the reported checkpoint.
CHECKPOINT_NODE = "model_checkpoint"


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
