"""One run: compose → data → module → fit → best-validation checkpoint → test → results files.

Results contract (architecture.md) in the run's output directory:
``metrics.json``, ``per_user_test.parquet``, ``lambda.npz`` (learned-Λ runs), ``checkpoints/``,
and Hydra's ``.hydra/config.yaml``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from lopt.checkpointing import CheckpointOnSignal
from lopt.data.datamodule import InteractionDataModule
from lopt.data.types import PreparedSplit
from lopt.eval.beyond import BeyondLogger
from lopt.io import atomic_write, atomic_write_json
from lopt.models.granularity import LambdaGranularity
from lopt.models.ranking_module import RankingModule
from lopt.tracking.callbacks import build_tracking_callbacks
from lopt.tracking.loggers import build_logger

log = logging.getLogger("lopt")

CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best"


def method_label(cfg: DictConfig) -> str:
    """The paper-table row of a config: "MF-λFix", "MF-λOpt-DUI", "SGDA", …"""
    name = cfg.model.name
    if name == "fix":
        return "MF-λFix"
    if name == "lambda_opt":
        return f"MF-λOpt-{cfg.granularity.name.upper()}"
    return {"sgda": "SGDA", "amf": "AMF", "neumf": "NeuMF"}.get(name, name)


def build_datamodule(cfg: DictConfig) -> InteractionDataModule:
    """The DataModule of ``cfg.dataset`` with ``cfg.data``'s batch settings."""
    return InteractionDataModule(
        source=instantiate(cfg.dataset.source),
        preprocess=OmegaConf.to_container(cfg.dataset.preprocess, resolve=True),
        cache_dir=cfg.paths.cache_dir,
        cache=cfg.data.cache,
        batch_size=cfg.data.batch_size,
        valid_batch_size=cfg.data.valid_batch_size,
        eval_batch_users=cfg.data.eval_batch_users,
        seed=cfg.seed,
        valid_triples="lambda_optimizer" in cfg,
        ks=tuple(cfg.eval.ks),
        protocol=cfg.protocol.name,
        split=OmegaConf.to_container(cfg.protocol.split, resolve=True),
        ties=cfg.eval.ties,
        valid_candidates=cfg.eval.valid_candidates,
    )


def build_module(cfg: DictConfig, n_users: int, n_items: int) -> RankingModule:
    """Instantiate ``cfg.model`` with the data sizes and the config groups it pulled in."""
    if cfg.model.name == "sgda" and cfg.optimizer._target_ != "torch.optim.SGD":
        raise ValueError(
            "model=sgda is Rendle's SGD-based adaptive regularization: add optimizer=sgd "
            f"(got optimizer._target_={cfg.optimizer._target_}), or use +experiment=<dataset>_sgda"
        )
    extra: dict[str, Any] = {"n_users": n_users, "n_items": n_items, "optimizer": instantiate(cfg.optimizer)}
    if "granularity" in cfg:
        extra["granularity"] = LambdaGranularity(
            cfg.granularity.name, n_users, n_items, cfg.model.dim, float(cfg.granularity.init)
        )
    if "lambda_optimizer" in cfg:
        extra["lambda_optimizer"] = instantiate(cfg.lambda_optimizer)
    return instantiate(cfg.model, **extra)


def build_trainer(
    cfg: DictConfig, output_dir: Path, split: PreparedSplit
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer with the best-validation checkpoint callback (also saves last.ckpt)."""
    monitor = f"valid/{cfg.eval.monitor}"
    best = ModelCheckpoint(
        dirpath=output_dir / CHECKPOINT_DIR,
        filename=BEST_NAME,
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [best, *build_tracking_callbacks(cfg, split, output_dir), BeyondLogger.callback()]
    if cfg.checkpoint.every_n_train_steps > 0:
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / CHECKPOINT_DIR,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=cfg.checkpoint.every_n_train_steps,
                enable_version_counter=False,
            )
        )
    callbacks.append(CheckpointOnSignal(output_dir / CHECKPOINT_DIR / "last.ckpt"))
    interactive = sys.stderr.isatty()
    if interactive:
        callbacks.append(RichProgressBar())
    logger = build_logger(cfg, output_dir)
    # Under SLURM, submitit requeues preempted/timed-out jobs (and train.py resumes from
    # last.ckpt); Lightning's own requeue would compete with it.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    trainer = instantiate(
        cfg.trainer,
        plugins=plugins,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(output_dir),
        check_val_every_n_epoch=cfg.eval.every_n_epochs,
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
    )
    return trainer, best


def _resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """``last.ckpt`` of this output directory when resuming: asked for (``resume=true``) or a
    SLURM restart (a requeued job re-runs with the same config and output directory and
    ``SLURM_RESTART_COUNT`` ≥ 1). A restart before the first checkpoint starts afresh."""
    last = output_dir / CHECKPOINT_DIR / "last.ckpt"
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if cfg.resume and not last.is_file():
        raise FileNotFoundError(
            f"resume=true but there is no checkpoint at {last}. Point hydra.run.dir at the "
            "output directory of the run to continue, or drop resume=true."
        )
    if (cfg.resume or restarts > 0) and last.is_file():
        log.info("resumed from %s (SLURM_RESTART_COUNT=%d)", last, restarts)
        return str(last)
    if restarts > 0:
        log.info("SLURM restart %d but no %s yet: starting from scratch", restarts, last)
    return None


def _quiet_third_party() -> None:
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


def write_results(
    cfg: DictConfig,
    output_dir: Path,
    module: RankingModule,
    datamodule: InteractionDataModule,
    best_epoch: int | None,
    train_seconds: float,
) -> dict[str, Any]:
    """Write metrics.json, per_user_test.parquet and (learned Λ) lambda.npz; return the metrics."""
    split = datamodule.load_split()
    metrics: dict[str, Any] = {
        "test": module.test_metrics,
        "valid": module.valid_metrics,
        "best_epoch": best_epoch,
        "model": cfg.model.name,
        "method": method_label(cfg),
        "granularity": cfg.granularity.name if "granularity" in cfg else ("fix" if cfg.model.name == "fix" else None),
        "lambda_value": cfg.model.get("lambda_value"),
        "dataset": cfg.dataset.name,
        "protocol": cfg.protocol.name,
        "seed": cfg.seed,
        "train_seconds": train_seconds,
        "n_users": split.n_users,
        "n_items": split.n_items,
        "output_dir": str(output_dir),
        "beyond": datamodule.test_beyond(module.test_per_user),
    }
    atomic_write_json(output_dir / "metrics.json", metrics)

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

    granularity = getattr(module, "granularity", None)
    if isinstance(granularity, LambdaGranularity) and granularity.learnable:
        arrays = {
            "user_lambda": granularity.dense_user_lambda().detach().cpu().numpy(),
            "item_lambda": granularity.dense_item_lambda().detach().cpu().numpy(),
            "granularity": np.array(granularity.name),
        }

        def _save(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(output_dir / "lambda.npz", _save)
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
    """Train, select the best-validation checkpoint, test it and write the results contract."""
    _quiet_third_party()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    split = datamodule.load_split()
    module = build_module(cfg, split.n_users, split.n_items)
    trainer, best = build_trainer(cfg, output_dir, split)

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_checkpoint(cfg, output_dir))
    train_seconds = time.perf_counter() - started
    _ensure_final_validation(trainer, module, datamodule, best)

    trainer.test(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
    metrics = write_results(cfg, output_dir, module, datamodule, module.valid_epoch, train_seconds)
    print_summary(metrics, output_dir)
    return metrics
