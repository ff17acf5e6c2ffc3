"""The paper's figures from a folder of finished runs: ``lopt.analysis.figures.main`` (the same as
``lopt figures``); see ``python experiments/figures.py --help``."""

from __future__ import annotations

from lopt.analysis.figures import main

if __name__ == "__main__":
    raise SystemExit(main())
