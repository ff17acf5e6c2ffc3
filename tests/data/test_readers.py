"""Raw-format readers: every format, string ids, quoting, gzip, and located format errors."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import polars as pl
import pytest

from lopt.data import readers
from lopt.data.readers import DataFormatError
from lopt.types import CANONICAL_COLUMNS


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _rows(df: pl.DataFrame) -> list[tuple]:
    assert tuple(df.columns) == CANONICAL_COLUMNS
    assert df.schema["timestamp"] == pl.Int64
    return df.rows()


# ----------------------------------------------------------------------------------- MovieLens


def test_movielens_tab(tmp_path: Path) -> None:
    f = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n")
    df = readers.read_movielens_tab(f)
    assert df.schema["user"] == pl.Int64 and df.schema["item"] == pl.Int64
    assert _rows(df) == [(196, 242, 881250949), (186, 302, 891717742)]


def test_movielens_dat_blank_lines_and_crlf(tmp_path: Path) -> None:
    f = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\r\n\n1::661::3::978302109\r\n")
    assert _rows(readers.read_movielens_dat(f)) == [(1, 1193, 978300760), (1, 661, 978302109)]


def test_movielens_csv(tmp_path: Path) -> None:
    f = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    assert _rows(readers.read_movielens_csv(f)) == [(1, 1, 964982703), (1, 3, 964981247)]


def test_ml100k_real_file(ml100k_path: Path) -> None:
    df = readers.read_movielens_tab(ml100k_path)
    assert df.height == 100_000
    assert df["user"].n_unique() == 943 and df["item"].n_unique() == 1682
    assert df.null_count().sum_horizontal().item() == 0


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("1::2::5::100\n3::4::5\n", 2, "expected 4 fields"),
        ("1::2::5::100\n3::4::5::6::7\n", 2, "expected 4 fields"),
        ("1::2::5::100\n\n3::4::5::1e9x\n", 3, "non-numeric timestamp '1e9x'"),
        ("1::2::5::100\nbob::4::5::100\n", 2, "non-integer user id 'bob'"),
        ("1::2::5::100\n1::2::5::100\n7::x::5::100\n", 3, "non-integer item id 'x'"),
    ],
)
def test_movielens_dat_errors_name_file_and_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    f = _write(tmp_path / "ratings.dat", text)
    with pytest.raises(DataFormatError) as err:
        readers.read_movielens_dat(f)
    msg = str(err.value)
    assert str(f) in msg and f"line {line}:" in msg and what in msg
    assert "Fix or delete that line" in msg


def test_movielens_tab_error_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "u.data", "1\t2\t3\t4\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"line 2: expected 4 fields separated by '\\t'"):
        readers.read_movielens_tab(f)


def test_movielens_csv_errors(tmp_path: Path) -> None:
    header = "userId,movieId,rating,timestamp\n"
    f = _write(tmp_path / "a.csv", header + "1,2,3.0,10\n1,3,3.0,oops\n")
    with pytest.raises(DataFormatError, match=r"a\.csv: line 3: non-numeric timestamp 'oops'"):
        readers.read_movielens_csv(f)
    f = _write(tmp_path / "b.csv", header + "1,2,3.0,10\n1,3,3.0,11,12\n")
    with pytest.raises(DataFormatError, match=r"b\.csv: line 3: more than 4 fields"):
        readers.read_movielens_csv(f)
    f = _write(tmp_path / "c.csv", "user,movieId,rating,timestamp\n1,2,3.0,10\n")
    with pytest.raises(DataFormatError, match=r"column 'userId' .*not found.*'user', 'movieId'"):
        readers.read_movielens_csv(f)


def test_missing_file_names_override(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset.source.path="):
        readers.read_movielens_dat(tmp_path / "nope.dat")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no interactions"):
        readers.read_movielens_dat(_write(tmp_path / "e.dat", "\n\n"))


# ----------------------------------------------------------------------------------- Amazon

KAGGLE_HEADER = "Id,ProductId,UserId,ProfileName,HelpfulnessNumerator,HelpfulnessDenominator,Score,Time,Summary,Text\n"


def test_amazon_kaggle_quoted_multiline(tmp_path: Path) -> None:
    text = KAGGLE_HEADER + (
        '1,B001E4KFG0,A3SGXH7AUHU8GW,delmartian,1,1,5,1303862400,Good Quality,"I have bought, '
        'several of the ""Vitality"" cans.\nSecond line, with commas"\n'
        '2,B00813GRG4,A1D87F6ZCVE5NK,"dll pa, ""the"" man",0,0,1,1346976000,"Not as\r\nAdvertised",'
        '"Product arrived labeled as Jumbo"\n'
        '3,B000LQOCH0,ABXLMWJIXXAIN,"Natalia Corres ""Natalia Corres""",1,1,4,1219017600,'
        '"""Delight"" says it all","Multi\n\nline\n"\n'
    )
    df = readers.read_amazon_kaggle_csv(_write(tmp_path / "Reviews.csv", text))
    assert df.schema["user"] == pl.String and df.schema["item"] == pl.String
    assert _rows(df) == [
        ("A3SGXH7AUHU8GW", "B001E4KFG0", 1303862400),
        ("A1D87F6ZCVE5NK", "B00813GRG4", 1346976000),
        ("ABXLMWJIXXAIN", "B000LQOCH0", 1219017600),
    ]


