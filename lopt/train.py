"""One run: compose → data → module → fit → best-validation checkpoint → test → results files.

Results contract (docs/results.md) in the run's output directory:
``metrics.json``, ``per_user_test.parquet``, ``lambda.npz`` (learned-Λ runs), ``checkpoints/``,
and Hydra's ``.hydra/config.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import polars as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from lopt import lifecycle
from lopt.callbacks import best_checkpoint, instantiate_callbacks
from lopt.checkpointing import AtomicCheckpointIO, CheckpointOnSignal, RunInterrupted, TrainClock
from lopt.data.controls import control_changes
from lopt.data.datamodule import InteractionDataModule
from lopt.eval.evaluator import RankingEvaluator
from lopt.io import atomic_write, atomic_write_json
from lopt.models.ranking_module import RankingModule
from lopt.provenance import collect_provenance, log_provenance
from lopt.resume import record_split_fingerprint
from lopt.run.lock import RunLock
from lopt.tracking.callbacks import LogBeyond, build_tracking_callbacks, learnable_granularity
from lopt.tracking.lambda_stats import LAMBDA_FILE, write_lambda
from lopt.tracking.loggers import build_logger
from lopt.types import PreparedSplit

log = logging.getLogger("lopt")

CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best"


#: Keys of ``cfg.model`` that declare what the model needs and how it is reported; read here,
#: not constructor arguments of the module:
#: ``label`` (the paper-table row in metrics.json ``method``), ``needs_valid_triples`` (the model
#: has a Λ-step fed by validation triples), ``reported_granularity`` (metrics.json
#: ``granularity``), ``lambda_split_ratio`` (read by the datamodule under control=inner).
MODEL_DECLARATIONS = ("label", "needs_valid_triples", "reported_granularity", "lambda_split_ratio")


def build_datamodule(
    cfg: DictConfig, train_on_valid: bool = False, split: PreparedSplit | None = None
) -> InteractionDataModule:
    """The DataModule of ``cfg.dataset`` with ``cfg.data``'s batch settings; ``train_on_valid``:
    the refit control's fit on train ∪ valid (see :func:`refit_on_train_and_valid`); ``split``:
    a split prepared already from this config (the source is then not read again)."""
    return InteractionDataModule(
        source=instantiate(cfg.dataset.source),
        preprocess=OmegaConf.to_container(cfg.dataset.preprocess, resolve=True),
        cache_dir=cfg.paths.cache_dir,
        cache=cfg.data.cache,
        batch_size=cfg.data.batch_size,
        valid_batch_size=cfg.data.valid_batch_size,
        eval_batch_users=cfg.data.eval_batch_users,
        seed=cfg.seed,
        valid_triples=bool(cfg.model.needs_valid_triples) and not train_on_valid,
        split=OmegaConf.to_container(cfg.protocol.split, resolve=True),
        train_on_valid=train_on_valid,
        lambda_split_ratio=cfg.model.lambda_split_ratio if control_applies(cfg, "inner") else None,
        prepared=split,
    )


def build_evaluators(cfg: DictConfig, split: PreparedSplit) -> dict[str, RankingEvaluator]:
    """The ``"valid"`` and ``"test"`` evaluators of ``split`` under ``cfg.protocol`` and ``cfg.eval``."""
    return {
        which: RankingEvaluator(
            split,
            which,
            tuple(cfg.eval.ks),
            protocol=cfg.protocol.name,
            ties=cfg.eval.ties,
            valid_candidates=cfg.eval.valid_candidates,
        )
        for which in ("valid", "test")
    }


def prepare_data(
    cfg: DictConfig, train_on_valid: bool = False, split: PreparedSplit | None = None
) -> tuple[InteractionDataModule, PreparedSplit, dict[str, RankingEvaluator]]:
    """(set-up datamodule, its split, its evaluators): :func:`build_datamodule`, ``setup("fit")``
    and :func:`build_evaluators`, the evaluators handed to the datamodule. Hand them to the
    module too (``module.use_evaluators``) before it validates or tests."""
    datamodule = build_datamodule(cfg, train_on_valid=train_on_valid, split=split)
    datamodule.setup("fit")
    split = datamodule.load_split()
    evaluators = build_evaluators(cfg, split)
    datamodule.use_evaluators(evaluators)
    return datamodule, split, evaluators


#: Θ optimizers SGDA accepts: plain SGD, dense or row-sparse.
SGDA_OPTIMIZERS = ("torch.optim.SGD", "lopt.models.sparse_optim.RowSparseSGD")


def build_module(cfg: DictConfig, n_users: int, n_items: int) -> RankingModule:
    """Instantiate ``cfg.model`` with the data sizes and the config groups it pulled in."""
    if cfg.model.name == "sgda" and cfg.optimizer._target_ not in SGDA_OPTIMIZERS:
        raise ValueError(
            "model=sgda is Rendle's SGD-based adaptive regularization: add optimizer=sgd (or its row-sparse "
            f"form optimizer=sparse_sgd) (got optimizer._target_={cfg.optimizer._target_}), or use "
            "+experiment=<dataset>_sgda"
        )
    extra: dict[str, Any] = {"n_users": n_users, "n_items": n_items, "optimizer": instantiate(cfg.optimizer)}
    if "granularity" in cfg:
        granularity_cfg: Any = OmegaConf.to_container(cfg.granularity, resolve=True)
        granularity_cfg.pop("label", None)  # the model label's suffix (model.label), not an argument
        extra["granularity"] = instantiate(granularity_cfg, n_users=n_users, n_items=n_items, dim=cfg.model.dim)
    if "lambda_optimizer" in cfg:
        extra["lambda_optimizer"] = instantiate(cfg.lambda_optimizer)
    model_cfg: Any = OmegaConf.to_container(cfg.model, resolve=True)
    for key in MODEL_DECLARATIONS:
        model_cfg.pop(key, None)
    return instantiate(model_cfg, **extra)


def build_trainer(
    cfg: DictConfig, output_dir: Path, split: PreparedSplit, evaluators: Mapping[str, RankingEvaluator]
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer with the callbacks of ``cfg.callbacks`` (the best-validation
    checkpoint among them, returned too), the tracking callbacks, the beyond-accuracy log of
    ``evaluators["test"]`` and the signal checkpoint."""
    check_accelerator(cfg)
    # The callbacks' paths (${paths.output_dir}/checkpoints) resolve against this run's directory.
    scoped = OmegaConf.merge(cfg, {"paths": {"output_dir": str(output_dir)}})
    configured = instantiate_callbacks(scoped.get("callbacks"))
    best = best_checkpoint(configured)
    callbacks: list[L.Callback] = [
        *configured.values(),
        *build_tracking_callbacks(cfg, split, output_dir),
        LogBeyond(evaluators["test"]),
    ]
    callbacks += [CheckpointOnSignal(output_dir / CHECKPOINT_DIR / "last.ckpt"), TrainClock()]
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    logger = build_logger(cfg, output_dir)
    # Under SLURM, submitit requeues preempted/timed-out jobs (and train.py resumes from
    # last.ckpt); Lightning's own requeue would compete with it.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    plugins.append(AtomicCheckpointIO())  # temp file beside the target + fsync + rename
    trainer = instantiate(
        cfg.trainer,
        plugins=plugins,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(output_dir),
        check_val_every_n_epoch=cfg.eval.every_n_epochs,
        enable_progress_bar=has_bar,
        enable_model_summary=has_bar,
    )
    return trainer, best


