"""One run: compose → data → module → fit → best-validation checkpoint → test → results files.

Results contract (docs/results.md) in the run's output directory:
``metrics.json``, ``per_user_test.parquet``, ``lambda.npz`` (learned-Λ runs), ``checkpoints/``,
and Hydra's ``.hydra/config.yaml``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import polars as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from lopt.data.controls import THETA_DATA, ControlSettings, blocks_served, control_block, parse_control
from lopt.data.datamodule import InteractionDataModule
from lopt.eval.evaluator import RankingEvaluator
from lopt.io import atomic_write, atomic_write_json
from lopt.modules.fix import MFBPRModule
from lopt.modules.ranking import RankingModule
from lopt.run import lifecycle
from lopt.run.checkpoint_keep import prune_checkpoints
from lopt.run.checkpointing import AtomicCheckpointIO, CheckpointOnSignal, RunInterrupted, TrainClock
from lopt.run.lock import RunLock
from lopt.run.provenance import collect_provenance, log_provenance
from lopt.run.resume import record_split_fingerprint
from lopt.run.trainer_callbacks import best_checkpoint, instantiate_callbacks
from lopt.tracking.callbacks import LogBeyond, build_tracking_callbacks, learnable_granularity
from lopt.tracking.lambda_replay import EpochLambdaSnapshots, LambdaReplay, epoch_snapshot_path
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
#: ``granularity``).
MODEL_DECLARATIONS = ("label", "needs_valid_triples", "reported_granularity")


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
        lambda_split_ratio=control_settings(cfg).lambda_split_ratio if not train_on_valid else None,
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
    and :func:`build_evaluators`; the datamodule gets the users each evaluator ranks (its
    evaluation blocks). The evaluators go to the module (``module.use_evaluators``), the one
    place that evaluates, before it validates or tests."""
    datamodule = build_datamodule(cfg, train_on_valid=train_on_valid, split=split)
    datamodule.setup("fit")
    split = datamodule.load_split()
    evaluators = build_evaluators(cfg, split)
    datamodule.use_eval_users({which: evaluator.users for which, evaluator in evaluators.items()})
    return datamodule, split, evaluators


#: Θ optimizers SGDA accepts: plain SGD, dense or row-sparse.
SGDA_OPTIMIZERS = ("torch.optim.SGD", "lopt.optim.row_sparse.RowSparseSGD")


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
    cfg: DictConfig,
    output_dir: Path,
    split: PreparedSplit,
    evaluators: Mapping[str, RankingEvaluator],
    extra_callbacks: list[L.Callback] | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer with the callbacks of ``cfg.callbacks`` (the best-validation
    checkpoint among them, returned too), the tracking callbacks, ``extra_callbacks`` (those a
    control needs, :func:`control_callbacks`), the beyond-accuracy log of ``evaluators["test"]``
    and the signal checkpoint."""
    check_accelerator(cfg)
    # The callbacks' paths (${paths.output_dir}/checkpoints) resolve against this run's directory.
    scoped = OmegaConf.merge(cfg, {"paths": {"output_dir": str(output_dir)}})
    configured = instantiate_callbacks(scoped.get("callbacks"))
    best = best_checkpoint(configured)
    callbacks: list[L.Callback] = [
        *configured.values(),
        *build_tracking_callbacks(cfg, split, output_dir),
        *(extra_callbacks or []),
        LogBeyond(evaluators["test"]),
    ]
    callbacks += [CheckpointOnSignal(output_dir / CHECKPOINT_DIR / "last.ckpt"), TrainClock()]
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    logger = build_logger(cfg, output_dir)
    # Under SLURM, submitit requeues preempted/timed-out jobs (and train.py resumes from
    # last.ckpt); Lightning's own requeue would compete with it.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    plugins.append(AtomicCheckpointIO())  # temp file beside the target + fsync + rename
    trainer = instantiate_trainer(
        cfg,
        plugins=plugins,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(output_dir),
        check_val_every_n_epoch=cfg.eval.every_n_epochs,
        enable_progress_bar=has_bar,
        enable_model_summary=has_bar,
    )
    return trainer, best


def instantiate_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` (with ``overrides``), with the determinism
    settings applied: every Trainer of a run is built here."""
    trainer = instantiate(cfg.trainer, **overrides)
    apply_determinism(cfg)
    return trainer


