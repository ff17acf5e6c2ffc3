"""Compose the project's Hydra config (``conf/config.yaml``) in-process, as ``run.py`` would."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tests.helpers.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"


def compose_config(
    overrides: Iterable[str] = (),
    *,
    data_dir: Path | None = None,
    output_dir: Path | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """The config composed with ``overrides``; Hydra's global state is left as it was.

    ``data_dir``: sets ``paths.data_dir`` to it and ``paths.cache_dir`` to ``data_dir/cache``;
    ``output_dir``: sets ``paths.output_dir``.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    with open_dict(cfg):
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
            cfg.paths.cache_dir = str(Path(data_dir) / "cache")
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return cfg