def check_accelerator(cfg: DictConfig) -> None:
    """Stop early, with the fix, when ``trainer=gpu`` is asked for on a machine without a GPU."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"trainer.accelerator={accelerator} but PyTorch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). "
            "Run on the CPU with trainer=cpu, or install a CUDA build of torch (see README)."
        )


def quiet_third_party() -> None:
    """Keep the console to what matters: Lightning's banner lines and known-harmless warnings."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in (
        r".*The `srun` command is available.*",
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*does not have many workers.*",
        r".*Your `(val|test)_dataloader`'s sampler has shuffling enabled.*",
        r".*is smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _ensure_final_validation(
    trainer: L.Trainer, module: RankingModule, datamodule: InteractionDataModule, best: ModelCheckpoint
) -> None:
    """Evaluate the last epoch if the schedule skipped it, keeping it if it is the best so far."""
    last_epoch = trainer.current_epoch - 1
    if module.valid_epoch == last_epoch and best.best_model_path:
        return
    trainer.validate(module, datamodule=datamodule, verbose=False)
    module.valid_epoch = last_epoch
    score = module.valid_metrics.get(trainer.checkpoint_callback.monitor.split("/", 1)[1], math.nan)
    previous = best.best_model_score
    if not best.best_model_path or previous is None or score > float(previous):
        path = Path(best.dirpath) / f"{BEST_NAME}.ckpt"
        trainer.save_checkpoint(path)
        best.best_model_path, best.best_model_score = str(path), torch.tensor(score)


