"""One process per run directory: an exclusive, non-blocking lock held until the process ends.

The lock is an advisory ``flock`` on ``<output_dir>/.hydra/lopt.lock``; the holder writes its pid
(and host) into the file, so a second run or resume into the same directory fails at once and
names the process to wait for. The kernel releases the lock when the holder exits, however it
exits (a crash or SIGKILL included), so a stale file never blocks a later run.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = Path(".hydra") / "lopt.lock"


class RunDirectoryLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """The exclusive lock of one run directory (:meth:`acquire` / :meth:`release`, or ``with``)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """What the lock file says about its holder ("pid 1234 on host"), or "another process"."""
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        return text or "another process"

    def acquire(self) -> RunLock:
        """Take the lock at once or raise :class:`RunDirectoryLocked` naming the holder."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: a process that fails to get the lock must not erase the holder's pid.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirectoryLocked(
                    f"{self.output_dir} is in use by {self.holder()} (lock {self.path}): one process "
                    "per run directory. Wait for it to end, or choose another hydra.run.dir"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (the file stays; its content no longer matters)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