def apply_determinism(cfg: DictConfig) -> None:
    """After a Trainer is built (``trainer.deterministic`` sets torch's deterministic mode, and
    with it the fill of new tensors' memory): keep or drop that fill as
    ``determinism.fill_uninitialized_memory`` says. Process-wide, like the deterministic mode."""
    torch.utils.deterministic.fill_uninitialized_memory = bool(cfg.determinism.fill_uninitialized_memory)


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


def control_settings(cfg: DictConfig) -> ControlSettings:
    """The checked ``control`` group of ``cfg`` (:func:`lopt.data.controls.parse_control`)."""
    return parse_control(OmegaConf.to_container(cfg.control, resolve=True))


def learns_lambda(cfg: DictConfig) -> bool:
    """Whether ``cfg.model`` has a Λ-step (λOpt, SGDA): its declared ``needs_valid_triples``."""
    return bool(cfg.model.needs_valid_triples)


def control_applies(cfg: DictConfig, name: str) -> bool:
    """Whether the control ``name`` is the configured one (config group ``control``). The controls
    are matched (:func:`lopt.data.controls.matched_control_changes`): each changes every model."""
    return control_settings(cfg).name == name


def replays_lambda(cfg: DictConfig) -> bool:
    """Whether this run's refit replays Λ along the first fit's per-epoch snapshots
    (``control=refit control.lambda=trajectory`` on a model with a Λ-step)."""
    settings = control_settings(cfg)
    return settings.name == "refit" and settings.lambda_mode == "trajectory" and learns_lambda(cfg)


def control_callbacks(cfg: DictConfig, output_dir: Path) -> list[L.Callback]:
    """Callbacks of the first fit that a control needs: the per-epoch Λ snapshots a trajectory
    refit replays."""
    return [EpochLambdaSnapshots(output_dir)] if replays_lambda(cfg) else []


def control_record(cfg: DictConfig, datamodule: InteractionDataModule) -> dict[str, Any]:
    """The ``control`` block of metrics.json: the switch and its settings, the table block the run
    belongs to (``block``) and the blocks it stands for unchanged (``serves``), ``matched`` (the
    controls change every method alike), ``borrowed`` (false: the run ran under this control; a
    record copied into another block it serves says true), and what the fit trained on: the Θ
    stream's data and interactions and the Λ stream's (0 without a Λ-step). A refit adds its own
    counts in :func:`apply_refit`."""
    settings = control_settings(cfg)
    theta, lam = datamodule.stream_sizes()
    record: dict[str, Any] = {
        "name": settings.name,
        "applied": settings.name != "none",
        "matched": True,
        "block": control_block(settings),
        "serves": list(blocks_served(settings, learns_lambda(cfg))),
        "borrowed": False,
        "theta_data": THETA_DATA["inner" if settings.name == "inner" else "none"],
        "theta_interactions": theta,
        "lambda_data": (("Λ-split" if settings.name == "inner" else "valid") if learns_lambda(cfg) else None),
        "lambda_interactions": lam,
    }
    if settings.name == "inner":
        record["lambda_split_ratio"] = settings.lambda_split_ratio
    if settings.name == "refit":
        record["lambda"] = settings.lambda_mode if learns_lambda(cfg) else None
    return record


