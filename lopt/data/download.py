"""Fetch a raw data file on first use: from a MovieLens or HetRec archive, with a checksum.

The MovieLens licences forbid redistributing ml-100k/ml-1m/ml-10m, and the HetRec 2011 Last.fm
data is for non-commercial use only, so the project never ships them: :func:`ensure_file`
returns a file the user already has, or downloads the GroupLens archive (verified against its
checksum), extracts the one member needed and returns it.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pooch
from filelock import FileLock

from lopt.io import atomic_write

__all__ = ["Archive", "ARCHIVES", "HETREC_LASTFM_URL", "MOVIELENS_BASE_URL", "check_data_file", "ensure_file"]

log = logging.getLogger(__name__)

MOVIELENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"
HETREC_LASTFM_URL = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
HETREC_LASTFM_MD5 = "md5:296d61afe4e8632b173fc2dd3be20ce2"  # see ARCHIVES


@dataclass(frozen=True)
class Archive:
    """A downloadable zip: where it is served, the member holding the ratings, its checksum
    (pooch's ``"md5:…"``/``"sha256:…"`` form; None = not verified)."""

    url: str
    member: str
    known_hash: str | None


# Checksums are the ones GroupLens publishes (``<name>.zip.md5`` files), as found embedded in
# several public code bases (e.g. the Keras MovieLens example, RecBole-style registries, dataset
# cards); each value below was seen in at least two independent sources. GroupLens publishes no
# .md5 for the rolling ml-latest-small release: its SHA-256 is the one TensorFlow Datasets pins
# (url_checksums/movielens.txt) for the release generated 2018-09-26; if GroupLens re-releases
# it, the check fails loudly: set it to None then (pooch then logs that the file is unverified
# and prints its hash).
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(f"{MOVIELENS_BASE_URL}/ml-100k.zip", "ml-100k/u.data", "md5:0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": Archive(f"{MOVIELENS_BASE_URL}/ml-1m.zip", "ml-1m/ratings.dat", "md5:c4d9eecfca2ab87c1945afe126590906"),
    "ml-10m": Archive(
        f"{MOVIELENS_BASE_URL}/ml-10m.zip", "ml-10M100K/ratings.dat", "md5:ce571fd55effeba0271552578f2648bd"
    ),
    "ml-20m": Archive(f"{MOVIELENS_BASE_URL}/ml-20m.zip", "ml-20m/ratings.csv", "md5:cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": Archive(f"{MOVIELENS_BASE_URL}/ml-25m.zip", "ml-25m/ratings.csv", "md5:6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-latest-small": Archive(
        f"{MOVIELENS_BASE_URL}/ml-latest-small.zip",
        "ml-latest-small/ratings.csv",
        "sha256:696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    ),
    # HetRec 2011 Last.fm: one zip, two members with the same tag assignments (dates or unix ms).
    # No checksum published by GroupLens was found; the MD5 is the one the DataRec library pins
    # (sisinflab/DataRec, datarec/datasets/lastfm/lastfm_2011.py). The archive could not be
    # downloaded where this was written, so that value was not checked here.
    "hetrec2011-lastfm-2k": Archive(HETREC_LASTFM_URL, "user_taggedartists.dat", HETREC_LASTFM_MD5),
    "hetrec2011-lastfm-2k-timestamps": Archive(
        HETREC_LASTFM_URL, "user_taggedartists-timestamps.dat", HETREC_LASTFM_MD5
    ),
}


def check_data_file(path: Path, config_key: str, hint: str = "") -> Path:
    """Return ``path`` if it is a non-empty readable file; else raise naming it and ``config_key``.

    FileNotFoundError (missing), IsADirectoryError (a folder), PermissionError (unreadable),
    ValueError (empty). Called before anything is downloaded or trained.
    """
    path = Path(path)
    fix = f"Point the config at the ratings file with {config_key}=/path/to/{path.name}."
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path} ({config_key}). {fix} {hint}".strip())
    if path.is_dir():
        raise IsADirectoryError(f"{config_key}={path} is a directory, not a data file. {fix} {hint}".strip())
    if not os.access(path, os.R_OK):
        raise PermissionError(
            f"data file {path} ({config_key}) is not readable by this user: "
            "fix its permissions or copy it somewhere readable"
        )
    if path.stat().st_size == 0:
        raise ValueError(
            f"data file {path} ({config_key}) is empty (0 bytes): an interrupted "
            f"copy or download? Replace it with the full file. {hint}".strip()
        )
    return path


def ensure_file(path: Path, archive: str | None, config_key: str, hint: str = "", lock_dir: Path | None = None) -> Path:
    """Return ``path`` if it exists; else download ``ARCHIVES[archive]`` into ``path``'s folder,
    extract its member to ``path`` (atomically: a temporary name, fsync, a rename) and return it.

    Only for the dataset's default location under ``paths.data_dir``: a path the user gives is
    checked with :func:`check_data_file` and never downloaded to. Parallel jobs download once,
    under a lock file in ``lock_dir`` (the cache dir; ``path``'s folder when None).
    Raises FileNotFoundError naming the path, the URL and the Hydra override
    (``<config_key>=/path/to/file``) when there is no archive or the download fails;
    ``hint`` (e.g. where to get the file by hand) is appended to the message.
    """
    path = Path(path)
    if path.exists():
        return check_data_file(path, config_key, hint)
    if archive is None:
        raise FileNotFoundError(
            f"data file not found: {path}. Put the file there, or point the config at it with "
            f"the override {config_key}=/path/to/{path.name}. {hint}".strip()
        )
    if archive not in ARCHIVES:
        raise ValueError(
            f"unknown archive {archive!r} (dataset.source.archive); known: "
            f"{sorted(ARCHIVES)}, or null to never download"
        )
    spec = ARCHIVES[archive]
    lock_dir = Path(lock_dir) if lock_dir is not None else path.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"cannot create {path.parent} to download {spec.url} into ({err.strerror}). Set "
            "paths.data_dir (or $LOPT_DATA_DIR) to a writable folder, or give an existing copy "
            f"with {config_key}=/path/to/{path.name}"
        ) from err
    with FileLock(str(lock_dir / f"download-{archive}.lock")):  # parallel jobs fetch once
        if path.is_file():
            return check_data_file(path, config_key, hint)
        try:
            zip_path = _fetch(spec, path.parent)
        except Exception as err:  # network, HTTP or checksum failure: all mean "not available"
            raise FileNotFoundError(
                f"data file not found: {path}, and downloading {spec.url} failed ({err}). "
                f"Download and unzip it by hand (the file is {spec.member} inside the zip), or "
                f"point the config at an existing copy with {config_key}=/path/to/{path.name}. "
                f"{hint}".strip()
            ) from err
        _extract(Path(zip_path), spec.member, path)
    return check_data_file(path, config_key, hint)


def _fetch(spec: Archive, folder: Path) -> str:
    """Download ``spec.url`` into ``folder`` (kept for reuse) and return the zip's path."""
    if spec.known_hash is None:
        log.warning(
            "no published checksum is recorded for %s: the download is NOT verified (pooch logs its SHA-256 to pin it)",
            spec.url,
        )
    return pooch.retrieve(
        spec.url, known_hash=spec.known_hash, fname=spec.url.rsplit("/", 1)[-1], path=folder, progressbar=False
    )


def _extract(zip_path: Path, member: str, target: Path) -> None:
    """Copy ``member`` of ``zip_path`` to ``target`` through :func:`lopt.io.atomic_write`."""
    with zipfile.ZipFile(zip_path) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(
                f"{zip_path} has no member {member!r} (it has "
                f"{zf.namelist()[:10]}); delete the zip to download "
                "it again"
            )

        def _copy(tmp: Path) -> None:
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)

        atomic_write(target, _copy)
    log.info("extracted %s from %s to %s", member, zip_path, target)
