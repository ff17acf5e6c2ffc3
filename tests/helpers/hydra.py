"""The project's config composed in-process for a test, through lopt's own composer
(:func:`lopt.api.compose_run_config`, what ``lopt.train`` and ``run.py`` compose)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lopt.api import compose_run_config


def compose_config(
    overrides: Iterable[str] = (),
    *,
    data_dir: Path | None = None,
    output_dir: Path | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """The config composed with ``overrides`` (Hydra's global state is left as it was).

    ``data_dir``: sets ``paths.data_dir`` to it and ``paths.cache_dir`` to ``data_dir/cache``;
    ``output_dir``: sets ``paths.output_dir``. Without ``return_hydra_config`` the ``hydra`` node
    is left out (as in the config a run receives).
    """
    extra = []
    if data_dir is not None:
        extra += [f"paths.data_dir={data_dir}", f"paths.cache_dir={Path(data_dir) / 'cache'}"]
    if output_dir is not None:
        extra.append(f"paths.output_dir={output_dir}")
    cfg = compose_run_config([*overrides, *extra])
    if return_hydra_config:
        return cfg
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