def build_refit_module(cfg: DictConfig, n_users: int, n_items: int, selected: RankingModule) -> RankingModule:
    """The module of the refit: ``cfg.model`` afresh for a model without a Λ-step; for one with a
    Λ-step, MF-BPR with the same Θ settings whose Λ is a frozen copy of the selected checkpoint's
    (no Λ-step, no Λ parameter that requires a gradient). Built right after seeding, so Θ starts
    from the first fit's initialization either way."""
    if not learns_lambda(cfg):
        return build_module(cfg, n_users, n_items)
    frozen = copy.deepcopy(learnable_granularity(selected))
    if frozen is None:
        raise RuntimeError(f"model {cfg.model.name} declares a Λ-step but its module has no learned granularity")
    frozen.requires_grad_(False)
    model = cfg.model
    return MFBPRModule(
        n_users,
        n_items,
        model.dim,
        model.init_std,
        instantiate(cfg.optimizer),
        frozen,
        penalty_scope=model.penalty_scope,
        penalty_scale=model.penalty_scale,
        grad_clip_norm=model.grad_clip_norm,
        name=model.name,
    )


def refit_on_train_and_valid(
    cfg: DictConfig, output_dir: Path, epochs: int, selected: RankingModule
) -> tuple[RankingModule, dict[str, Any]]:
    """The refit control's second fit: the same config and seed trained afresh on train ∪ valid for
    ``epochs`` epochs (those of the checkpoint selected on valid), without validation, then tested;
    a model with a Λ-step keeps ``selected``'s Λ frozen, or (``control.lambda=trajectory``) replays
    the first fit's per-epoch Λ. Returns the tested module and what the refit did: the epochs and
    Θ-steps it trained (counted by the trainer), its Θ interactions, seconds, and the replayed
    snapshots."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, split, evaluators = prepare_data(cfg, train_on_valid=True)
    module = build_refit_module(cfg, split.n_users, split.n_items, selected)
    module.use_evaluators(evaluators)
    callbacks: list[L.Callback] = []
    if replays_lambda(cfg):
        snapshots = [epoch_snapshot_path(output_dir, e) for e in range(epochs)]
        missing = [p.name for p in snapshots if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"control.lambda=trajectory: Λ snapshots {missing} are missing in "
                f"{output_dir / snapshots[0].parent.name} (they are written during the first fit of such a run)"
            )
        callbacks.append(LambdaReplay(snapshots))
    trainer = instantiate_trainer(
        cfg,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(output_dir / "refit"),
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    trainer.test(module, datamodule=datamodule, verbose=False)
    theta, _ = datamodule.stream_sizes()
    done: dict[str, Any] = {
        "epochs_trained": int(trainer.current_epoch),
        "steps_trained": int(trainer.global_step),
        "theta_data": THETA_DATA["refit"],
        "theta_interactions": theta,
        "train_seconds": seconds,
    }
    if callbacks:
        done["lambda_snapshots"] = [p.name for p in callbacks[0].loaded]
    return module, done


def apply_refit(cfg: DictConfig, output_dir: Path, selected: RankingModule, record: dict[str, Any]) -> RankingModule:
    """Under ``control=refit`` (every model): refit on train ∪ valid for the selected checkpoint's
    epochs (``best_epoch + 1``); the returned module carries the refit's test metrics and the
    selection's valid metrics. ``record`` gains ``epochs`` (the selected count), what the refit
    trained (``epochs_trained``, ``steps_trained``, its data), its seconds and the selected
    checkpoint's own test metrics (``selection_test``); the first fit's data move to
    ``selection_theta_*``. Otherwise ``selected`` is returned unchanged."""
    if not control_applies(cfg, "refit"):
        return selected
    epochs = int(selected.valid_epoch) + 1
    log.info("control=refit: training afresh on train ∪ valid for %d epochs", epochs)
    refit, done = refit_on_train_and_valid(cfg, output_dir, epochs, selected)
    if done["epochs_trained"] != epochs:
        trained = done["epochs_trained"]
        raise RuntimeError(f"control=refit: the refit trained {trained} epochs, not the selected {epochs}")
    refit.valid_metrics, refit.valid_epoch = dict(selected.valid_metrics), selected.valid_epoch
    record.update(
        selection_theta_data=record["theta_data"],
        selection_theta_interactions=record["theta_interactions"],
        epochs=epochs,
        selection_test=dict(selected.test_metrics),
        **done,
    )
    return refit


def stopping_record(trainer: L.Trainer) -> dict[str, Any]:
    """How the (first) fit ended: ``epochs_trained`` (every epoch, resumed segments included),
    ``max_epochs`` (the cap) and ``stopped_early`` (early stopping ended it before the cap)."""
    epochs = int(trainer.current_epoch)
    early = any(isinstance(c, EarlyStopping) for c in trainer.callbacks)
    return {
        "epochs_trained": int(trainer.current_epoch),
        "max_epochs": int(trainer.max_epochs),
        "stopped_early": bool(early and epochs < int(trainer.max_epochs)),
    }


def write_results(
    cfg: DictConfig,
    output_dir: Path,
    module: RankingModule,
    split: PreparedSplit,
    best_epoch: int | None,
    train_seconds: float,
    provenance: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
    stopping: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write per_user_test.parquet, (learned Λ) lambda.npz and, last, metrics.json; return the metrics.
    ``provenance`` (``lopt.run.provenance.collect_provenance``) and ``control`` (:func:`control_record`)
    go into metrics.json as they are, ``stopping`` (:func:`stopping_record`) at its top level; the
    ``beyond`` block comes from the module's test evaluator."""
    metrics: dict[str, Any] = {
        "test": module.test_metrics,
        "valid": module.valid_metrics,
        "best_epoch": best_epoch,
        **(stopping or {}),
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
    """A small results table and where the outputs went. The best epoch is counted from 1, as
    in the progress bar and the log (metrics.json's ``best_epoch`` counts from 0)."""
    keys = list(metrics["test"].keys())
    width = max(len(k) for k in keys) if keys else 6
    best = metrics["best_epoch"]
    lines = [
        f"{metrics['method']} on {metrics['dataset']} (seed {metrics['seed']}), "
        f"best epoch {best + 1 if best is not None else 'n/a'}",
        f"{'metric':<{width}}  {'valid':>8}  {'test':>8}",
    ]
    for key in keys:
        lines.append(f"{key:<{width}}  {metrics['valid'].get(key, math.nan):8.4f}  {metrics['test'][key]:8.4f}")
    lines.append(f"outputs: {output_dir}")
    print("\n".join(lines), flush=True)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best-validation checkpoint, test it and write the results contract.

    One process per output directory (its lock is held until the run ends). A resume writes
    nothing before its checks pass (:func:`lopt.run.lifecycle.start_run`, the data fingerprint);
    a signal in any phase exits 143/130 saying what is saved; a full disk or a forbidden write
    ends with one ``error:`` line (:class:`lopt.run.lifecycle.Phases`)."""
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
    """The run's phases, each named in :class:`lopt.run.lifecycle.Phases` for its signal message."""
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
        trainer, best = build_trainer(cfg, output_dir, split, evaluators, control_callbacks(cfg, output_dir))
        provenance = collect_provenance(cfg, fingerprint, trainer.strategy.root_device)
        log_provenance(trainer.loggers, provenance)

    with phases.fit(trainer, start):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = lifecycle.train_seconds(trainer)
    with phases.phase("the final validation"):
        _ensure_final_validation(trainer, module, datamodule, best)
    with phases.phase("the test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
        control, stopping = control_record(cfg, datamodule), stopping_record(trainer)
    with phases.phase("the refit (control=refit)"):
        module = apply_refit(cfg, output_dir, module, control)
    with phases.phase("writing the results"):
        metrics = write_results(
            cfg, output_dir, module, split, module.valid_epoch, train_seconds, provenance, control, stopping
        )
        prune_checkpoints(output_dir / CHECKPOINT_DIR, OmegaConf.select(cfg, "checkpoint.keep", default="auto"))
    return metrics
