"""Log records meant for the run's log file only (``<output_dir>/<job name>.log``), not the console.

While a progress bar holds the terminal, the per-epoch progress lines (:mod:`lopt.tracking.progress`)
still belong in the log file, but printed to the console they would tear the bar apart. Such
records carry ``extra=FILE_ONLY``; :class:`ConsoleFilter`, attached to the console handler by
lopt's job logging config (``conf/hydra/job_logging/lopt.yaml``), drops them there. Imports
nothing heavy: Hydra loads it while it configures logging.
"""

from __future__ import annotations

import logging

#: ``extra=`` of a record that only the log file should get.
FILE_ONLY = {"lopt_console": False}


class ConsoleFilter(logging.Filter):
    """Passes every record except those logged with ``extra=FILE_ONLY``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "lopt_console", True)