def test_amazon_kaggle_error_line_counts_embedded_newlines(tmp_path: Path) -> None:
    text = KAGGLE_HEADER + (
        '1,B1,U1,x,1,1,5,100,s,"two\nlines"\n'  # lines 2-3
        '2,B2,U2,"y\nz",1,1,5,200,s,t\n'  # lines 4-5
        "3,B3,U3,w,1,1,5,notatime,s,t\n"  # line 6
    )
    f = _write(tmp_path / "Reviews.csv", text)
    with pytest.raises(DataFormatError, match=r"line 6: non-numeric timestamp 'notatime'"):
        readers.read_amazon_kaggle_csv(f)
    f = _write(tmp_path / "R2.csv", KAGGLE_HEADER + '1,B1,U1,x,1,1,5,100,s,"a\nb"\n2,B2,,x,1,1,5,1,s,t\n')
    with pytest.raises(DataFormatError, match=r"line 4: empty or missing user field"):
        readers.read_amazon_kaggle_csv(f)


def test_amazon_kaggle_missing_column(tmp_path: Path) -> None:
    f = _write(tmp_path / "Reviews.csv", "Id,ProductId,User,Time\n1,B1,U1,5\n")
    with pytest.raises(DataFormatError, match=r"'UserId'.*not found.*'User'"):
        readers.read_amazon_kaggle_csv(f)


SNAP = (
    "product/productId: B001E4KFG0\n"
    "review/userId: A3SGXH7AUHU8GW\n"
    "review/profileName: delmartian\n"
    "review/helpfulness: 1/1\n"
    "review/score: 5.0\n"
    "review/time: 1303862400\n"
    "review/summary: Good Quality Dog Food\n"
    'review/text: I have bought several; odd bytes: \xe9\xff "quotes", commas\n'
    "\n"
    "product/productId: B00813GRG4\n"
    "review/userId: A1D87F6ZCVE5NK\n"
    "review/profileName: dll pa\n"
    "review/helpfulness: 0/0\n"
    "review/score: 1.0\n"
    "review/time: 1346976000\n"
    "review/summary: Not as Advertised\n"
    "review/text: Product arrived labeled as Jumbo Salted Peanuts...\n"
    "\n"
)


def test_amazon_snap_gzip_with_odd_bytes(tmp_path: Path) -> None:
    f = tmp_path / "finefoods.txt.gz"
    f.write_bytes(gzip.compress(SNAP.encode("latin-1")))
    df = readers.read_amazon_snap(f)
    assert _rows(df) == [("A3SGXH7AUHU8GW", "B001E4KFG0", 1303862400), ("A1D87F6ZCVE5NK", "B00813GRG4", 1346976000)]


def test_amazon_snap_errors(tmp_path: Path) -> None:
    broken = SNAP.replace("review/userId: A1D87F6ZCVE5NK\n", "")
    f = tmp_path / "a.txt"
    f.write_bytes(broken.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"line 14: expected a 'review/userId:' line"):
        readers.read_amazon_snap(f)
    f.write_bytes(SNAP.replace("1346976000", "soon").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"line 10: non-numeric timestamp 'soon'"):
        readers.read_amazon_snap(f)


