"""The Python API: one run from a script or a notebook, with the command line's overrides.

    from lopt import train
    metrics = train(["+experiment=ml100k_dui", "seed=1"])

does what ``lopt train +experiment=ml100k_dui seed=1`` (or ``python run.py …`` in a checkout) does:
it composes lopt's configs (:func:`default_config_dir`) with the overrides, writes the results
contract into ``hydra.run.dir`` (default ``outputs/DATE/TIME`` under the current directory,
``.hydra/`` included), reads and caches data
under ``paths.data_dir`` (``$LOPT_DATA_DIR``, else ``./data``), logs to the console and to
``<output_dir>/lopt.log``, and returns the metrics of ``metrics.json``. Multirun (``-m``) stays
a command-line feature.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log
from omegaconf import DictConfig, OmegaConf, open_dict

from lopt.io import atomic_write

JOB_NAME = "lopt"


def default_config_dir() -> Path:
    """The folder of lopt's configs (``config.yaml`` and its groups).

    An installed wheel ships them inside the package, as ``lopt/conf`` (the build maps the
    repository's top-level ``conf/`` there); a source checkout (``pip install -e .``, or
    ``PYTHONPATH`` at the checkout) has them at ``<checkout>/conf``, beside the package.
    """
    packaged = importlib.resources.files("lopt") / "conf"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged.resolve()
    return Path(__file__).resolve().parents[1] / "conf"


def _config_folder(config_dir: str | Path | None, config_name: str) -> Path:
    """The absolute config folder holding ``config_name``.yaml (FileNotFoundError otherwise)."""
    folder = Path(config_dir) if config_dir is not None else default_config_dir()
    if not (folder / f"{config_name}.yaml").is_file():
        where = "the config_dir= given" if config_dir is not None else "lopt's config folder"
        raise FileNotFoundError(
            f"no {config_name}.yaml in {folder} ({where}): an installed lopt reads its configs from "
            "lopt/conf inside the package and a source checkout from <checkout>/conf; reinstall lopt "
            "(pip install lopt-*.whl, or pip install -e . in the checkout) or pass config_dir= a folder "
            f"holding {config_name}.yaml"
        )
    return folder.resolve()


def compose_run_config(
    overrides: Sequence[str] = (), config_dir: str | Path | None = None, config_name: str = "config"
) -> DictConfig:
    """The composed config of one run, its ``hydra`` node filled in as ``python run.py`` would
    (output directory from ``hydra.run.dir``, the current directory as ``hydra.runtime.cwd``)."""
    overrides = list(overrides)
    if any(o in ("-m", "--multirun") for o in overrides):
        raise ValueError(
            "lopt.train runs one job; sweep from the command line: lopt train -m ... (python run.py -m ...)"
        )
    folder = _config_folder(config_dir, config_name)
    if GlobalHydra.instance().is_initialized():  # a previous compose in this process left it set
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base="1.3", job_name=JOB_NAME):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).resolve())
        cfg.hydra.runtime.cwd = os.getcwd()
    return cfg


def _save_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them for a command-line run."""
    folder = output_dir / str(cfg.hydra.output_subdir)
    folder.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    files = {
        "config.yaml": task,
        "hydra.yaml": OmegaConf.create({"hydra": cfg.hydra}),
        "overrides.yaml": OmegaConf.create(list(cfg.hydra.overrides.task)),
    }
    for name, node in files.items():
        atomic_write(folder / name, lambda tmp, node=node: OmegaConf.save(node, tmp))


def train(
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path | None = None,
    config_name: str = "config",
    configure_logging: bool = True,
) -> dict[str, Any]:
    """Run one job (see module docstring) and return its metrics (the content of metrics.json).

    ``overrides``: the command line's overrides, e.g. ``["+experiment=ml100k_dui", "seed=1",
    "hydra.run.dir=runs/dui_1"]``. ``configure_logging=False`` leaves Python logging as it is.
    """
    from lopt.pipeline import run  # torch and Lightning load here, not on `import lopt`

    cfg = compose_run_config(overrides, config_dir, config_name)
    output_dir = Path(cfg.hydra.runtime.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if configure_logging:
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
    _save_hydra_files(cfg, output_dir)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    # During the run, Hydra is set up as in a CLI run: ${hydra:...} resolves and a resume can
    # compose the recorded overrides; afterwards the process is left as it was.
    with initialize_config_dir(
        config_dir=str(_config_folder(config_dir, config_name)), version_base="1.3", job_name=JOB_NAME
    ):
        HydraConfig.instance().set_config(cfg)
        try:
            return run(task)
        finally:
            HydraConfig.instance().cfg = None
