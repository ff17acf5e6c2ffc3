"""Experiment loggers from the ``logger`` config group (CSV, none, Weights & Biases).

W&B (``logger=wandb``) never needs a server: the mode is chosen before ``wandb.init`` —
``logger.mode`` when set, else ``$WANDB_MODE``, else ``online`` when wandb's own credential lookup
finds a key (``wandb login``, ``$WANDB_API_KEY``, …) and ``offline`` otherwise. An online init
that cannot reach the server within ``logger.init_timeout`` seconds falls back to offline. The
fallback is announced once per process; the ``wandb sync DIR`` command of an offline run is
printed when the run is finished (:func:`finish_wandb`, called by the tracking callbacks).
Jobs of one Hydra multirun share a W&B group named after the sweep directory.

A run is named ``<method>/<dataset>/seed<k>`` (in a multirun followed by the job's other swept
values) and tagged ``method:…``, ``dataset:…``, ``granularity:…``, ``protocol:…`` and
``control:…``; its config is the composed Hydra config, once (:class:`ConfigOnlyWandbLogger` does not
add the module's flat hyperparameters beside it); its summary keeps the best validation value
of every ranking metric of the protocol.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from lopt.eval.metrics import metric_names

log = logging.getLogger("lopt")

WANDB_MODES = ("online", "offline", "disabled")
#: Keys of ``conf/logger/wandb.yaml`` that lopt consumes itself (not passed to ``wandb.init``).
LOPT_WANDB_KEYS = ("mode", "group", "name", "init_timeout", "watch", "watch_log_freq")
_MAX_GROUP_CHARS = 128
_announced_offline = False


class ConfigOnlyWandbLogger(WandbLogger):
    """Lightning's WandbLogger whose run config is only the composed Hydra config (given to
    ``wandb.init`` by :func:`build_wandb_logger`). Lightning would add the LightningModule's
    hyperparameters too, a flat copy of ``model.*`` (``dim`` beside ``model.dim``)."""

    def log_hyperparams(self, params: Any) -> None:
        return None


def is_wandb_config(logger_cfg: Any) -> bool:
    """True iff the ``logger`` config node builds Lightning's WandbLogger."""
    return bool(logger_cfg) and str(logger_cfg.get("_target_", "")).endswith("WandbLogger")


def wandb_credentials_found() -> tuple[bool, str | None]:
    """(found, why not) — whether wandb itself finds credentials for its configured server.

    Asks wandb's own lookup (the one ``wandb.init`` uses: ``$WANDB_API_KEY``,
    ``$WANDB_IDENTITY_TOKEN_FILE``, the settings files, the netrc entry ``wandb login`` wrote for
    the server of ``$WANDB_BASE_URL`` or the settings), without a prompt and without the network.
    """
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        settings = wandb_setup.singleton().settings
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        auth = wbauth.authenticate_session(host=host, source="lopt", prompt=False, verify=False, update_session=False)
    except Exception as error:  # noqa: BLE001 - a malformed key or base URL: say so, log offline
        return False, f"W&B credentials unusable ({error})"
    if auth is None:
        return False, f"no W&B credentials for {host} (run `wandb login`, or set WANDB_API_KEY)"
    return True, None


def resolve_wandb_mode(
    configured: str | None, env: dict[str, str] | None = None, credentials: tuple[bool, str | None] | None = None
) -> tuple[str, str | None]:
    """(mode, why the run is offline — None unless the mode is ``offline``).

    ``configured`` (``logger.mode``) wins, then ``$WANDB_MODE``; ``online`` (asked for or the
    default) without credentials becomes ``offline``. ``credentials``: the answer of
    :func:`wandb_credentials_found`, asked only when the mode would be online.
    """
    env = dict(os.environ) if env is None else env
    mode = configured or env.get("WANDB_MODE") or "online"
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode (or $WANDB_MODE) must be one of {WANDB_MODES} or null, got {mode!r}")
    if mode == "online":
        found, why = credentials if credentials is not None else wandb_credentials_found()
        return ("online", None) if found else ("offline", why)
    if mode == "offline":
        return mode, "logger.mode=offline" if configured else "WANDB_MODE=offline"
    return mode, None


def _hydra_job() -> tuple[str | None, str | None, str | None]:
    """(sweep dir, job number, the job's swept values) of the current Hydra job; all None
    outside a multirun (or outside Hydra)."""
    if not HydraConfig.initialized():
        return None, None, None
    hydra_cfg = HydraConfig.get()
    num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    mode = str(OmegaConf.select(hydra_cfg, "mode", default=""))
    if num is None or not mode.endswith("MULTIRUN"):
        return None, None, None
    sweep_dir = str(OmegaConf.select(hydra_cfg, "sweep.dir", default=""))
    job_overrides = list(OmegaConf.select(hydra_cfg, "overrides.task", default=None) or [])
    swept = swept_values(job_overrides, sweep_dir, OmegaConf.select(hydra_cfg, "sweeper.params", default=None))
    if swept is None:  # the sweep's command line is unknown: all of the job's overrides
        swept = OmegaConf.select(hydra_cfg, "job.override_dirname", default=None)
    return sweep_dir, str(num), swept