def control_applies(cfg: DictConfig, name: str) -> bool:
    """Whether the control ``name`` is the configured one (config group ``control``) and changes
    this run (:func:`lopt.data.controls.control_changes`)."""
    chosen = cfg.control.name
    applies = control_changes(chosen, learns_lambda=bool(cfg.model.needs_valid_triples))
    return chosen == name and (applies or name == "none")


def control_record(cfg: DictConfig, datamodule: InteractionDataModule) -> dict[str, Any]:
    """The ``control`` block of metrics.json: the switch, whether it changed this run, and (inner)
    how many interactions the Θ and Λ streams drew from."""
    name = cfg.control.name
    record: dict[str, Any] = {"name": name, "applied": name != "none" and control_applies(cfg, name)}
    if name == "inner" and record["applied"]:
        batches = datamodule.train_dataloader()
        record.update(
            lambda_split_ratio=float(cfg.model.lambda_split_ratio),
            theta_interactions=len(batches.train.users),
            lambda_interactions=len(batches.valid.users) if batches.valid is not None else 0,
        )
    return record


def refit_on_train_and_valid(cfg: DictConfig, output_dir: Path, epochs: int) -> tuple[RankingModule, float]:
    """The refit control's second fit: the same config and seed trained afresh on train ∪ valid for
    ``epochs`` epochs (those of the checkpoint selected on valid), without validation, then tested.
    Returns the tested module and its training seconds."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, split, evaluators = prepare_data(cfg, train_on_valid=True)
    module = build_module(cfg, split.n_users, split.n_items)
    module.use_evaluators(evaluators)
    trainer = instantiate(
        cfg.trainer,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(output_dir / "refit"),
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module, seconds


def apply_refit(cfg: DictConfig, output_dir: Path, selected: RankingModule, record: dict[str, Any]) -> RankingModule:
    """Under ``control=refit`` (models without a Λ-step): refit on train ∪ valid for the selected
    checkpoint's epochs (``best_epoch + 1``); the returned module carries the refit's test metrics
    and the selection's valid metrics. ``record`` gains the refit's epochs, seconds and the
    selected checkpoint's own test metrics. Otherwise ``selected`` is returned unchanged."""
    if not control_applies(cfg, "refit"):
        return selected
    epochs = int(selected.valid_epoch) + 1
    log.info("control=refit: training afresh on train ∪ valid for %d epochs", epochs)
    refit, seconds = refit_on_train_and_valid(cfg, output_dir, epochs)
    refit.valid_metrics, refit.valid_epoch = dict(selected.valid_metrics), selected.valid_epoch
    record.update(epochs=epochs, train_seconds=seconds, selection_test=dict(selected.test_metrics))
    return refit


