"""Callbacks that record what a run does beyond its metrics (Λ statistics and trajectories), and
the per-job lifecycle of a W&B run.

Configured by the ``tracking`` group (``conf/tracking/default.yaml``); every Λ callback skips
modules without a learnable ``granularity`` (λFix, AMF, NeuMF). Work happens on logging steps,
recording steps and evaluations only: nothing here adds a host sync to an ordinary step.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import polars as pl
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lopt.eval.beyond import flatten_beyond, quintile_rows
from lopt.eval.evaluator import RankingEvaluator
from lopt.io import atomic_write
from lopt.models.granularity import LambdaGranularity
from lopt.tracking.lambda_stats import (
    SIDES,
    lambda_histogram,
    lambda_statistics,
    quantile_sample,
    side_storage,
    write_lambda,
)
from lopt.tracking.loggers import finish_wandb, is_wandb_config
from lopt.tracking.trajectories import (
    MEAN_DIM,
    TRAJECTORY_FILE,
    TRAJECTORY_SCHEMA,
    TrajectoryRecorder,
    choose_tracked,
    cut_at_step,
    thin_steps,
)
from lopt.tracking.wandb_plots import per_dim_image, trajectory_image, trajectory_table_chart
from lopt.types import PreparedSplit

log = logging.getLogger("lopt")

SNAPSHOT_DIR = "lambda_snapshots"
#: Default frequency strata (quantile ranges of the training-frequency rank): sparse, median, active.
DEFAULT_STRATA: dict[str, tuple[float, float]] = {"sparse": (0.0, 0.1), "median": (0.45, 0.55), "active": (0.9, 1.0)}


def learnable_granularity(pl_module: L.LightningModule) -> LambdaGranularity | None:
    """The module's Λ if it is learned, else None."""
    granularity = getattr(pl_module, "granularity", None)
    if isinstance(granularity, LambdaGranularity) and granularity.learnable:
        return granularity
    return None


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers whose run is live (not disabled)."""
    found = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            if getattr(getattr(run, "settings", None), "mode", "disabled") != "disabled":
                found.append(logger)
    return found


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _dashboard_stat(key: str) -> bool:
    """Λ statistics W&B plots as scalar series: each side's mean and quantiles (``lambda/user/q50``).
    The per-dimension means go to W&B as one image per evaluation instead of 2·d series."""
    leaf = key.rsplit("/", 1)[-1]
    return "/dim_mean/" not in key and (leaf == "mean" or leaf.startswith("q"))


class _EveryNSteps(L.Callback):
    """A Λ callback that acts (:meth:`_act`) every ``every_n_steps`` Θ-steps on a module with a learned Λ."""

    every_n_steps: int

    def _act(self, trainer: L.Trainer, granularity: LambdaGranularity) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        granularity = learnable_granularity(pl_module)
        if granularity is not None and _due(trainer.global_step, self.every_n_steps):
            self._act(trainer, granularity)


class LambdaStatsCallback(_EveryNSteps):
    """Λ statistics per side every ``every_n_steps`` Θ-steps (and at each epoch end) under
    ``lambda/<side>/<stat>``: all of them to the CSV logger; to W&B each side's mean and quantiles,
    a histogram of each side's λ per epoch (a histogram-over-time panel) and, per evaluation, one
    image of the per-dimension means (``lambda/per_dim``)."""

    def __init__(
        self,
        every_n_steps: int = 50,
        quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
        per_dim: bool = True,
        histogram_bins: int = 64,
        max_quantile_values: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        self.every_n_steps = int(every_n_steps)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.per_dim = per_dim
        self.histogram_bins = int(histogram_bins)
        self.max_quantile_values = int(max_quantile_values)
        self.seed = seed
        self._samples: dict[str, Any] = {}
        self._last_step = -1

    def _log_stats(self, trainer: L.Trainer, granularity: LambdaGranularity) -> None:
        step = trainer.global_step
        if step == self._last_step or not trainer.loggers:
            return
        self._last_step = step
        metrics: dict[str, float] = {}
        for side in SIDES:
            storage = side_storage(granularity, side)
            if side not in self._samples:
                self._samples[side] = quantile_sample(
                    storage.numel(), self.max_quantile_values, self.seed, storage.device
                )
            stats = lambda_statistics(storage, self.quantiles, self.per_dim, self._samples[side])
            metrics.update({f"lambda/{side}/{k}": v for k, v in stats.items()})
        dashboard = {k: v for k, v in metrics.items() if _dashboard_stat(k)}
        for logger in trainer.loggers:
            logger.log_metrics(dashboard if isinstance(logger, WandbLogger) else metrics, step=step)

    def _act(self, trainer: L.Trainer, granularity: LambdaGranularity) -> None:
        self._log_stats(trainer, granularity)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        granularity = learnable_granularity(pl_module)
        if granularity is None:
            return
        self._log_stats(trainer, granularity)
        runs = wandb_loggers(trainer)
        if not runs or self.histogram_bins <= 0:
            return
        import wandb

        payload: dict[str, Any] = {"trainer/global_step": trainer.global_step, "epoch": trainer.current_epoch}
        for side in SIDES:
            counts, edges = lambda_histogram(side_storage(granularity, side), self.histogram_bins)
            payload[f"lambda/{side}/hist"] = wandb.Histogram(np_histogram=(counts, edges))
        for logger in runs:
            logger.experiment.log(payload)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        granularity = learnable_granularity(pl_module)
        if granularity is None or not self.per_dim or trainer.sanity_checking:
            return
        runs = wandb_loggers(trainer)
        if not runs:
            return
        import wandb

        means = [side_storage(granularity, side).float().mean(0).cpu().numpy() for side in SIDES]
        width = granularity.dim
        means = [np.broadcast_to(m, (width,)) if m.shape[0] != width else m for m in means]
        image = wandb.Image(per_dim_image(means[0], means[1], trainer.global_step), caption="per-dimension mean λ")
        for logger in runs:
            logger.experiment.log({"trainer/global_step": trainer.global_step, "lambda/per_dim": image})


class LambdaTrajectoryCallback(_EveryNSteps):
    """Records the λ of tracked users/items every ``every_n_steps`` Θ-steps (plus the first and
    the last step) into ``<output_dir>/lambda_trajectories.parquet`` (rewritten atomically at
    each evaluation and at the end), and to W&B as a line plot per evaluation (one labelled line
    per tracked entity) and, at the end, one table with its line chart."""

    def __init__(
        self,
        output_dir: Path,
        split: PreparedSplit,
        n_per_stratum: int = 3,
        strata: Mapping[str, Sequence[float]] | None = None,
        every_n_steps: int = 20,
        full_vector: bool = False,
        seed: int = 0,
        wandb_max_points: int = 500,
    ) -> None:
        self.path = Path(output_dir) / TRAJECTORY_FILE
        strata = dict(DEFAULT_STRATA if strata is None else strata)
        frequencies = {"user": split.user_train_frequency(), "item": split.item_train_frequency()}
        raw_ids = {"user": split.user_ids, "item": split.item_ids}
        tracked = [choose_tracked(s, frequencies[s], raw_ids[s], strata, int(n_per_stratum), seed) for s in SIDES]
        self.recorder = TrajectoryRecorder(tracked, full_vector=bool(full_vector))
        self.every_n_steps = int(every_n_steps)
        self.wandb_max_points = int(wandb_max_points)
        self._frame = pl.DataFrame(schema=TRAJECTORY_SCHEMA)
        self._last_step = -1
        self._resumed = False

    def _record(self, trainer: L.Trainer, granularity: LambdaGranularity) -> None:
        if trainer.global_step != self._last_step:
            self.recorder.record(granularity, trainer.global_step, trainer.current_epoch)
            self._last_step = trainer.global_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed fit (load_state_dict ran) keeps what was recorded before; on_train_start
        # cuts it at the checkpoint's step, since training repeats the steps after it.
        self._frame = pl.DataFrame(schema=TRAJECTORY_SCHEMA)
        if (self._resumed or trainer.ckpt_path) and self.path.is_file():
            self._frame = pl.read_parquet(self.path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        granularity = learnable_granularity(pl_module)
        if granularity is None:
            return
        self._frame = cut_at_step(self._frame, trainer.global_step)
        self._record(trainer, granularity)

    def state_dict(self) -> dict[str, int]:
        return {"last_recorded_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed = True

    def _act(self, trainer: L.Trainer, granularity: LambdaGranularity) -> None:
        self._record(trainer, granularity)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if learnable_granularity(pl_module) is not None and not trainer.sanity_checking:
            self.flush(trainer, final=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        granularity = learnable_granularity(pl_module)
        if granularity is not None:
            self._record(trainer, granularity)
            self.flush(trainer, final=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if learnable_granularity(pl_module) is not None and self.recorder.pending:
            self.flush(trainer, final=False)

    def flush(self, trainer: L.Trainer, final: bool) -> None:
        """Append the buffered records to the parquet (atomic rewrite) and refresh W&B."""
        new = self.recorder.drain()
        if new.height == 0 and not final:
            return
        self._frame = pl.concat([self._frame, new]) if new.height else self._frame
        frame = self._frame
        atomic_write(self.path, lambda tmp: frame.write_parquet(tmp))
        for logger in wandb_loggers(trainer):
            self._log_wandb(logger, trainer.global_step, with_table=final)

    def _log_wandb(self, logger: WandbLogger, step: int, with_table: bool) -> None:
        """``lambda_traj/plot``: the trajectories so far as one image (the panel's step slider
        shows each evaluation's); at the end also ``lambda_traj/lines``, the line chart over one
        table of all recorded (thinned) points."""
        import wandb

        means = self._frame.filter(pl.col("dim") == MEAN_DIM)
        if means.height == 0:
            return
        keep = thin_steps(means["step"].to_numpy(), self.wandb_max_points)
        means = means.filter(pl.col("step").is_in(keep.tolist())).sort(
            "side", "stratum", "frequency", "entity_id", "step"
        )
        payload: dict[str, Any] = {
            "trainer/global_step": step,
            "lambda_traj/plot": wandb.Image(trajectory_image(means, step), caption="λ of tracked users and items"),
        }
        if with_table:
            payload["lambda_traj/lines"] = trajectory_table_chart(means)
        logger.experiment.log(payload)


class LambdaSnapshotCallback(L.Callback):
    """Full λU (|U|×d) and λI (|I|×d) at each evaluation in
    ``<output_dir>/lambda_snapshots/epoch_XXX.npz`` (compressed), until ``max_mb`` in all."""

    def __init__(self, output_dir: Path, max_mb: float | None = 512.0) -> None:
        self.dir = Path(output_dir) / SNAPSHOT_DIR
        self.max_bytes = None if max_mb is None else float(max_mb) * 2**20
        self._sizes: dict[str, int] = {}
        self._capped = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        granularity = learnable_granularity(pl_module)
        if granularity is None or trainer.sanity_checking or self._capped or not trainer.is_global_zero:
            return
        name = f"epoch_{trainer.current_epoch:03d}.npz"
        budget = self.max_bytes
        used = sum(size for key, size in self._sizes.items() if key != name)

        def within_budget(tmp: Path) -> None:
            if budget is not None and used + tmp.stat().st_size > budget:
                raise _OverCap(tmp.stat().st_size)

        try:
            write_lambda(
                self.dir / name,
                granularity,
                compressed=True,
                check=within_budget,
                step=np.int64(trainer.global_step),
                epoch=np.int64(trainer.current_epoch),
            )
        except _OverCap as over:
            self._capped = True
            log.warning(
                "Λ snapshots: %s (%.1f MB) would exceed tracking.snapshots.max_mb=%s; no more snapshots this run",
                name,
                over.size / 2**20,
                budget / 2**20 if budget is not None else None,
            )
            return
        self._sizes[name] = (self.dir / name).stat().st_size


class _OverCap(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class WandbRunCallback(L.Callback):
    """Per-job W&B lifecycle: optional ``wandb.watch`` of Θ at fit start; finish the run after
    the test (so the jobs of a one-process multirun get one run each) or on an exception; print
    the ``wandb sync`` command of an offline run."""

    def __init__(self, watch: str | None = None, watch_log_freq: int = 500) -> None:
        self.watch = watch
        self.watch_log_freq = int(watch_log_freq)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.watch:
            for logger in wandb_loggers(trainer):
                logger.watch(pl_module, log=self.watch, log_freq=self.watch_log_freq, log_graph=False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "test":
            for logger in wandb_loggers(trainer):  # the tested (best) checkpoint's epoch
                logger.experiment.summary["best_epoch"] = getattr(pl_module, "valid_epoch", None)
            self._finish(trainer, exit_code=0)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._finish(trainer, exit_code=1)

    @staticmethod
    def _finish(trainer: L.Trainer, exit_code: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                if exit_code == 0:
                    logger.finalize("success")  # checkpoint artifacts (log_model) before the run closes
                finish_wandb(logger, exit_code=exit_code)


def build_tracking_callbacks(cfg: DictConfig, split: PreparedSplit, output_dir: Path) -> list[L.Callback]:
    """The Λ statistics / trajectories / snapshots of ``cfg.tracking`` (when the group is present):
    every node with a ``_target_`` and ``enabled: true`` is instantiated, its constructor given the
    run's objects it names (``output_dir``, ``split``, ``seed`` = ``tracking.seed``); and the W&B run
    lifecycle with ``logger=wandb``. Callbacks skip modules without learned Λ."""
    callbacks: list[L.Callback] = []
    tracking = cfg.get("tracking")
    if tracking:
        run_objects = {"output_dir": output_dir, "split": split, "seed": int(tracking.seed)}
        for node in tracking.values():
            if not isinstance(node, DictConfig) or "_target_" not in node or not node.enabled:
                continue
            spec = OmegaConf.to_container(node, resolve=True)
            del spec["enabled"]  # type: ignore[arg-type]
            accepted = inspect.signature(get_class(node._target_)).parameters
            given = {key: value for key, value in run_objects.items() if key in accepted}
            # a partial, called with the run objects: instantiate would turn the split (a dataclass) into a config
            callbacks.append(instantiate(spec, _partial_=True, _convert_="all")(**given))
    if is_wandb_config(cfg.get("logger")):
        callbacks.append(
            WandbRunCallback(watch=cfg.logger.get("watch"), watch_log_freq=cfg.logger.get("watch_log_freq") or 500)
        )
    return callbacks


class LogBeyond(L.Callback):
    """At the end of every test pass, log the beyond-accuracy block of ``evaluator`` (the test
    evaluator, ``lopt.eval.evaluator.RankingEvaluator``) for the module's per-user test metrics,
    before loggers such as W&B close their run at test teardown."""

    def __init__(self, evaluator: RankingEvaluator) -> None:
        self.evaluator = evaluator

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_beyond(trainer.loggers, self.evaluator.beyond_summary(pl_module.test_per_user), trainer.global_step)


def log_beyond(loggers: Sequence[Any], beyond: dict[str, Any], step: int) -> None:
    """Send ``beyond`` to every Lightning logger: W&B gets the catalogue-level scalars and one
    table of the quintile breakdown (a few panels, not one per quintile and metric); other
    loggers (csv) get every scalar of :func:`lopt.eval.beyond.flatten_beyond`."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            scalars = flatten_beyond(beyond, quintiles=False)
            if scalars:
                logger.log_metrics(scalars, step=step)
            columns, rows = quintile_rows(beyond)
            if rows:
                logger.log_table("test_beyond/quintiles", columns=columns, data=rows, step=step)
        else:
            flat = flatten_beyond(beyond)
            if flat:
                logger.log_metrics(flat, step=step)
        logger.save()
