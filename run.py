"""lopt's entry point: compose the Hydra config, then hand it to ``lopt.pipeline.run``.

python run.py                                   # MF-λOpt-DUI on the built-in synthetic data
python run.py +experiment=ml10m_dui             # one cell of the paper's table
python run.py -m +experiment=ml100k_fix         # the paper's λ grid for MF-λFix
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lopt.pipeline import run  # imported here so that --help and config errors come fast

    metrics = run(cfg)
    return metrics["valid"].get(cfg.eval.monitor)  # the value a Hydra sweeper would optimize


if __name__ == "__main__":
    main()
