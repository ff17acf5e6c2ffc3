"""On-disk cache of a :class:`PreparedSplit`, safe for many processes starting together.

One ``.npz`` file per key (no pickle: raw string ids are stored as numpy unicode arrays), named
``<prefix>-v<FORMAT_VERSION>-<sha256 of the canonical key JSON>.npz``; the key JSON is stored
inside and checked on load. Writers take a ``filelock.FileLock`` on ``<file>.lock``, re-check
the file inside the lock, write a temp file in the same directory, fsync it and ``os.replace``
it into place, so readers only ever see complete files and N processes build once. A file
that fails validation (truncated, corrupt, wrong key) is logged and rebuilt.

The key holds the *content* of the data file (:func:`file_digest`, a sha256 of its bytes), not
its name, size or mtime: the same data gives the same key (and split fingerprint) on any machine,
and a file edited in place is re-read even when its size and mtime were kept. The stat fields
(size, mtime_ns, ctime_ns, inode, device) only decide whether the file must be hashed again; the
last hash is memoized in ``<cache_dir>/file-hashes/``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from lopt.io import atomic_write
from lopt.types import PreparedSplit

log = logging.getLogger("lopt.data")

#: Bumped whenever the stored layout or the meaning of a prepared split changes; part of the
#: file name, so old caches are simply not found.
FORMAT_VERSION = 3
#: Default seconds to wait for another process's build before giving up.
DEFAULT_LOCK_TIMEOUT_S = 1800.0

_SPLIT_ARRAYS = (
    "train_users",
    "train_items",
    "valid_users",
    "valid_items",
    "test_users",
    "test_items",
)
_ALL_ARRAYS = (
    *_SPLIT_ARRAYS,
    "n_users",
    "n_items",
    "user_ids",
    "item_ids",
    "key_json",
    "format_version",
)


class CacheError(ValueError):
    """A cache file is unreadable or does not hold a valid split for its key."""


#: Bytes read at a time while hashing a data file.
_HASH_CHUNK = 1 << 20
#: The stat fields that, unchanged, let a memoized hash stand (ctime changes on every write and
#: cannot be set back by the user, unlike mtime).
_STAT_FIELDS = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev")


def _hash_bytes(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 (hex) of the bytes of ``path``. With ``memo_dir``, the hash is memoized there
    against the file's stat fields (:data:`_STAT_FIELDS`) and reused while they all match; a
    memo that cannot be read or written is ignored (the file is hashed)."""
    path = Path(path).resolve()
    stat = path.stat()
    fields = {name: int(getattr(stat, name)) for name in _STAT_FIELDS}
    memo = None
    if memo_dir is not None:
        name = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        memo = Path(memo_dir) / "file-hashes" / f"{name}.json"
        try:
            saved = json.loads(memo.read_text(encoding="utf-8"))
            if saved.get("path") == str(path) and saved.get("stat") == fields and isinstance(saved.get("sha256"), str):
                return saved["sha256"]
        except (OSError, ValueError, AttributeError):
            pass
    digest = _hash_bytes(path)
    if memo is not None and {n: int(getattr(path.stat(), n)) for n in _STAT_FIELDS} == fields:
        text = json.dumps({"path": str(path), "stat": fields, "sha256": digest})
        try:
            atomic_write(memo, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as err:
            log.debug("cannot memoize the hash of %s in %s: %s", path, memo, err)
    return digest


def canonical_key_json(key: Mapping[str, Any]) -> str:
    """The canonical JSON of ``key`` (sorted keys, no spaces, ASCII); TypeError if not JSON-able."""
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cache key must be a JSON-serializable dict of str/int/float/bool/None/lists: {err}") from err


def split_fingerprint(key: Mapping[str, Any]) -> str:
    """``v<FORMAT_VERSION>-<sha256 of the canonical key JSON>``: identifies the prepared split of
    ``key`` (the data's content and reader options, the preprocessing, the split) and the meaning
    of its format; the cache file's name."""
    digest = hashlib.sha256(canonical_key_json(key).encode("ascii")).hexdigest()
    return f"v{FORMAT_VERSION}-{digest}"


def cache_path(key: Mapping[str, Any], cache_dir: Path, prefix: str = "split") -> Path:
    """Path of the cache file for ``key``: ``<prefix>-v<FORMAT_VERSION>-<sha256>.npz``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", prefix).strip("._") or "split"
    return Path(cache_dir) / f"{safe}-{split_fingerprint(key)}.npz"


def load_or_build(
    key: dict[str, Any],
    build: Callable[[], PreparedSplit],
    cache_dir: Path,
    enabled: bool = True,
    *,
    prefix: str = "split",
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> PreparedSplit:
    """Return the split cached for ``key``, building and storing it on a miss.

    ``key``: JSON-able dict identifying the split (source fingerprint + preprocess parameters).
    ``build``: called at most once per cache miss across all processes sharing ``cache_dir``;
    if it raises, nothing is written and the exception propagates. ``enabled=False`` calls
    ``build`` and touches no file. ``prefix``: readable start of the file name. Raises
    ``TimeoutError`` naming the lock file when another process holds it longer than
    ``lock_timeout`` seconds.
    """
    key_json = canonical_key_json(key)
    if not enabled:
        return build()
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _not_writable(err, cache_dir) from err
    path = cache_path(key, cache_dir, prefix)

    # Fast path: a complete file is visible (os.replace is atomic), no lock needed.
    if path.exists():
        try:
            return _loaded(path, key_json)
        except CacheError as err:
            log.debug("cache file %s failed validation before locking: %s", path, err)

    lock_path = path.with_name(path.name + ".lock")
    lock = filelock.FileLock(str(lock_path), timeout=lock_timeout)
    try:
        lock.acquire()
    except OSError as err:
        raise _not_writable(err, cache_dir) from err
    except filelock.Timeout:
        raise TimeoutError(
            f"waited {lock_timeout:g} s for the cache lock {lock_path}: another process is "
            "still building this split. Wait for it, raise the lock timeout, or disable the "
            "cache for this run"
        ) from None
    try:
        if path.exists():
            try:
                return _loaded(path, key_json)
            except CacheError as err:
                log.warning("cache file %s is invalid (%s); rebuilding it", path, err)
                path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        split = build()
        if not isinstance(split, PreparedSplit):
            raise TypeError(f"build() must return a PreparedSplit, got {type(split).__name__}")
        split = dataclasses.replace(
            split,
            user_ids=_storable_ids(split.user_ids, "user_ids"),
            item_ids=_storable_ids(split.item_ids, "item_ids"),
        )  # the same dtypes a later load returns
        _validate(split)
        try:
            _write_atomic(path, split, key_json)
        except OSError as err:
            raise _not_writable(err, cache_dir) from err
        log.info("cached prepared split at %s (build + write %.2f s)", path, time.perf_counter() - t0)
        return split
    finally:
        lock.release()


def _loaded(path: Path, key_json: str) -> PreparedSplit:
    """:func:`_load`, with one log line naming the file on a hit (a run that skips reading and
    preprocessing says which prepared split it uses)."""
    split = _load(path, key_json)
    log.info(
        "prepared split read from the cache %s (%s users, %s items; data.cache=false rebuilds it)",
        path,
        f"{split.n_users:,}",
        f"{split.n_items:,}",
    )
    return split


def _not_writable(err: OSError, cache_dir: Path) -> OSError:
    """``err``, or for a read-only/forbidden cache folder a PermissionError saying what to set."""
    if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return err
    return PermissionError(
        err.errno,
        f"cannot write the prepared-split cache in {cache_dir} ({err.strerror}). If the data "
        "folder is read-only, put the cache elsewhere with paths.cache_dir=/a/writable/folder, "
        "or skip it with data.cache=false",
    )


def _write_atomic(path: Path, split: PreparedSplit, key_json: str) -> None:
    """Write ``split`` to ``path`` through :func:`lopt.io.atomic_write` (temp file, fsync, rename)."""
    arrays: dict[str, np.ndarray] = {name: getattr(split, name) for name in _SPLIT_ARRAYS}
    arrays["n_users"] = np.asarray(split.n_users, dtype=np.int64)
    arrays["n_items"] = np.asarray(split.n_items, dtype=np.int64)
    arrays["user_ids"] = split.user_ids
    arrays["item_ids"] = split.item_ids
    arrays["key_json"] = np.asarray(key_json)
    arrays["format_version"] = np.asarray(FORMAT_VERSION, dtype=np.int64)

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, _save)


def _storable_ids(ids: np.ndarray, name: str) -> np.ndarray:
    """ids as int64 or numpy unicode (object arrays of str are converted; no pickle)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False)
    if ids.dtype.kind == "U":
        return ids
    if ids.dtype.kind == "O" and all(isinstance(x, str) for x in ids.tolist()):
        return ids.astype(str) if ids.size else np.empty(0, dtype="<U1")
    raise TypeError(f"{name} must hold integer or string raw ids, got dtype {ids.dtype}")


