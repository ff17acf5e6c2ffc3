"""Data faults: a missing, a folder, an empty or unreadable data file is named and never
downloaded under a user's name; the download's lock; cache files under the umask and a read-only
cache folder."""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from pathlib import Path

import pytest

from lopt.data import download
from lopt.data.cache import cache_path, load_or_build
from lopt.data.sources import MovieLensSource
from tests.helpers.cli import run_cli
from tests.helpers.faults import (
    U_DATA,
    assert_fails_before_training,
)


@pytest.fixture
def served_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """GroupLens replaced by a local ml-100k zip; returns the list of folders fetched into."""
    zip_path = tmp_path / "served" / "ml-100k.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("ml-100k/u.data", U_DATA)
    calls: list[Path] = []

    def fake_fetch(spec, folder: Path) -> str:
        calls.append(folder)
        return str(zip_path)

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    return calls


def _ml100k(tmp_path: Path, path: Path | None, **kw) -> MovieLensSource:
    return MovieLensSource(
        path,
        "tab",
        archive="ml-100k",
        default_path=tmp_path / "data" / "ml-100k" / "u.data",
        lock_dir=tmp_path / "cache",
        **kw,
    )


def test_missing_user_path_is_named_and_never_downloaded(tmp_path: Path, served_archive: list) -> None:
    typo = tmp_path / "mydata" / "u.dat"
    with pytest.raises(FileNotFoundError, match=str(typo)):
        _ml100k(tmp_path, typo).fingerprint()
    assert served_archive == [] and not typo.parent.exists()


def test_directory_as_path_is_named_before_any_download(tmp_path: Path, served_archive: list) -> None:
    with pytest.raises(IsADirectoryError, match=rf"dataset\.source\.path={tmp_path}.* is a directory"):
        _ml100k(tmp_path, tmp_path).load()
    assert served_archive == []


def test_empty_file_is_named(tmp_path: Path, served_archive: list) -> None:
    empty = tmp_path / "u.data"
    empty.touch()
    with pytest.raises(ValueError, match=rf"{empty} \(dataset\.source\.path\) is empty"):
        _ml100k(tmp_path, empty).load()
    assert served_archive == []


def test_unreadable_file_is_named(tmp_path: Path, served_archive: list, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "u.data"
    data.write_text(U_DATA)
    monkeypatch.setattr(download.os, "access", lambda path, mode: False)  # root reads everything
    with pytest.raises(PermissionError, match=f"{data} .*not readable"):
        _ml100k(tmp_path, data).load()


def test_default_path_is_downloaded_with_the_lock_in_the_cache_dir(tmp_path: Path, served_archive: list) -> None:
    source = _ml100k(tmp_path, None)
    assert source.load().height == 3
    assert served_archive == [tmp_path / "data" / "ml-100k"]
    assert [p.name for p in (tmp_path / "data" / "ml-100k").iterdir()] == ["u.data"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["download-ml-100k.lock"]


def test_download_false_names_the_default_path(tmp_path: Path, served_archive: list) -> None:
    with pytest.raises(FileNotFoundError, match=r"u\.data.*dataset\.download=false"):
        _ml100k(tmp_path, None, download=False).load()
    assert served_archive == []


@pytest.mark.slow
def test_cli_missing_data_path_fails_before_training(tmp_path: Path) -> None:
    typo = tmp_path / "no" / "u.data"
    proc = run_cli(
        ["dataset=ml100k", f"dataset.source.path={typo}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert_fails_before_training(proc, tmp_path / "run", f"data file not found: {typo}")
    assert not typo.parent.exists() and not (tmp_path / "data" / "ml-100k").exists()


def test_cache_files_are_readable_under_the_umask(tmp_path: Path) -> None:
    from tests.helpers.cache import KEY
    from tests.helpers.cache import small_split as _split

    previous = os.umask(0o022)
    try:
        load_or_build(KEY, _split, tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(cache_path(KEY, tmp_path).stat().st_mode) == 0o644


def test_read_only_cache_dir_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lopt.data import cache
    from tests.helpers.cache import KEY
    from tests.helpers.cache import small_split as _split

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache.filelock.FileLock, "acquire", read_only)
    with pytest.raises(PermissionError, match=r"paths\.cache_dir=.*data\.cache=false"):
        load_or_build(KEY, _split, tmp_path)