# ----------------------------------------------------------------------------------- custom


def test_custom_csv_with_header_string_ids(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.csv", 'who,what,when\nalice,"book, red",3\nbob,pen,1\n')
    df = readers.read_custom(f, "who", "what", "when")
    assert df.schema["user"] == pl.String
    assert _rows(df) == [("alice", "book, red", 3), ("bob", "pen", 1)]


def test_custom_tsv_without_header_by_position_and_file_order(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.tsv", "x\t10\t20\n y\t11\t21\n")
    df = readers.read_custom(f, 1, 0, None, separator="\t", has_header=False)
    assert df.schema["user"] == pl.Int64 and df.schema["item"] == pl.String
    assert _rows(df) == [(10, "x", 0), (11, "y", 1)]


def test_custom_headerless_with_column_names(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.csv", "1,5,100\n2,6,200\n")
    df = readers.read_custom(f, "u", "i", "t", has_header=False, column_names=["u", "i", "t"])
    assert _rows(df) == [(1, 5, 100), (2, 6, 200)]


def test_custom_multichar_separator(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.txt", "u::i::t\na::b::1\nc::d::2\n")
    assert _rows(readers.read_custom(f, "u", "i", "t", separator="::")) == [("a", "b", 1), ("c", "d", 2)]
    f = _write(tmp_path / "d.txt", "u::i::t\na::b::1\nc::d\n")
    with pytest.raises(DataFormatError, match=r"line 3: expected 3 fields"):
        readers.read_custom(f, "u", "i", "t", separator="::")


def test_custom_parquet(tmp_path: Path) -> None:
    f = tmp_path / "x.parquet"
    pl.DataFrame({"uid": [3, 4], "sku": ["a", "b"], "ts": [7, 8]}).write_parquet(f)
    assert _rows(readers.read_custom(f, "uid", "sku", "ts")) == [(3, "a", 7), (4, "b", 8)]
    pl.DataFrame({"uid": [3, None], "sku": ["a", "b"], "ts": [7, 8]}).write_parquet(f)
    with pytest.raises(DataFormatError, match=r"x\.parquet: row 2: empty or missing user"):
        readers.read_custom(f, "uid", "sku", "ts")


def test_custom_missing_column_names_key(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DataFormatError) as err:
        readers.read_custom(f, "a", "zz", "c")
    msg = str(err.value)
    assert "'zz'" in msg and "['a', 'b', 'c']" in msg and "dataset.source.item_col" in msg
    with pytest.raises(DataFormatError, match="dataset.source.timestamp_col=7 is out of range"):
        readers.read_custom(f, 0, 1, 7)


def test_custom_bad_timestamp_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.tsv", "u\ti\tt\n1\t2\t3\n1\t3\t2020-01-01\n")
    with pytest.raises(DataFormatError, match=r"line 3: non-numeric timestamp '2020-01-01'"):
        readers.read_custom(f, "u", "i", "t", separator="\t")


def test_shifted_separator_is_caught(tmp_path: Path) -> None:
    f = _write(tmp_path / "ratings.dat", "1::2::5::100\n3:x:4::5::6\n")
    with pytest.raises(DataFormatError, match=r"line 2: expected 4 fields separated by '::'"):
        readers.read_movielens_dat(f)


def test_fast_and_careful_paths_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = "\n".join(f"{u}::{(u * 7) % 13}::{u % 5}.5::{1000 + u}" for u in range(2000))
    f = _write(tmp_path / "ratings.dat", rows + "\n")
    fast = readers.read_movielens_dat(f)
    monkeypatch.setattr(readers, "_read_repeated_char_separated", lambda *a: None)
    careful = readers.read_movielens_dat(f)
    assert fast.equals(careful) and fast.height == 2000


# ----------------------------------------------------------------------------------- float timestamps, ratings


def test_float_timestamps_are_read_as_floats_in_file_order(tmp_path: Path) -> None:
    """A fractional timestamp makes the column Float64 (MovieLens fast path, CSV and Parquet);
    whole-number floats ("1.2e9", "978300760.0") stay Int64; the values keep their order."""
    f = _write(tmp_path / "ratings.dat", "1::2::5::978300760.5\n1::3::4::978300760.25\n2::2::3::1.2e9\n")
    df = readers.read_movielens_dat(f)
    assert df.schema["timestamp"] == pl.Float64
    assert df["timestamp"].to_list() == [978300760.5, 978300760.25, 1.2e9]
    whole = _write(tmp_path / "whole.dat", "1::2::5::1.2e9\n1::3::4::978300760.0\n2::2::3:: 7 \n")
    assert _rows(readers.read_movielens_dat(whole)) == [(1, 2, 1_200_000_000), (1, 3, 978300760), (2, 2, 7)]
    csv = _write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1.5\n1,3,4.0,1.25\n")
    assert readers.read_movielens_csv(csv)["timestamp"].to_list() == [1.5, 1.25]
    pq = tmp_path / "x.parquet"
    pl.DataFrame({"u": [1, 2], "i": [3, 4], "t": [0.1 + 0.2, 1e-300]}).write_parquet(pq)
    assert readers.read_custom(pq, "u", "i", "t")["timestamp"].to_list() == [0.1 + 0.2, 1e-300]  # exact


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1.5.2"])
def test_timestamp_that_is_not_a_finite_number_names_its_line(tmp_path: Path, bad: str) -> None:
    f = _write(tmp_path / "ratings.dat", f"1::2::5::1.5\n1::3::4::{bad}\n")
    with pytest.raises(DataFormatError, match=rf"ratings\.dat: line 2: non-numeric timestamp '{re.escape(bad)}'"):
        readers.read_movielens_dat(f)


def test_ratings_read_on_request_from_every_format(tmp_path: Path) -> None:
    """rating=True adds a Float64 `rating` column (half stars kept); without it the frame has the
    canonical columns only."""
    dat = _write(tmp_path / "ratings.dat", "1::2::3.5::100\n1::3::5::101\n")
    assert readers.read_movielens_dat(dat, rating=True).rows() == [(1, 2, 100, 3.5), (1, 3, 101, 5.0)]
    assert readers.read_movielens_dat(dat).columns == list(CANONICAL_COLUMNS)
    tab = _write(tmp_path / "u.data", "1\t2\t3\t100\n")
    assert readers.read_movielens_tab(tab, rating=True)["rating"].to_list() == [3.0]
    csv = _write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,1,4.5,9\n")
    assert readers.read_movielens_csv(csv, rating=True).rows() == [(1, 1, 9, 4.5)]
    kaggle = _write(tmp_path / "Reviews.csv", KAGGLE_HEADER + "1,B1,U1,x,1,1,4,100,s,t\n")
    assert readers.read_amazon_kaggle_csv(kaggle, rating=True).rows() == [("U1", "B1", 100, 4.0)]
    snap = tmp_path / "finefoods.txt.gz"
    snap.write_bytes(gzip.compress(SNAP.encode("latin-1")))
    assert readers.read_amazon_snap(snap, rating=True).rows() == [
        ("A3SGXH7AUHU8GW", "B001E4KFG0", 1303862400, 5.0),
        ("A1D87F6ZCVE5NK", "B00813GRG4", 1346976000, 1.0),
    ]
    custom = _write(tmp_path / "c.csv", "u,i,stars,t\na,b,2,7\n")
    assert readers.read_custom(custom, "u", "i", "t", rating_col="stars").rows() == [("a", "b", 7, 2.0)]
    pq = tmp_path / "x.parquet"
    pl.DataFrame({"u": [1], "i": [2], "t": [3], "r": [4]}).write_parquet(pq)
    assert readers.read_custom(pq, "u", "i", "t", rating_col="r").rows() == [(1, 2, 3, 4.0)]


def test_bad_rating_names_its_line(tmp_path: Path) -> None:
    dat = _write(tmp_path / "ratings.dat", "1::2::3::100\n1::3::five::101\n")
    with pytest.raises(DataFormatError, match=r"line 2: non-numeric rating 'five'"):
        readers.read_movielens_dat(dat, rating=True)
    assert readers.read_movielens_dat(dat).height == 2  # not read, not checked
    snap = tmp_path / "finefoods.txt"
    snap.write_bytes(SNAP.replace("review/score: 1.0\n", "").encode("latin-1"))
    with pytest.raises(
        DataFormatError, match=r"line 14: expected a 'review/score:' line here but found 'review/time:'"
    ):
        readers.read_amazon_snap(snap, rating=True)