def _load(path: Path, key_json: str) -> PreparedSplit:
    """Read and validate a cache file; CacheError on any problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in _ALL_ARRAYS if name not in data.files]
            if missing:
                raise CacheError(f"missing arrays {missing}")
            arrays = {name: data[name] for name in _ALL_ARRAYS}
    except CacheError:
        raise
    except Exception as err:  # any read failure (truncated zip, bad header, …) means "rebuild"
        raise CacheError(f"unreadable: {type(err).__name__}: {err}") from err
    if int(arrays["format_version"]) != FORMAT_VERSION:
        raise CacheError(f"format version {int(arrays['format_version'])} != {FORMAT_VERSION}")
    if str(arrays["key_json"]) != key_json:
        raise CacheError("the embedded key differs from the requested one")
    split = PreparedSplit(
        **{name: arrays[name] for name in _SPLIT_ARRAYS},
        n_users=int(arrays["n_users"]),
        n_items=int(arrays["n_items"]),
        user_ids=arrays["user_ids"],
        item_ids=arrays["item_ids"],
    )
    try:
        _validate(split)
    except ValueError as err:
        raise CacheError(str(err)) from err
    return split


def _validate(split: PreparedSplit) -> None:
    """Check dtypes, shapes and id ranges of a split (ValueError naming the first problem)."""
    for part in ("train", "valid", "test"):
        users = getattr(split, f"{part}_users")
        items = getattr(split, f"{part}_items")
        for name, arr, bound in (
            (f"{part}_users", users, split.n_users),
            (f"{part}_items", items, split.n_items),
        ):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != 1:
                raise ValueError(f"{name} must be a 1-D int32 array")
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= bound):
                raise ValueError(f"{name} has ids outside [0, {bound})")
        if users.shape != items.shape:
            raise ValueError(f"{part}_users and {part}_items differ in length")
    for name, ids, n in (
        ("user_ids", split.user_ids, split.n_users),
        ("item_ids", split.item_ids, split.n_items),
    ):
        if ids.ndim != 1 or ids.shape[0] != n or ids.dtype.kind not in "iuUO":
            raise ValueError(f"{name} must be a 1-D id array of length {n}")