def swept_values(job_overrides: list[str], sweep_dir: str, sweeper_params: Any = None) -> str | None:
    """The job's overrides of the keys its sweep varies, e.g. ``"seed=1,model.lambda_value=0.01"``:
    keys given several values on the command line (``<sweep dir>/multirun.yaml``) or in
    ``hydra.sweeper.params``. None when multirun.yaml is absent."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    original = list(OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=None) or [])
    parsed = OverridesParser.create().parse_overrides(original)
    keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    keys |= {str(k) for k in (sweeper_params or {})}
    bare = {k.lstrip("+~") for k in keys}
    return ",".join(o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in bare)


def run_name(cfg: DictConfig, swept: str | None = None) -> str:
    """``<method>/<dataset>/seed<k>`` (e.g. ``MF-λOpt-DUI/ml100k/seed0``); ``swept``: a multirun
    job's swept values (:func:`swept_values`), whose keys other than ``seed`` are appended in
    brackets so that the jobs of a grid are told apart (``MF-λFix/ml100k/seed0 [model.lambda_value=0.01]``)."""
    name = f"{cfg.model.label}/{cfg.dataset.name}/seed{cfg.seed}"
    others = [o for o in (swept or "").split(",") if o and o.split("=", 1)[0].lstrip("+~") != "seed"]
    return f"{name} [{','.join(others)}]" if others else name


def run_tags(cfg: DictConfig) -> list[str]:
    """``method:…``, ``dataset:…``, ``granularity:…`` (when the method has one), ``protocol:…``
    and ``control:…`` of the run (W&B tags are at most 64 characters)."""
    values = {
        "method": cfg.model.label,
        "dataset": cfg.dataset.name,
        "granularity": cfg.model.get("reported_granularity"),
        "protocol": cfg.protocol.name,
        "control": OmegaConf.select(cfg, "control.name", default=None),
    }
    return [f"{key}:{value}"[:64] for key, value in values.items() if value is not None]


def sweep_group(sweep_dir: str | None) -> str | None:
    """The W&B group of a sweep: its directory (as given to Hydra), at most 128 characters."""
    if not sweep_dir:
        return None
    text = str(sweep_dir).rstrip("/")
    return text[-_MAX_GROUP_CHARS:]


def _run_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as a plain dict for W&B (unresolvable interpolations left as text)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - e.g. ${hydra:…} outside a Hydra app
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def build_wandb_logger(cfg: DictConfig, output_dir: Path) -> WandbLogger | bool:
    """A started WandbLogger for ``cfg.logger`` (see module docstring); with mode ``disabled`` it
    is W&B's no-op run and writes nothing."""
    global _announced_offline
    import wandb

    node = cfg.logger
    mode, reason = resolve_wandb_mode(node.get("mode"))
    sweep_dir, job_num, swept = _hydra_job()
    group = node.get("group") or sweep_group(sweep_dir)
    name = node.get("name") or run_name(cfg, swept if job_num is not None else None)
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in LOPT_WANDB_KEYS}
    kwargs.pop("_target_", None)
    kwargs["tags"] = [*run_tags(cfg), *(t for t in kwargs.get("tags") or [] if t not in run_tags(cfg))]
    save_dir = Path(kwargs.get("save_dir") or output_dir)
    save_dir.mkdir(parents=True, exist_ok=True)  # before init: W&B otherwise warns and probes git
    kwargs["save_dir"] = str(save_dir)
    if wandb.run is not None:  # a previous job of this process (basic launcher) left its run open
        wandb.finish()

    def make(run_mode: str) -> WandbLogger:
        settings = wandb.Settings(init_timeout=float(node.get("init_timeout") or 30.0), silent=True)
        logger_class = get_class(str(node._target_))
        logger = logger_class(
            **kwargs,
            mode=run_mode,
            group=group,
            name=name,
            config=_run_config(cfg),
            settings=settings,
            reinit="finish_previous",
        )
        # Lightning passes anonymous=None, which W&B 0.31 only warns about.
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        run = logger.experiment  # start the run now, so failures surface here and not mid-training
        if run_mode != "disabled":
            define_dashboard_metrics(run, list(cfg.eval.ks), str(cfg.protocol.name))
        return logger

    if reason is not None and not _announced_offline:
        log.warning("W&B: %s → logging offline; `wandb sync DIR` uploads it later (DIR printed at the end)", reason)
        _announced_offline = True
    try:
        return make(mode)
    except Exception as error:  # noqa: BLE001 - any init failure (timeout, auth, network) → offline
        if mode != "online":
            raise
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        log.warning("W&B: online init failed (%s) → logging offline", error)
        return make("offline")


def define_dashboard_metrics(run: Any, ks: list[int], protocol: str = "lambdaopt") -> None:
    """The run summary keeps the best validation value of each ranking metric of ``protocol``
    (:func:`lopt.eval.metrics.metric_names`: AUC, HR@K, NDCG@K; the standard protocol's MRR,
    Recall@K, Precision@K and MAP@K too), not the last; ``epoch`` (a counter) gets no panel of
    its own. ``best_epoch`` is added to the summary after the test (the tested checkpoint's
    epoch, counted from 0 as in metrics.json and W&B's own ``epoch``)."""
    for name in metric_names(ks, protocol):
        run.define_metric(f"valid/{name}", summary="max")
    run.define_metric("epoch", hidden=True)


def finish_wandb(logger: WandbLogger, exit_code: int = 0) -> Path | None:
    """Finish ``logger``'s W&B run (idempotent); print and return the offline run directory."""
    run = getattr(logger, "_experiment", None)
    if run is None or not hasattr(run, "finish"):
        return None
    offline = bool(getattr(run.settings, "_offline", False)) and run.settings.mode != "disabled"
    sync_dir = Path(run.settings.sync_dir) if offline else None
    run.finish(exit_code=exit_code)
    if sync_dir is not None and sync_dir.is_dir():
        print(f"W&B offline run saved: upload it with `wandb sync {sync_dir}`", flush=True)
    return sync_dir


def build_logger(cfg: DictConfig, output_dir: Path) -> Logger | bool:
    """The Lightning logger of ``cfg.logger`` (an empty node means none: ``False``)."""
    if not cfg.logger:
        return False
    if is_wandb_config(cfg.logger):
        return build_wandb_logger(cfg, output_dir)
    return instantiate(cfg.logger)
