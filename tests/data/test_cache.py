"""On-disk cache of prepared splits: round trip, keys, concurrency, corruption, failures."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import time
from pathlib import Path

import filelock
import numpy as np
import pytest

from lopt.data.cache import FORMAT_VERSION, cache_path, load_or_build
from lopt.types import PreparedSplit
from tests.helpers.cache import KEY, small_split


def _assert_equal(a: PreparedSplit, b: PreparedSplit) -> None:
    for name in (
        "train_users",
        "train_items",
        "valid_users",
        "valid_items",
        "test_users",
        "test_items",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.int32 and np.array_equal(x, y), name
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.item_ids.tolist() == b.item_ids.tolist()


class _Counter:
    def __init__(self, split: PreparedSplit) -> None:
        self.calls = 0
        self.split = split

    def __call__(self) -> PreparedSplit:
        self.calls += 1
        return self.split


@pytest.mark.parametrize("string_ids", [False, True])
def test_round_trip_and_second_call_skips_build(tmp_path: Path, string_ids: bool) -> None:
    build = _Counter(small_split(string_ids))
    first = load_or_build(KEY, build, tmp_path)
    second = load_or_build(dict(reversed(list(KEY.items()))), build, tmp_path)  # same key, other order
    assert build.calls == 1
    _assert_equal(first, build.split)
    _assert_equal(second, build.split)
    if string_ids:
        assert second.user_ids.dtype.kind == "U" and second.item_ids.dtype.kind == "U"
    files = list(tmp_path.glob("*.npz"))
    assert files == [cache_path(KEY, tmp_path)]
    assert f"-v{FORMAT_VERSION}-" in files[0].name
    assert not list(tmp_path.glob("*.tmp"))
    with np.load(files[0], allow_pickle=False) as data:  # readable without pickle
        assert "key_json" in data.files


def test_cache_hit_is_logged_with_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A miss logs where the split was cached; a hit logs one line naming the file it read."""
    build = _Counter(small_split())
    with caplog.at_level(logging.INFO, logger="lopt.data"):
        load_or_build(KEY, build, tmp_path)
        assert not any("read from the cache" in r.getMessage() for r in caplog.records)
        caplog.clear()
        load_or_build(KEY, build, tmp_path)
    hits = [r.getMessage() for r in caplog.records if "read from the cache" in r.getMessage()]
    assert hits == [
        f"prepared split read from the cache {cache_path(KEY, tmp_path)} (7 users, 11 items; "
        "data.cache=false rebuilds it)"
    ]
    assert build.calls == 1


def test_different_key_different_file_and_disabled_cache(tmp_path: Path) -> None:
    build = _Counter(small_split())
    load_or_build(KEY, build, tmp_path)
    load_or_build({**KEY, "min_users_per_item": 20}, build, tmp_path)
    assert build.calls == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    other = tmp_path / "off"
    load_or_build(KEY, build, other, enabled=False)
    assert build.calls == 3 and not other.exists()


def test_prefix_is_readable_and_sanitized(tmp_path: Path) -> None:
    path = cache_path(KEY, tmp_path, prefix="ml-10m/../x y")
    assert path.parent == tmp_path and path.name.startswith("ml-10m_.._x_y-v")
    with pytest.raises(TypeError, match="JSON"):
        cache_path({"bad": object()}, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_key"])
def test_corrupt_cache_file_is_rebuilt(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    build = _Counter(small_split())
    load_or_build(KEY, build, tmp_path)
    path = cache_path(KEY, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a zip" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file, but made for another key
        other = {**KEY, "source": "sha256:other"}
        load_or_build(other, _Counter(small_split(seed=1)), tmp_path)
        cache_path(other, tmp_path).replace(path)
    with caplog.at_level(logging.WARNING, logger="lopt.data"):
        again = load_or_build(KEY, build, tmp_path)
    assert build.calls == 2
    _assert_equal(again, build.split)
    assert any("rebuilding" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    _assert_equal(load_or_build(KEY, build, tmp_path), build.split)  # the rebuilt file is valid
    assert build.calls == 2


def test_exception_in_build_leaves_no_file(tmp_path: Path) -> None:
    def failing() -> PreparedSplit:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        load_or_build(KEY, failing, tmp_path)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.tmp"))
    build = _Counter(small_split())
    load_or_build(KEY, build, tmp_path)  # the lock was released
    assert build.calls == 1


def test_invalid_build_result_is_not_cached(tmp_path: Path) -> None:
    good = small_split()
    bad = PreparedSplit(
        good.train_users.astype(np.int64),
        good.train_items,
        good.valid_users,
        good.valid_items,
        good.test_users,
        good.test_items,
        good.n_users,
        good.n_items,
        good.user_ids,
        good.item_ids,
    )
    with pytest.raises(ValueError, match="train_users"):
        load_or_build(KEY, lambda: bad, tmp_path)
    assert not list(tmp_path.glob("*.npz"))


def test_lock_timeout_names_the_lock_file(tmp_path: Path) -> None:
    lock_path = Path(str(cache_path(KEY, tmp_path)) + ".lock")
    ready, release = mp.get_context("spawn").Event(), mp.get_context("spawn").Event()
    holder = mp.get_context("spawn").Process(target=_hold_lock, args=(str(lock_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(TimeoutError, match=str(lock_path).replace(".", r"\.")):
            load_or_build(KEY, _Counter(small_split()), tmp_path, lock_timeout=0.3)
    finally:
        release.set()
        holder.join(60)
    assert not list(tmp_path.glob("*.npz"))


def _hold_lock(lock_path: str, ready, release) -> None:  # noqa: ANN001 (multiprocessing events)
    with filelock.FileLock(lock_path):
        ready.set()
        release.wait(60)


# --------------------------------------------------------------------------- concurrency


def _build_with_marker(marker: str) -> PreparedSplit:
    with open(marker, "a") as handle:
        handle.write("built\n")
    time.sleep(0.5)  # keep the build window wide open for the other processes
    return small_split(string_ids=True)


def _digest(split: PreparedSplit) -> str:
    h = hashlib.sha256()
    for name in (
        "train_users",
        "train_items",
        "valid_users",
        "valid_items",
        "test_users",
        "test_items",
    ):
        h.update(getattr(split, name).tobytes())
    h.update(repr((split.n_users, split.n_items, split.user_ids.tolist(), split.item_ids.tolist())).encode())
    return h.hexdigest()


def _worker(cache_dir: str, marker: str, barrier, results) -> None:  # noqa: ANN001
    from functools import partial

    barrier.wait(60)
    split = load_or_build(KEY, partial(_build_with_marker, marker), Path(cache_dir))
    results.put(_digest(split))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    marker = tmp_path / "builds.txt"
    cache_dir = tmp_path / "cache"
    procs = [ctx.Process(target=_worker, args=(str(cache_dir), str(marker), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    digests = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert marker.read_text().splitlines() == ["built"]
    assert len(set(digests)) == 1 and digests[0] == _digest(small_split(string_ids=True))
    assert len(list(cache_dir.glob("*.npz"))) == 1 and not list(cache_dir.glob("*.tmp"))
