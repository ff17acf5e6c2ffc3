"""Experiment loggers from the ``logger`` config group (CSV, none, Weights & Biases).

W&B (``logger=wandb``) never needs a server: the mode is chosen before ``wandb.init`` —
``logger.mode`` when set, else ``$WANDB_MODE``, else ``online`` when an API key is configured
(``$WANDB_API_KEY`` or a netrc entry for the W&B host) and ``offline`` otherwise. An online init
that cannot reach the server within ``logger.init_timeout`` seconds falls back to offline. The
fallback is announced once per process; the ``wandb sync DIR`` command of an offline run is
printed when the run is finished (:func:`finish_wandb`, called by the tracking callbacks).
Jobs of one Hydra multirun share a W&B group named after the sweep directory.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("lopt")

WANDB_MODES = ("online", "offline", "disabled")
#: Keys of ``conf/logger/wandb.yaml`` that lopt consumes itself (not passed to ``wandb.init``).
LOPT_WANDB_KEYS = ("mode", "group", "name", "init_timeout", "watch", "watch_log_freq")
_MAX_GROUP_CHARS = 128
_announced_offline = False


def is_wandb_config(logger_cfg: Any) -> bool:
    """True iff the ``logger`` config node builds Lightning's WandbLogger."""
    return bool(logger_cfg) and str(logger_cfg.get("_target_", "")).endswith("WandbLogger")


def wandb_api_key_configured(env: dict[str, str] | None = None) -> bool:
    """Whether W&B would find credentials: ``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE`` or a
    netrc entry (``$NETRC`` or ``~/.netrc``) for the host of ``$WANDB_BASE_URL`` (api.wandb.ai)."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = Path(env.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not path.is_file():
        return False
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(configured: str | None, env: dict[str, str] | None = None) -> tuple[str, str | None]:
    """(mode, why the run is offline — None unless the mode is ``offline``).

    ``configured`` (``logger.mode``) wins, then ``$WANDB_MODE``; ``online`` (asked for or the
    default) without credentials becomes ``offline``.
    """
    env = dict(os.environ) if env is None else env
    mode = configured or env.get("WANDB_MODE") or "online"
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode (or $WANDB_MODE) must be one of {WANDB_MODES} or null, got {mode!r}")
    if mode == "online" and not wandb_api_key_configured(env):
        return "offline", "no W&B API key (WANDB_API_KEY or a netrc entry)"
    if mode == "offline":
        return mode, "logger.mode=offline" if configured else "WANDB_MODE=offline"
    return mode, None


def _hydra_job() -> tuple[str | None, str | None, str | None]:
    """(sweep dir, job number, override dirname) of the current Hydra job; sweep dir/job number
    are None outside a multirun (or outside Hydra)."""
    if not HydraConfig.initialized():
        return None, None, None
    hydra_cfg = HydraConfig.get()
    num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    mode = str(OmegaConf.select(hydra_cfg, "mode", default=""))
    overrides = OmegaConf.select(hydra_cfg, "job.override_dirname", default=None)
    if num is None or not mode.endswith("MULTIRUN"):
        return None, None, overrides
    return str(OmegaConf.select(hydra_cfg, "sweep.dir", default="")), str(num), overrides


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
    sweep_dir, job_num, overrides = _hydra_job()
    group = node.get("group") or sweep_group(sweep_dir)
    name = node.get("name")
    if name is None and job_num is not None:
        name = f"{job_num}:{overrides}" if overrides else job_num
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in LOPT_WANDB_KEYS}
    kwargs.pop("_target_", None)
    save_dir = Path(kwargs.get("save_dir") or output_dir)
    save_dir.mkdir(parents=True, exist_ok=True)  # before init: W&B otherwise warns and probes git
    kwargs["save_dir"] = str(save_dir)
    if wandb.run is not None:  # a previous job of this process (basic launcher) left its run open
        wandb.finish()

    def make(run_mode: str) -> WandbLogger:
        settings = wandb.Settings(init_timeout=float(node.get("init_timeout") or 30.0), silent=True)
        logger_class = get_class(str(node._target_))
        logger = logger_class(
            **kwargs, mode=run_mode, group=group, name=name, config=_run_config(cfg), settings=settings,
            reinit="finish_previous",
        )
        # Lightning passes anonymous=None, which W&B 0.31 only warns about.
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        _ = logger.experiment  # start the run now, so failures surface here and not mid-training
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
