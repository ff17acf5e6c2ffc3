"""Where a run's numbers come from: code version, library versions, device, data split, config.

:func:`collect_provenance` returns the ``provenance`` block of ``metrics.json`` (also copied
into the W&B run config by :func:`log_provenance`)::

    git_commit         HEAD of the git checkout lopt is imported from; outside one, $LOPT_GIT_COMMIT
                       (set in the Docker images at build time), else null
    git_dirty          whether that checkout has uncommitted changes (null outside one)
    versions           {lopt, torch, lightning, hydra, omegaconf}
    device             the device the model trained on, e.g. "cpu" or "cuda:0 (NVIDIA H200)"
    split_fingerprint  the prepared split's cache key (``lopt.data.cache.split_fingerprint``)
    config_hash        sha256 of the composed config as Hydra saves it (.hydra/config.yaml,
                       interpolations unresolved), seed included

Runs whose ``git_commit`` or ``split_fingerprint`` differ were made by different code or on
different data; ``lopt.analysis.results.check_provenance`` refuses to put them in one table.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

#: Distribution names of the libraries recorded under ``versions`` (key → distribution).
VERSIONED: dict[str, str] = {
    "lopt": "lopt",
    "torch": "torch",
    "lightning": "lightning",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
}
#: The commit an installed lopt was built from, read when lopt does not run from a checkout
#: (the Docker images set it from ``--build-arg GIT_COMMIT=…``).
GIT_COMMIT_ENV = "LOPT_GIT_COMMIT"
#: Seconds a git query may take before the checkout is treated as unknown.
GIT_TIMEOUT_S = 10.0

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(args: list[str], cwd: Path) -> str | None:
    """stdout of ``git ARGS`` in ``cwd``, or None when git is absent, fails or times out."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(source_root: Path = _SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(commit hash, dirty) of the git checkout holding ``source_root``; outside a work tree (an
    installed wheel, an exported archive) or without git, ($LOPT_GIT_COMMIT or None, None).
    Dirty means tracked files differ from HEAD or untracked, non-ignored files exist."""
    inside = _git(["rev-parse", "--is-inside-work-tree"], source_root)
    if inside is None or inside.strip() != "true":
        # no checkout (a wheel, a Docker image): the commit the image was built from, if named
        return os.environ.get(GIT_COMMIT_ENV) or None, None
    commit = _git(["rev-parse", "HEAD"], source_root)
    if commit is None:  # a repository without commits
        return None, None
    status = _git(["status", "--porcelain"], source_root)
    return commit.strip(), None if status is None else bool(status.strip())


def commit_label(source_root: Path = _SOURCE_ROOT) -> str:
    """:func:`git_state` as one string for records: the commit, ``-dirty`` appended when the
    checkout has changes, ``unknown`` when no commit is known."""
    commit, dirty = git_state(source_root)
    if commit is None:
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`VERSIONED` (None for one not installed as a distribution)."""
    versions: dict[str, str | None] = {}
    for key, distribution in VERSIONED.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def describe_device(device: torch.device | str) -> str:
    """``str(device)``, with the accelerator's name for CUDA devices: "cuda:0 (NVIDIA H200)"."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def config_hash(cfg: DictConfig) -> str:
    """sha256 (hex) of the canonical JSON of ``cfg`` with interpolations unresolved — the
    composed config as Hydra saves it in ``.hydra/config.yaml`` (any Hydra node is dropped)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    text = json.dumps(container, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def collect_provenance(
    cfg: DictConfig, split_fingerprint: str, device: torch.device | str, source_root: Path = _SOURCE_ROOT
) -> dict[str, Any]:
    """The ``provenance`` block of a run (see the module docstring); JSON-serializable."""
    commit, dirty = git_state(source_root)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": library_versions(),
        "device": describe_device(device),
        "split_fingerprint": split_fingerprint,
        "config_hash": config_hash(cfg),
    }


def log_provenance(loggers: list[Any], provenance: dict[str, Any]) -> None:
    """Copy ``provenance`` into the run config of every W&B logger among ``loggers``."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update({"provenance": provenance}, allow_val_change=True)
