"""HetRec 2011 Last.fm: both tag-assignment formats, their errors, the source, the download, the
dataset config's filter, and (when a copy is named by $LOPT_LASTFM2K_FILE) the real file."""

from __future__ import annotations

import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lopt.data import download, readers
from lopt.data.download import ARCHIVES, HETREC_LASTFM_URL, Archive
from lopt.data.preprocess import prepare_split
from lopt.data.readers import DataFormatError
from lopt.data.sources import LastFmSource, NoRatingsError
from tests.helpers.hydra import compose_config

DATES_HEADER = "userID\tartistID\ttagID\tday\tmonth\tyear"
MS_HEADER = "userID\tartistID\ttagID\ttimestamp"

#: (user, artist, tag, day, month, year) tag assignments: user 2 tags artist 52 twice (April and
#: March 2009), user 3 tags three artists, one of them on a date before 1970.
ROWS = [
    (2, 52, 13, 1, 4, 2009),
    (2, 52, 15, 1, 3, 2009),
    (2, 63, 13, 1, 5, 2009),
    (3, 101, 14, 1, 2, 2010),
    (3, 102, 33, 9, 9, 1956),
    (3, 108, 15, 1, 8, 2009),
]


def _utc(day: int, month: int, year: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def _write(path: Path, header: str, lines: list[str], newline: str = "\r\n") -> Path:
    """A file as GroupLens ships it: a header line, CRLF line ends, a trailing blank line."""
    path.write_bytes((newline.join([header, *lines]) + newline + newline).encode())
    return path


def _dates_file(path: Path, rows: list[tuple] = ROWS, newline: str = "\r\n") -> Path:
    return _write(path, DATES_HEADER, ["\t".join(map(str, r)) for r in rows], newline)


def _ms_file(path: Path, rows: list[tuple] = ROWS) -> Path:
    # The released file holds local (Madrid) midnights: UTC midnight minus one or two hours.
    lines = [f"{u}\t{a}\t{t}\t{(_utc(d, m, y) - 3600 * (2 if 4 <= m <= 9 else 1)) * 1000}" for u, a, t, d, m, y in rows]
    return _write(path, MS_HEADER, lines)


# ------------------------------------------------------------------------------------ readers


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_dates_file_gives_one_row_per_tag_at_utc_midnight(tmp_path: Path, newline: str) -> None:
    df = readers.read_lastfm_tags_dates(_dates_file(tmp_path / "user_taggedartists.dat", newline=newline))
    assert df.columns == ["user", "item", "timestamp"]
    assert df.schema == pl.Schema({"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64})
    assert df.rows() == [(u, a, _utc(d, m, y)) for u, a, _, d, m, y in ROWS]
    assert df["timestamp"][4] < 0  # 1956: before the epoch, still ordered


def test_timestamps_file_gives_seconds(tmp_path: Path) -> None:
    df = readers.read_lastfm_tags_timestamps(_ms_file(tmp_path / "user_taggedartists-timestamps.dat"))
    assert df.schema == pl.Schema({"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64})
    assert df["timestamp"][0] == 1238536800  # the readme's example row: 1238536800000 ms
    f = _write(tmp_path / "ms.dat", MS_HEADER, ["2\t52\t13\t1238536800500", "2\t63\t13\t1238536800000"])
    ts = readers.read_lastfm_tags_timestamps(f)["timestamp"]
    assert ts.dtype == pl.Float64 and ts.to_list() == [1238536800.5, 1238536800.0]


def test_both_formats_give_the_same_split(tmp_path: Path) -> None:
    """The two members hold the same assignments, one as dates and one as local-midnight
    milliseconds; the timestamps differ by hours, the order and hence the split do not."""
    dates = readers.read_lastfm_tags_dates(_dates_file(tmp_path / "a.dat"))
    ms = readers.read_lastfm_tags_timestamps(_ms_file(tmp_path / "b.dat"))
    assert dates.select("user", "item").equals(ms.select("user", "item"))
    assert np.array_equal(dates["timestamp"].rank("dense"), ms["timestamp"].rank("dense"))
    params = dict(min_users_per_item=0, min_items_per_user=0, iterative=False, test_ratio=0.5, valid_ratio=0.5)
    a, b = prepare_split(dates, **params), prepare_split(ms, **params)
    for part in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, f"{part}_items"), getattr(b, f"{part}_items")), part
    # One interaction per (user, artist), at its earliest tag: user 2's artist 52 is March's,
    # so artist 63 (May) is user 2's latest and goes to test.
    assert len(a.train_users) + len(a.valid_users) + len(a.test_users) == 5
    test_pairs = set(zip(a.user_ids[a.test_users].tolist(), a.item_ids[a.test_items].tolist(), strict=True))
    assert (2, 63) in test_pairs and (3, 101) in test_pairs


@pytest.mark.parametrize(
    ("lines", "line", "what"),
    [
        (["2\t52\t13\t1\t4"], 2, "expected 6 tab-separated fields, found 5"),
        (["2\t52\t13\t1\t4\t2009", "", "2\t52\t13\t1\t4\t2009\t7"], 4, "expected 6 tab-separated fields, found 7"),
        (["2\t52\t13\t1\t4\t2009", "2\tmetallica\t13\t1\t4\t2009"], 3, "non-integer item id 'metallica'"),
        (["x\t52\t13\t1\t4\t2009"], 2, "non-integer user id 'x'"),
        (["2\t52\t13\t31\t2\t2009"], 2, "day '31', month '2', year '2009' is not a date"),
        (["2\t52\t13\t1\tApril\t2009"], 2, "month 'April'"),
    ],
)
def test_dates_errors_name_file_and_line(tmp_path: Path, lines: list[str], line: int, what: str) -> None:
    f = _write(tmp_path / "user_taggedartists.dat", DATES_HEADER, lines, newline="\n")
    with pytest.raises(DataFormatError) as err:
        readers.read_lastfm_tags_dates(f)
    msg = str(err.value)
    assert str(f) in msg and f"line {line}:" in msg and what in msg
    assert "user_taggedartists.dat of hetrec2011-lastfm-2k.zip" in msg


def test_timestamps_errors_name_file_and_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.dat", MS_HEADER, ["2\t52\t13\t1238536800000", "2\t63\t13\tsoon"])
    with pytest.raises(DataFormatError, match=r"t\.dat: line 3: non-numeric timestamp 'soon'"):
        readers.read_lastfm_tags_timestamps(f)


def test_another_member_of_the_archive_is_named(tmp_path: Path) -> None:
    """user_artists.dat (no dates) or the other tag file under the wrong format: the header
    is reported, with the expected one."""
    f = _write(tmp_path / "user_artists.dat", "userID\tartistID\tweight", ["2\t51\t13883"])
    with pytest.raises(DataFormatError, match=r"line 1: the header is \('userID', 'artistID', 'weight'\)"):
        readers.read_lastfm_tags_dates(f)
    with pytest.raises(DataFormatError, match=r"line 1: the header is .*'timestamp'\), not .*'year'\)"):
        readers.read_lastfm_tags_dates(_ms_file(tmp_path / "ms.dat"))
    with pytest.raises(DataFormatError, match=r"line 1: the header is .*'year'\), not .*'timestamp'\)"):
        readers.read_lastfm_tags_timestamps(_dates_file(tmp_path / "dates.dat"))


@pytest.mark.parametrize("text", ["", "\n\n", DATES_HEADER + "\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    f = tmp_path / "user_taggedartists.dat"
    f.write_text(text)
    with pytest.raises(DataFormatError, match="no interactions found"):
        readers.read_lastfm_tags_dates(f)


# ------------------------------------------------------------------------- source and config


def test_source_reads_both_formats_and_has_no_ratings(tmp_path: Path) -> None:
    dates = LastFmSource(_dates_file(tmp_path / "a.dat"), "dates")
    assert dates.load().height == len(ROWS)
    assert LastFmSource(_ms_file(tmp_path / "b.dat"), "timestamps").load().height == len(ROWS)
    with pytest.raises(NoRatingsError, match=r"dataset\.preprocess\.min_rating=null"):
        dates.load(rating=True)
    assert dates.fingerprint() != LastFmSource(dates.path, "timestamps").fingerprint()
    with pytest.raises(ValueError, match=r"dataset\.source\.format must be one of \['dates', 'timestamps'\]"):
        LastFmSource(dates.path, "csv")
    with pytest.raises(ValueError, match=r"dataset\.source\.path is not set .*user_taggedartists\.dat"):
        LastFmSource(None, "dates")


def test_archives_point_at_grouplens_with_a_checksum() -> None:
    for key, member in (
        ("hetrec2011-lastfm-2k", "user_taggedartists.dat"),
        ("hetrec2011-lastfm-2k-timestamps", "user_taggedartists-timestamps.dat"),
    ):
        spec = ARCHIVES[key]
        assert (
            spec.url == HETREC_LASTFM_URL == "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
        )
        assert spec.member == member and spec.known_hash is not None and spec.known_hash.startswith("md5:")


@pytest.mark.parametrize(
    ("archive", "fmt", "name"),
    [
        ("hetrec2011-lastfm-2k", "dates", "user_taggedartists.dat"),
        ("hetrec2011-lastfm-2k-timestamps", "timestamps", "user_taggedartists-timestamps.dat"),
    ],
)
def test_default_path_is_filled_from_the_zip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: str, fmt: str, name: str
) -> None:
    """The zip holds its files at its root; each archive key extracts its own member."""
    zip_path = tmp_path / "served" / "hetrec2011-lastfm-2k.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(_dates_file(tmp_path / "d.dat"), "user_taggedartists.dat")
        zf.write(_ms_file(tmp_path / "m.dat"), "user_taggedartists-timestamps.dat")
        zf.writestr("user_artists.dat", "userID\tartistID\tweight\r\n2\t51\t13883\r\n")
    fetched: list[Archive] = []

    def fake_fetch(spec: Archive, folder: Path) -> str:
        fetched.append(spec)
        return str(zip_path)

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    target = tmp_path / "data" / "hetrec2011-lastfm-2k" / name
    source = LastFmSource(None, fmt, archive=archive, default_path=target, lock_dir=tmp_path / "cache")
    assert source.load().select("user", "item").rows() == [(r[0], r[1]) for r in ROWS]
    assert [s.member for s in fetched] == [name] and target.is_file()


def test_offline_default_path_says_where_to_get_it(tmp_path: Path) -> None:
    target = tmp_path / "user_taggedartists.dat"
    source = LastFmSource(None, "dates", archive="hetrec2011-lastfm-2k", default_path=target, download=False)
    with pytest.raises(FileNotFoundError) as err:
        source.load()
    msg = str(err.value)
    assert "dataset.download=false" in msg and "grouplens.org/datasets/hetrec-2011" in msg


def test_dataset_config_reads_and_filters(tmp_path: Path) -> None:
    """conf/dataset/lastfm2k.yaml: the dates member at its default place, the 5/5 filter."""
    dataset = compose_config(["dataset=lastfm2k"]).dataset
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "c")}})
    cfg.dataset = OmegaConf.to_container(dataset, resolve=False)
    pre = cfg.dataset.preprocess
    assert (pre.min_users_per_item, pre.min_items_per_user, pre.iterative) == (5, 5, False)
    assert (pre.test_ratio, pre.valid_ratio, pre.min_rating) == (0.2, 0.25, None)
    source = instantiate(cfg.dataset.source)
    assert isinstance(source, LastFmSource) and source.archive == "hetrec2011-lastfm-2k"
    assert source.path == tmp_path / "hetrec2011-lastfm-2k" / "user_taggedartists.dat"
    # 6 users tag artists 1..5 (each artist gets 6 users), a 7th tags artist 1..4 only: with 5/5
    # the 7th user is dropped (4 artists), and artist 6, tagged by 1 user, goes first.
    rows = [(u, a, 1, 1, 1 + a, 2009) for u in range(1, 7) for a in range(1, 6)]
    rows += [(7, a, 1, 1, 1, 2010) for a in range(1, 5)] + [(1, 6, 1, 1, 1, 2011)]
    source.path.parent.mkdir(parents=True)
    _dates_file(source.path, rows)
    split = prepare_split(source.load(), **OmegaConf.to_container(pre))
    assert sorted(split.user_ids.tolist()) == [1, 2, 3, 4, 5, 6]
    assert sorted(split.item_ids.tolist()) == [1, 2, 3, 4, 5]
    assert len(split.test_users) == 6 and len(split.valid_users) == 6  # ⌊5·0.2⌋ = 1, ⌊4·0.25⌋ = 1