def write_results(
    cfg: DictConfig,
    output_dir: Path,
    module: RankingModule,
    split: PreparedSplit,
    best_epoch: int | None,
    train_seconds: float,
    provenance: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write per_user_test.parquet, (learned Λ) lambda.npz and, last, metrics.json; return the metrics.
    ``provenance`` (``lopt.provenance.collect_provenance``) and ``control`` (:func:`control_record`)
    go into metrics.json as they are; the ``beyond`` block comes from the module's test evaluator."""
    metrics: dict[str, Any] = {
        "test": module.test_metrics,
        "valid": module.valid_metrics,
        "best_epoch": best_epoch,
        "model": cfg.model.name,
        "method": cfg.model.label,
        "granularity": cfg.model.reported_granularity,
        "lambda_value": cfg.model.get("lambda_value"),
        "dataset": cfg.dataset.name,
        "protocol": cfg.protocol.name,
        "seed": cfg.seed,
        "train_seconds": train_seconds,
        "n_users": split.n_users,
        "n_items": split.n_items,
        "output_dir": str(output_dir),
        "beyond": module.evaluators["test"].beyond_summary(module.test_per_user),
        "provenance": provenance,
        "control": control,
    }

    per_user = module.test_per_user
    users = per_user["user"].numpy()
    frame = pl.DataFrame(
        {
            "user": users,
            "raw_user_id": split.user_ids[users],
            "train_frequency": split.user_train_frequency()[users],
            **{k: v.numpy() for k, v in per_user.items() if k != "user"},
        }
    )
    atomic_write(output_dir / "per_user_test.parquet", lambda tmp: frame.write_parquet(tmp))

    granularity = learnable_granularity(module)
    if granularity is not None:
        write_lambda(output_dir / LAMBDA_FILE, granularity)
    # Last: metrics.json marks a finished run (every other result file is complete by now).
    atomic_write_json(output_dir / "metrics.json", metrics)
    return metrics


def print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    """A small results table and where the outputs went."""
    keys = list(metrics["test"].keys())
    width = max(len(k) for k in keys) if keys else 6
    lines = [
        f"{metrics['method']} on {metrics['dataset']} (seed {metrics['seed']}), best epoch {metrics['best_epoch']}",
        f"{'metric':<{width}}  {'valid':>8}  {'test':>8}",
    ]
    for key in keys:
        lines.append(f"{key:<{width}}  {metrics['valid'].get(key, math.nan):8.4f}  {metrics['test'][key]:8.4f}")
    lines.append(f"outputs: {output_dir}")
    print("\n".join(lines), flush=True)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best-validation checkpoint, test it and write the results contract.

    One process per output directory (its lock is held until the run ends). A resume writes
    nothing before its checks pass (:func:`lopt.lifecycle.start_run`, the data fingerprint);
    a signal in any phase exits 143/130 saying what is saved; a full disk or a forbidden write
    ends with one ``error:`` line (:class:`lopt.lifecycle.Phases`)."""
    quiet_third_party()
    check_accelerator(cfg)  # before any data work
    output_dir = Path(cfg.paths.output_dir)
    with RunLock(output_dir), lifecycle.Phases(output_dir) as phases:
        start: lifecycle.RunStart | None = None
        try:
            start = lifecycle.start_run(cfg, output_dir, CHECKPOINT_DIR)
            if start.nothing_to_do is not None:
                print(start.nothing_to_do, flush=True)
                return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
            metrics = _run_phases(start, output_dir, phases)
        except RunInterrupted as stop:
            if start is not None:
                start.roll_back()
            phases.announce(stop, start)
            raise
        except BaseException as raised:
            if start is not None:
                start.roll_back()
            failed = lifecycle.write_error(raised)
            if failed is not None and not isinstance(raised, SystemExit):
                raise phases.write_error(raised, failed) from raised
            raise
        start.finish()
    print_summary(metrics, output_dir)
    return metrics


def _run_phases(start: lifecycle.RunStart, output_dir: Path, phases: lifecycle.Phases) -> dict[str, Any]:
    """The run's phases, each named in :class:`lopt.lifecycle.Phases` for its signal message."""
    cfg = start.cfg
    ckpt_path = str(start.checkpoint) if start.checkpoint is not None else None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with phases.phase("data preparation"):
        datamodule, split, evaluators = prepare_data(cfg)
        lifecycle.check_split(cfg, split)
        fingerprint = datamodule.split_fingerprint()
        lifecycle.check_data(start, fingerprint)
    start.commit()  # every check passed: from here a resume changes the run directory
    record_split_fingerprint(output_dir, fingerprint)
    with phases.phase("set-up"):
        module = build_module(cfg, split.n_users, split.n_items)
        module.use_evaluators(evaluators)
        trainer, best = build_trainer(cfg, output_dir, split, evaluators)
        provenance = collect_provenance(cfg, fingerprint, trainer.strategy.root_device)
        log_provenance(trainer.loggers, provenance)

    with phases.fit(trainer, start):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = lifecycle.train_seconds(trainer)
    with phases.phase("the final validation"):
        _ensure_final_validation(trainer, module, datamodule, best)
    with phases.phase("the test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
        control = control_record(cfg, datamodule)
    with phases.phase("the refit (control=refit)"):
        module = apply_refit(cfg, output_dir, module, control)
    with phases.phase("writing the results"):
        return write_results(cfg, output_dir, module, split, module.valid_epoch, train_seconds, provenance, control)


class _CallableModule(types.ModuleType):
    """Makes ``from lopt import train; train([...])`` the Python API (:func:`lopt.api.train`)
    while ``lopt.train`` stays this module (``from lopt.train import run`` keeps working)."""

    def __call__(self, overrides: Any = (), **kwargs: Any) -> dict[str, Any]:
        from lopt.api import train

        return train(overrides, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
