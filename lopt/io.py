"""Atomic file writes: a reader never sees a half-written file (temp file + fsync + rename).

The one helper every writer of the project uses (results, cache files, extracted downloads,
checkpoints): the temp file lives in the target's own directory, so the final ``os.replace`` is
a rename on one filesystem (never a copy across filesystems), and it is fsynced first, so a
crash leaves either the old file or the complete new one. The file gets the usual mode under
the user's umask (``0666 & ~umask``), so others sharing a folder can read it when the umask
allows it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_space(path: Path, code: int) -> OSError:
    return OSError(
        code,
        f"no space left on the device while writing {path} ({os.strerror(code)}); {path} was left "
        "as it was. Free space there (or point the run at another folder) and run again",
        str(path),
    )


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (from a writer that wraps OS errors in its own type) was a full disk."""
    text = str(err).lower()
    if "no space left" in text or "os error 28" in text or "disk quota exceeded" in text:
        return True
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):
        return False


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, rename it over ``path``.

    On any exception the temp file is removed and ``path`` is left untouched (a previous
    version stays complete). A full disk (ENOSPC/EDQUOT) is re-raised as an OSError naming
    ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, err.errno) from err
        raise
    except Exception as err:
        # Writers such as polars and torch report a full disk in their own exception type;
        # their message (or the disk's free space) says when it was one.
        full = _out_of_space(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise _no_space(path, errno.ENOSPC) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_link(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` a hard link to ``source`` (same directory tree, same filesystem), replacing
    ``path`` in one rename: a reader sees the old file or ``source``'s, never neither. The two
    names then share one file until either is replaced by a rename (as :func:`atomic_write`
    does), which leaves the other as it was. OSError where the filesystem has no hard links (the
    caller writes the file instead); nothing is left behind."""
    source, path = Path(source), Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (NaN allowed, as JSON's ``NaN``)."""
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
