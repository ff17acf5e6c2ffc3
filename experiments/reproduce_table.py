"""Results tables and the verdict from a folder of finished runs: ``lopt.analysis.table.main``
(the same as ``lopt table``); see ``python experiments/reproduce_table.py --help``."""

from __future__ import annotations

from lopt.analysis.table import main

if __name__ == "__main__":
    raise SystemExit(main())