# --------------------------------------------------------------------------------- real file


@pytest.fixture(scope="module")
def lastfm_file() -> Path:
    """Your copy of user_taggedartists.dat, named by $LOPT_LASTFM2K_FILE (never committed)."""
    value = os.environ.get("LOPT_LASTFM2K_FILE")
    if not value or not Path(value).is_file():
        pytest.skip("set LOPT_LASTFM2K_FILE=/path/to/user_taggedartists.dat to test the real Last.fm file")
    return Path(value)


def test_real_file_sizes_before_and_after_the_filter(lastfm_file: Path) -> None:
    """The counts of the archive's readme (186,479 tag assignments, 1,892 users) and, after the
    dataset config's 5/5 filter, the sizes the docs quote."""
    df = readers.read_lastfm_tags_dates(lastfm_file)
    assert df.height == 186_479 and df["user"].n_unique() == 1_892 and df["item"].n_unique() == 12_523
    assert df.select("user", "item").n_unique() == 71_064
    params = dict(min_users_per_item=5, min_items_per_user=5, iterative=False, test_ratio=0.2, valid_ratio=0.25)
    split = prepare_split(df, **params)
    n = len(split.train_users) + len(split.valid_users) + len(split.test_users)
    assert (n, split.n_users, split.n_items) == (52_803, 1_092, 3_708)
