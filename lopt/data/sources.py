"""Data sources: what Hydra instantiates from ``dataset.source`` (``_target_``).

Each source has ``load(rating=False) -> pl.DataFrame`` (the canonical ``user, item, timestamp``
frame, see :mod:`lopt.data.readers`; ``rating=True`` adds the ``rating`` column, or raises
:class:`NoRatingsError` for a source without ratings) and ``fingerprint(memo_dir=None) -> str``
(a stable hex identity of the raw data and parse options, for cache keys: the sha256 of the
file's bytes for files, never its path or mtime, so the same data has the same fingerprint on
any machine; all parameters for synthetic data). Constructors only validate their arguments
(errors name the config key ``dataset.source.<key>``); files are touched (and downloaded) by
``load``/``fingerprint``, which the DataModule calls before anything is trained. A file the user
names is read as it is: a missing, empty, unreadable file or a folder is an error naming it, and
nothing is ever downloaded under a user's filename (only the default location under
``paths.data_dir`` of a dataset with a public archive, MovieLens or Last.fm, is filled from the
GroupLens archive).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from lopt.data import readers, synthetic
from lopt.data.download import ARCHIVES, check_data_file, ensure_file

__all__ = [
    "MovieLensSource",
    "LastFmSource",
    "AmazonFoodSource",
    "CustomSource",
    "SyntheticSource",
    "NoRatingsError",
    "decode_separator",
]

#: Bump when a reader's output for the same file changes (it invalidates caches).
READER_VERSION = 1
_KEY = "dataset.source"


class NoRatingsError(ValueError):
    """Ratings were asked for (``dataset.preprocess.min_rating``) from a source without them."""


#: Names accepted for ``dataset.source.separator`` (a tab is awkward to type on a command line).
SEPARATOR_NAMES = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
#: Backslash escapes decoded in ``dataset.source.separator``: a shell passes ``'\t'`` to Hydra
#: as the two characters backslash and t.
_SEPARATOR_ESCAPES = {"\\t": "\t", "\\\\": "\\"}


def decode_separator(value: Any) -> str:
    """The separator that ``dataset.source.separator`` names: a name of :data:`SEPARATOR_NAMES`
    (``tab``), the escapes ``\\t`` (tab) and ``\\\\`` (one backslash) as typed on a command
    line, or the characters themselves (``","``, ``"::"``, a real tab from YAML's ``"\\t"``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_KEY}.separator must be a non-empty string, e.g. ',', tab, '\\t' or '::', got {value!r}")
    if value in SEPARATOR_NAMES:
        return SEPARATOR_NAMES[value]
    if "\\" in value:
        value = re.sub(r"\\\\|\\t", lambda m: _SEPARATOR_ESCAPES[m.group(0)], value)
    if "\n" in value or "\r" in value:
        raise ValueError(f"{_KEY}.separator must not contain a line break, got {value!r}")
    return value


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{_KEY}.{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _path(value: Any) -> Path:
    if value is None or str(value) in ("", "???"):
        raise ValueError(f"{_KEY}.path is not set: give the data file, e.g. {_KEY}.path=/path/to/ratings.csv")
    return Path(str(value)).expanduser()


class _FileSource:
    """A source backed by one file; subclasses define ``_read`` and ``_options``."""

    archive: str | None = None
    hint: str = ""
    #: Whether a missing ``path`` may be downloaded (only the dataset's default location).
    downloadable: bool = False
    lock_dir: Path | None = None

    def __init__(self, path: str | Path) -> None:
        self.path = _path(path)

    def _file(self) -> Path:
        if self.downloadable and self.archive is not None:
            return ensure_file(self.path, self.archive, f"{_KEY}.path", self.hint, self.lock_dir)
        return check_data_file(self.path, f"{_KEY}.path", self.hint)

    def load(self, rating: bool = False) -> pl.DataFrame:
        """The canonical frame (downloads the archive first when the file is missing); with
        ``rating=True`` also the ``rating`` column (:class:`NoRatingsError` when the file has none)."""
        if rating:
            self._check_ratings()
            return self._read(self._file(), rating=True)
        return self._read(self._file())

    def _check_ratings(self) -> None:
        """Raise :class:`NoRatingsError` when this source cannot give ratings (all formats read
        here have a rating column; a custom file names it with ``rating_col``)."""

    def fingerprint(self, memo_dir: str | Path | None = None) -> str:
        """Hex digest of (class, sha256 of the file's bytes, parse options, reader version); the
        file's hash is memoized in ``memo_dir`` (see :func:`lopt.data.cache.file_digest`)."""
        from lopt.data.cache import file_digest

        return _digest(
            {
                "source": type(self).__name__,
                "sha256": file_digest(self._file(), memo_dir),
                "options": self._options(),
                "reader_version": READER_VERSION,
            }
        )

    def _read(self, file: Path, rating: bool = False) -> pl.DataFrame:
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, {self._options()})"


class _ArchiveSource(_FileSource):
    """A file in one of the formats of ``_READERS`` (``format``) whose default location may be
    filled from a public archive.

    ``path``: the user's file, read as is (never downloaded to); None → ``default_path`` (the
    dataset's place under ``paths.data_dir``), which is filled from ``archive`` (a key of
    :data:`lopt.data.download.ARCHIVES`) when it is missing and ``download`` is true. The
    download's lock file lives in ``lock_dir`` (the cache dir). ``manual_hint`` (a class
    attribute) says where to get the file by hand; it ends every missing-file error.
    """

    _READERS: dict[str, Any] = {}
    #: The file's usual name, shown in the examples of error messages.
    file_name = "ratings.csv"
    manual_hint = ""

    def __init__(
        self,
        path: str | Path | None,
        format: str,
        archive: str | None = None,
        default_path: str | Path | None = None,
        download: bool = True,
        lock_dir: str | Path | None = None,
    ) -> None:
        user_path = path is not None and str(path) not in ("", "???")
        if not user_path and default_path is None:
            raise ValueError(
                f"{_KEY}.path is not set (and there is no {_KEY}.default_path): "
                f"give the data file, e.g. {_KEY}.path=/path/to/{self.file_name}"
            )
        super().__init__(path if user_path else default_path)
        self.format = _choice("format", format, tuple(self._READERS))
        if archive is not None and archive not in ARCHIVES:
            raise ValueError(f"{_KEY}.archive must be one of {sorted(ARCHIVES)} or null, got {archive!r}")
        if not isinstance(download, bool):
            raise ValueError(f"dataset.download must be true or false, got {download!r}")
        self.archive = archive
        self.downloadable = download and not user_path
        self.lock_dir = None if lock_dir is None else Path(str(lock_dir)).expanduser()
        self.hint = self.manual_hint
        if not user_path and not download:
            self.hint = (
                "dataset.download=false: nothing is downloaded; put the file there, or "
                f"give it with {_KEY}.path=/path/to/{self.path.name}. {self.manual_hint}"
            ).strip()

    def _options(self) -> dict[str, Any]:
        return {"format": self.format}


class MovieLensSource(_ArchiveSource):
    """A MovieLens ratings file: ``tab`` (u.data), ``dat`` (ratings.dat, ``::``) or ``csv``
    (ratings.csv); the other arguments are :class:`_ArchiveSource`'s.
    """

    _READERS = {"tab": readers.read_movielens_tab, "dat": readers.read_movielens_dat, "csv": readers.read_movielens_csv}
    file_name = "u.data"

    def _read(self, file: Path, rating: bool = False) -> pl.DataFrame:
        return self._READERS[self.format](file, rating=rating)


class LastFmSource(_ArchiveSource):
    """The HetRec 2011 Last.fm tag assignments (hetrec2011-lastfm-2k.zip): ``dates``
    (``user_taggedartists.dat``: day, month, year) or ``timestamps``
    (``user_taggedartists-timestamps.dat``: unix milliseconds). A user's tagging of an artist
    is the interaction; the file has no ratings. The other arguments are :class:`_ArchiveSource`'s.
    """

    _READERS = {"dates": readers.read_lastfm_tags_dates, "timestamps": readers.read_lastfm_tags_timestamps}
    file_name = "user_taggedartists.dat"
    manual_hint = (
        "Get hetrec2011-lastfm-2k.zip from https://grouplens.org/datasets/hetrec-2011/ and unzip "
        "user_taggedartists.dat (format=dates) or user_taggedartists-timestamps.dat (format=timestamps)."
    )

    def _check_ratings(self) -> None:
        raise NoRatingsError(
            "dataset.preprocess.min_rating keeps interactions by rating, but the Last.fm tag assignments "
            f"({_KEY}.path={self.path}) have no ratings: set dataset.preprocess.min_rating=null"
        )

    def _read(self, file: Path, rating: bool = False) -> pl.DataFrame:
        return self._READERS[self.format](file)


class AmazonFoodSource(_FileSource):
    """Amazon Fine Food reviews: the Kaggle ``Reviews.csv`` (``kaggle_csv``) or the SNAP
    ``finefoods.txt.gz`` (``snap``). Never downloaded (Kaggle needs a login)."""

    _READERS = {"kaggle_csv": readers.read_amazon_kaggle_csv, "snap": readers.read_amazon_snap}
    hint = (
        "Get Reviews.csv from https://www.kaggle.com/datasets/snap/amazon-fine-food-reviews "
        "(or finefoods.txt.gz from SNAP, with dataset=amazon_food_snap)."
    )

    def __init__(self, path: str | Path, format: str) -> None:
        super().__init__(path)
        self.format = _choice("format", format, tuple(self._READERS))

    def _read(self, file: Path, rating: bool = False) -> pl.DataFrame:
        return self._READERS[self.format](file, rating=rating)

    def _options(self) -> dict[str, Any]:
        return {"format": self.format}


class CustomSource(_FileSource):
    """Any CSV/TSV/Parquet file; see :func:`lopt.data.readers.read_custom` for the meaning of
    each argument (``timestamp_col=None`` → file order; ``column_names`` names the columns of a
    headerless file)."""

    def __init__(
        self,
        path: str | Path,
        user_col: str | int,
        item_col: str | int,
        timestamp_col: str | int | None,
        separator: str = ",",
        has_header: bool = True,
        file_format: str = "auto",
        column_names: Sequence[str] | None = None,
        rating_col: str | int | None = None,
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path)
        try:
            self.encoding = codecs.lookup(str(encoding)).name
        except LookupError:
            raise ValueError(
                f"{_KEY}.encoding must name a text encoding Python knows (utf-8, latin-1, cp1252, ...), "
                f"got {encoding!r}"
            ) from None
        cols = {"user_col": user_col, "item_col": item_col, "timestamp_col": timestamp_col, "rating_col": rating_col}
        for key, col in cols.items():
            if col is None and key in ("user_col", "item_col"):
                raise ValueError(f"{_KEY}.{key} must name a column (or give its 0-based position)")
            if col is not None and (isinstance(col, bool) or not isinstance(col, (str, int))):
                raise ValueError(f"{_KEY}.{key} must be a column name or a 0-based position, got {col!r}")
        given = [c for c in cols.values() if c is not None]
        if len(set(given)) != len(given):
            raise ValueError(f"{_KEY}.user_col/item_col/timestamp_col/rating_col must be different columns, got {cols}")
        separator = decode_separator(separator)
        if not isinstance(has_header, bool):
            raise ValueError(f"{_KEY}.has_header must be true or false, got {has_header!r}")
        self.user_col, self.item_col, self.timestamp_col = user_col, item_col, timestamp_col
        self.rating_col = rating_col
        self.separator, self.has_header = separator, has_header
        self.file_format = _choice("file_format", file_format, ("csv", "parquet", "auto"))
        self.column_names = None if column_names is None else [str(c) for c in column_names]

    def _check_ratings(self) -> None:
        if self.rating_col is None:
            raise NoRatingsError(
                f"dataset.preprocess.min_rating keeps interactions by rating, but {_KEY}.rating_col is null: "
                f"name the rating column ({_KEY}.rating_col=rating, or its 0-based position), or set "
                "dataset.preprocess.min_rating=null to keep every interaction"
            )

    def _read(self, file: Path, rating: bool = False) -> pl.DataFrame:
        if self.file_format == "parquet" or (self.file_format == "auto" and file.suffix.lower() in (".parquet", ".pq")):
            return self._read_as(file, rating)  # Parquet strings are UTF-8 by the format's definition
        if self.encoding == "utf-8":
            frame = self._read_as(file, rating)
            if _has_replacement(frame):  # the lossy reader replaced bytes that are not UTF-8
                _check_decodes(file, "utf-8")
            return frame
        _check_decodes(file, self.encoding)
        with tempfile.TemporaryDirectory(prefix="lopt-transcode-") as folder:
            utf8 = Path(folder) / file.name
            _transcode(file, self.encoding, utf8)
            try:
                return self._read_as(utf8, rating)
            except readers.DataFormatError as err:
                raise readers.DataFormatError(str(err).replace(str(utf8), str(file))) from None

    def _read_as(self, file: Path, rating: bool = False) -> pl.DataFrame:
        return readers.read_custom(
            file,
            self.user_col,
            self.item_col,
            self.timestamp_col,
            self.separator,
            self.has_header,
            self.file_format,
            self.column_names,
            rating_col=self.rating_col if rating else None,
        )

    def _options(self) -> dict[str, Any]:
        options = {
            "user_col": self.user_col,
            "item_col": self.item_col,
            "timestamp_col": self.timestamp_col,
            "separator": self.separator,
            "has_header": self.has_header,
            "file_format": self.file_format,
            "column_names": self.column_names,
            "encoding": self.encoding,
        }
        if self.rating_col is not None:  # absent when unset: fingerprints of older configs stay valid
            options["rating_col"] = self.rating_col
        return options


def _open_bytes(file: Path) -> Any:
    """``file`` opened for reading bytes, decompressed when it is gzip (as the readers do)."""
    with open(file, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(file, "rb") if magic == b"\x1f\x8b" else open(file, "rb")


def _has_replacement(frame: pl.DataFrame) -> bool:
    """Whether a String id column holds U+FFFD, the lossy UTF-8 reader's mark of a bad byte."""
    return any(
        frame[c].dtype == pl.String and bool(frame[c].str.contains("\ufffd", literal=True).any())
        for c in ("user", "item")
        if c in frame.columns
    )


def _check_decodes(file: Path, encoding: str) -> None:
    """Raise DataFormatError naming the first line of ``file`` that does not decode in
    ``encoding`` (read line by line: the whole file is never held in memory)."""
    with _open_bytes(file) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as err:
                bad = line[max(err.start - 8, 0) : err.end + 8]
                raise readers.DataFormatError(
                    f"{file}: line {number}: bytes {bad!r} are not valid {encoding} (byte {err.start + 1} of "
                    f"the line). Ids read with the wrong encoding would be merged or mangled. Set "
                    f"{_KEY}.encoding to the file's encoding (e.g. {_KEY}.encoding=latin-1 or cp1252), or "
                    "re-save the file as UTF-8"
                ) from None


def _transcode(file: Path, encoding: str, out: Path) -> None:
    """Write ``file`` (in ``encoding``) to ``out`` as UTF-8, line by line."""
    with _open_bytes(file) as src, open(out, "wb") as dst:
        for line in src:
            dst.write(line.decode(encoding).encode("utf-8"))


class SyntheticSource:
    """Generated data (:func:`lopt.data.synthetic.generate_interactions`), deterministic from
    its parameters."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_interactions: int,
        rank: int,
        user_alpha: float,
        item_alpha: float,
        noise: float,
        seed: int,
    ) -> None:
        synthetic.validate_parameters(
            n_users, n_items, n_interactions, rank, user_alpha, item_alpha, noise, key_prefix=f"{_KEY}."
        )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{_KEY}.seed must be an integer ≥ 0, got {seed!r}")
        self.params = {
            "n_users": n_users,
            "n_items": n_items,
            "n_interactions": n_interactions,
            "rank": rank,
            "user_alpha": float(user_alpha),
            "item_alpha": float(item_alpha),
            "noise": float(noise),
            "seed": seed,
        }

    def load(self, rating: bool = False) -> pl.DataFrame:
        """The generated canonical frame (Int64 ids and timestamps); generated data has no
        ratings (``rating=True`` raises :class:`NoRatingsError`)."""
        if rating:
            raise NoRatingsError(
                "dataset.preprocess.min_rating keeps interactions by rating, but dataset=synthetic generates "
                "implicit interactions without ratings: set dataset.preprocess.min_rating=null"
            )
        return synthetic.generate_interactions(**self.params)

    def fingerprint(self, memo_dir: str | Path | None = None) -> str:
        """Hex digest of all parameters and the generator version (``memo_dir`` is not used)."""
        return _digest({"source": "SyntheticSource", **self.params, "generator_version": synthetic.GENERATOR_VERSION})

    def __repr__(self) -> str:
        return f"SyntheticSource({self.params})"
