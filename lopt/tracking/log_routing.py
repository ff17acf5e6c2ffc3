"""The run's log file (``<output_dir>/<job name>.log``): the records meant for it only, and a
clear stop when it cannot be written.

While a progress bar holds the terminal, the per-epoch progress lines (:mod:`lopt.tracking.progress`)
still belong in the log file, but printed to the console they would tear the bar apart. Such
records carry ``extra=FILE_ONLY``; :class:`ConsoleFilter`, attached to the console handler by
lopt's job logging config (``conf/hydra/job_logging/lopt.yaml``), drops them there.
:class:`RunLogHandler` opens the file and, when the output directory cannot be written (no
permission, a read-only or full file system), ends the process with one ``error:`` line naming
the file instead of Hydra's "Unable to configure handler". Imports nothing heavy: Hydra loads it
while it configures logging, before anything of the run.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

#: ``extra=`` of a record that only the log file should get.
FILE_ONLY = {"lopt_console": False}


class ConsoleFilter(logging.Filter):
    """Passes every record except those logged with ``extra=FILE_ONLY``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "lopt_console", True)


#: The exit status of a run stopped by a write it cannot get past (as lopt.run.lifecycle's).
EXIT_WRITE_ERROR = 1


class RunLogHandler(logging.FileHandler):
    """``logging.FileHandler`` of the run's log; an OSError opening it (the first write of a run)
    prints one ``error:`` line naming the file and what to do, and exits (status 1)."""

    def __init__(self, filename: str, *args: object, **kwargs: object) -> None:
        try:
            super().__init__(filename, *args, **kwargs)
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            fix = "free space there" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
            print(
                f"error: {reason} writing {filename} while the run starts; nothing was written and there is "
                f"nothing to resume. {fix.capitalize()} or choose another output directory "
                "(hydra.run.dir=… / hydra.sweep.dir=…), then run the same command again",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(EXIT_WRITE_ERROR) from None
