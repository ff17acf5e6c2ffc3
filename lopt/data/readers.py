"""Raw-format readers: one function per format, each returning the canonical interaction frame.

Every reader returns a polars DataFrame with the columns ``user``, ``item``, ``timestamp``
(see :data:`lopt.types.CANONICAL_COLUMNS`), one row per interaction, in file order, and with
``rating=True`` a fourth column ``rating`` (Float64) for formats that have one.
``timestamp`` is Int64 when every value is an integer (``"1.2e9"`` counts: it is one), Float64
otherwise (e.g. ``978300760.5``); ``user``/``item`` are Int64 for formats with numeric ids and
String for string ids. Every rating is an interaction (``dataset.preprocess.min_rating`` drops
low ones later). Blank lines are skipped. Nothing is de-duplicated or filtered here (that is
preprocessing's job).

Parsing is vectorized (polars). A malformed file raises :class:`DataFormatError`, whose message
names the file, the 1-based line number, what is wrong and what to do; the offending line is
located by vectorized checks (a strict cast, a field count), never by a per-line Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from lopt.types import CANONICAL_COLUMNS

__all__ = [
    "DataFormatError",
    "read_movielens_tab",
    "read_movielens_dat",
    "read_movielens_csv",
    "read_amazon_kaggle_csv",
    "read_amazon_snap",
    "read_lastfm_tags_dates",
    "read_lastfm_tags_timestamps",
    "read_custom",
]

#: How a user/item column is typed: "int" (numeric ids required), "str" (kept as text) or
#: "auto" (Int64 when every value is an integer, String otherwise).
IdKind = Literal["int", "str", "auto"]
Column = str | int

_LINE = "_line"  # 1-based physical line number carried next to line-parsed rows
_PREVIEW = 120  # characters of an offending line shown in an error message


class DataFormatError(ValueError):
    """A raw interaction file does not have the expected format (names file, line and fix)."""


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def read_movielens_tab(path: str | Path, rating: bool = False) -> pl.DataFrame:
    """MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header.

    Returns the canonical frame with Int64 user/item/timestamp (plus ``rating``), one row per
    non-blank line.
    """
    hint = "u.data has 4 tab-separated fields: user item rating timestamp (integer ids, numeric rating and timestamp)"
    return _read_movielens_lines(path, "\t", hint, rating)


def read_movielens_dat(path: str | Path, rating: bool = False) -> pl.DataFrame:
    """MovieLens-1M/10M ``ratings.dat``: ``user::item::rating::timestamp``, no header.

    Returns the canonical frame with Int64 user/item/timestamp (plus ``rating``), one row per
    non-blank line.
    """
    hint = (
        "ratings.dat has 4 '::'-separated fields: user::item::rating::timestamp "
        "(integer ids, numeric rating and timestamp)"
    )
    return _read_movielens_lines(path, "::", hint, rating)


def _read_movielens_lines(path: str | Path, separator: str, hint: str, rating: bool) -> pl.DataFrame:
    """``user<sep>item<sep>rating<sep>timestamp`` lines, no header (the rating read when asked)."""
    fields: dict[str, Column] = {"user": 0, "item": 1, "timestamp": 3}
    if rating:
        fields["rating"] = 2
    return _read_delimited_lines(Path(path), separator, fields, n_fields=4, id_kind="int", hint=hint)


def read_movielens_csv(path: str | Path, rating: bool = False) -> pl.DataFrame:
    """MovieLens-20M/25M/latest ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).

    Returns the canonical frame with Int64 user/item/timestamp (plus ``rating``).
    """
    fields: dict[str, Column] = {"user": "userId", "item": "movieId", "timestamp": "timestamp"}
    if rating:
        fields["rating"] = "rating"
    hint = (
        "a MovieLens ratings.csv with header userId,movieId,rating,timestamp, integer ids and numeric "
        "rating and timestamp (for "
        "another layout use dataset=custom and set dataset.source.user_col/item_col/timestamp_col)"
    )
    return _read_csv(Path(path), fields, id_kind="int", key_hint=hint)


def read_amazon_kaggle_csv(path: str | Path, rating: bool = False) -> pl.DataFrame:
    """Amazon Fine Food ``Reviews.csv`` (Kaggle): columns ``ProductId, UserId, Time`` are used
    (and ``Score``, the 1–5 star rating, with ``rating=True``).

    Quoted free-text fields may contain commas, quotes and newlines. Returns the canonical frame
    with String user (``UserId``) and item (``ProductId``) ids and Int64 timestamp (``Time``).
    """
    fields: dict[str, Column] = {"user": "UserId", "item": "ProductId", "timestamp": "Time"}
    if rating:
        fields["rating"] = "Score"
    hint = (
        "the Kaggle Reviews.csv with columns Id,ProductId,UserId,...,Score,Time,... and a numeric Time "
        "(for the SNAP finefoods.txt.gz set dataset.source.format=snap; for another layout use dataset=custom)"
    )
    return _read_csv(Path(path), fields, id_kind="str", key_hint=hint)


#: The keys of a SNAP review block that are read, in their order within a block.
_SNAP_KEYS = {"item": "product/productId:", "user": "review/userId:", "timestamp": "review/time:"}
_SNAP_RATING_KEYS = {
    "item": "product/productId:",
    "user": "review/userId:",
    "rating": "review/score:",
    "timestamp": "review/time:",
}


def read_amazon_snap(path: str | Path, rating: bool = False) -> pl.DataFrame:
    """Amazon Fine Food SNAP release ``finefoods.txt(.gz)``: blocks of ``key: value`` lines.

    Each review block holds ``product/productId``, ``review/userId``, ``review/score`` and
    ``review/time`` lines (in that order, among others such as ``review/text``); blocks are
    separated by blank lines. ``review/score`` is read with ``rating=True`` only. Bytes that are
    not UTF-8 are replaced. Returns the canonical frame with String user/item ids and Int64
    timestamp, one row per block.
    """
    path = _existing(path)
    keys = _SNAP_RATING_KEYS if rating else _SNAP_KEYS
    prefixes = list(keys.values())
    n_keys = len(prefixes)
    expected_block = ", ".join(p.rstrip(":") for p in prefixes)
    block_hint = f"each SNAP review block to list {expected_block} once each, in this order"
    lines = _read_lines(path)
    text = pl.col("line")
    code = pl.when(text.str.starts_with(prefixes[0])).then(0)
    for k, prefix in enumerate(prefixes[1:], start=1):
        code = code.when(text.str.starts_with(prefix)).then(k)
    keyed = lines.with_columns(code.alias("key")).filter(pl.col("key").is_not_null())
    # The kept keys must repeat in block order: product, user, [score,] time, product, ...
    expected = pl.int_range(pl.len()) % n_keys
    bad = keyed.with_row_index("k").filter(pl.col("key") != expected).head(1)
    if bad.height:
        k, key = bad["k"][0], bad["key"][0]
        want = prefixes[k % n_keys]
        _raise(
            path,
            int(bad[_LINE][0]),
            f"expected a '{want}' line here but found '{prefixes[key]}' (a review block lacks or repeats a field)",
            block_hint,
            bad["line"][0],
        )
    if keyed.height % n_keys:
        last = keyed.tail(1)
        _raise(
            path,
            int(last[_LINE][0]),
            "the last review block is incomplete (the file may be truncated; download it again)",
            block_hint,
            last["line"][0],
        )
    if keyed.height == 0:
        _raise_empty(path, f"expected blocks of {expected_block} lines")
    value = text.str.splitn(":", 2).struct.field("field_1").str.strip_chars()
    keyed = keyed.with_columns(value.alias("value"))
    raw = pl.DataFrame(
        {
            **{canon: keyed["value"].gather_every(n_keys, k) for k, canon in enumerate(keys)},
            _LINE: keyed[_LINE].gather_every(n_keys, 0),
        }
    )
    try:
        return _finish(raw.drop(_LINE), "str")
    except _BadRow as bad:
        _raise(
            path,
            int(raw[_LINE][bad.row]),
            bad.what,
            "the review block starting at that line to have non-empty ids, a numeric 'review/score: <stars>' "
            "(dataset.preprocess.min_rating) and 'review/time: <unix seconds>'",
        )
        raise


#: The header lines of the two HetRec 2011 Last.fm tag-assignment files (hetrec2011-lastfm-2k.zip).
_LASTFM_DATES_HEADER = ("userID", "artistID", "tagID", "day", "month", "year")
_LASTFM_TIMESTAMPS_HEADER = ("userID", "artistID", "tagID", "timestamp")


def read_lastfm_tags_dates(path: str | Path) -> pl.DataFrame:
    """HetRec 2011 Last.fm ``user_taggedartists.dat``: a header line
    ``userID<TAB>artistID<TAB>tagID<TAB>day<TAB>month<TAB>year``, then one tag assignment per line.

    Each tag assignment is an interaction of the user with the artist (a user who tagged an
    artist with three tags gives three rows; preprocessing keeps the earliest). The timestamp is
    the unix time of the date's midnight UTC (Int64 seconds), so its order is the order of the
    dates, the same as the order of ``user_taggedartists-timestamps.dat``. Returns the canonical
    frame with Int64 user (``userID``), item (``artistID``) and timestamp.
    """
    path = _existing(path)
    hint = (
        "user_taggedartists.dat of hetrec2011-lastfm-2k.zip: a header line "
        + "\\t".join(_LASTFM_DATES_HEADER)
        + ", then 6 tab-separated integers per line (a real calendar date)"
    )
    raw = _read_hetrec_lines(path, _LASTFM_DATES_HEADER, hint)
    parts = {name: _as_int(pl.col(name)) for name in ("day", "month", "year")}
    iso = pl.format("{}-{}-{}", parts["year"], parts["month"], parts["day"])
    dates = raw.select(*[e.alias(n) for n, e in parts.items()], iso.str.to_date("%Y-%m-%d", strict=False).alias("date"))
    bad = dates.with_row_index("row").filter(pl.col("date").is_null()).head(1)
    if bad.height:
        row = int(bad["row"][0])
        d, m, y = (raw[n][row] for n in ("day", "month", "year"))
        _raise(path, int(raw[_LINE][row]), f"day {d!r}, month {m!r}, year {y!r} is not a date", hint, raw["line"][row])
    ids = raw.select(pl.col("userID").alias("user"), pl.col("artistID").alias("item"))
    try:
        out = _finish(ids, "int")
    except _BadRow as err:
        _raise(path, int(raw[_LINE][err.row]), err.what, hint, raw["line"][err.row])
        raise
    return out.with_columns(dates["date"].dt.epoch("s").alias("timestamp"))


def read_lastfm_tags_timestamps(path: str | Path) -> pl.DataFrame:
    """HetRec 2011 Last.fm ``user_taggedartists-timestamps.dat``: a header line
    ``userID<TAB>artistID<TAB>tagID<TAB>timestamp``, then one tag assignment per line, the
    timestamp in unix milliseconds.

    Each tag assignment is an interaction of the user with the artist (preprocessing keeps the
    earliest per pair). The timestamp is returned in seconds: Int64 when every millisecond value
    is a whole second (as in the released file, whose values are local midnights), Float64
    otherwise. Returns the canonical frame with Int64 user (``userID``) and item (``artistID``).
    """
    path = _existing(path)
    hint = (
        "user_taggedartists-timestamps.dat of hetrec2011-lastfm-2k.zip: a header line "
        + "\\t".join(_LASTFM_TIMESTAMPS_HEADER)
        + ", then 4 tab-separated integers per line (the last in unix milliseconds)"
    )
    raw = _read_hetrec_lines(path, _LASTFM_TIMESTAMPS_HEADER, hint)
    fields = raw.select(
        pl.col("userID").alias("user"), pl.col("artistID").alias("item"), pl.col("timestamp").alias("timestamp")
    )
    try:
        out = _finish(fields, "int")
    except _BadRow as err:
        _raise(path, int(raw[_LINE][err.row]), err.what, hint, raw["line"][err.row])
        raise
    ms = out["timestamp"]
    seconds = ms // 1000 if ms.dtype == pl.Int64 and (ms % 1000 == 0).all() else ms.cast(pl.Float64) / 1000
    return out.with_columns(seconds.alias("timestamp"))


def _read_hetrec_lines(path: Path, header: tuple[str, ...], hint: str) -> pl.DataFrame:
    """The non-blank lines of a tab-separated HetRec file whose first line is ``header``: one
    String column per header name plus ``line`` (the text) and ``_line`` (1-based number).
    Raises :class:`DataFormatError` for another header or a line with another field count."""
    lines = _read_lines(path)
    if lines["line"].null_count():
        lines = lines.filter(pl.col("line").is_not_null())  # blank lines
    if lines.height == 0:
        _raise_empty(path, hint)
    first = lines["line"][0]
    found = tuple(name.strip() for name in first.split("\t"))
    if found != header:
        _raise(
            path,
            int(lines[_LINE][0]),
            f"the header is {found}, not {header} (is this another file of the archive?)",
            hint,
            first,
        )
    lines = lines.slice(1)
    if lines.height == 0:
        _raise_empty(path, hint)
    n_tabs = pl.col("line").str.count_matches("\t", literal=True)
    wrong = lines.filter(n_tabs != len(header) - 1).head(1)
    if wrong.height:
        text = wrong["line"][0]
        found_fields = text.count("\t") + 1
        _raise(
            path,
            int(wrong[_LINE][0]),
            f"expected {len(header)} tab-separated fields, found {found_fields}",
            hint,
            text,
        )
    fields = pl.col("line").str.splitn("\t", len(header)).struct.rename_fields(list(header))
    return lines.with_columns(fields.alias("f")).unnest("f")


def read_custom(
    path: str | Path,
    user_col: Column,
    item_col: Column,
    timestamp_col: Column | None,
    separator: str = ",",
    has_header: bool = True,
    file_format: Literal["csv", "parquet", "auto"] = "auto",
    column_names: Sequence[str] | None = None,
    rating_col: Column | None = None,
) -> pl.DataFrame:
    """Any CSV/TSV/Parquet file with user, item and (optionally) timestamp and rating columns.

    Columns are given by name (a header name, a Parquet column, or one of ``column_names`` for a
    headerless file) or by 0-based position. ``timestamp_col=None`` means "use file order": the
    timestamp is then the 0-based row index. ``separator`` may have several characters (e.g.
    ``"::"``); such files are split per line and cannot quote fields. Ids are Int64 when every
    value is an integer, String otherwise; the timestamp must be a number (Int64 when every
    value is an integer, Float64 otherwise; Parquet datetimes/dates become unix seconds).
    ``rating_col``: a numeric column returned as ``rating`` (Float64); None: the file has no
    rating. ``file_format="auto"`` picks Parquet for ``.parquet``/``.pq`` files and CSV otherwise.
    """
    path = _existing(path)
    if file_format == "auto":
        file_format = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    fields: dict[str, Column] = {"user": user_col, "item": item_col}
    if timestamp_col is not None:
        fields["timestamp"] = timestamp_col
    if rating_col is not None:
        fields["rating"] = rating_col
    if file_format == "parquet":
        return _read_parquet(path, fields)
    if file_format != "csv":
        raise ValueError(f"dataset.source.file_format must be 'csv', 'parquet' or 'auto', got {file_format!r}")
    hint = (
        "the layout set by dataset.source.separator, has_header, column_names and the "
        "*_col keys, with numeric timestamps and ratings"
    )
    if len(separator) == 1:
        return _read_csv(
            path,
            fields,
            separator=separator,
            has_header=has_header,
            column_names=column_names,
            id_kind="auto",
            key_hint=hint,
        )
    return _read_delimited_lines(
        path,
        separator,
        fields,
        n_fields=None,
        id_kind="auto",
        hint=hint,
        has_header=has_header,
        column_names=column_names,
    )


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"interaction file not found: {path}. Point dataset.source.path=/path/to/the/file at an existing file."
        )
    return path


def _read_lines(path: Path) -> pl.DataFrame:
    """Every physical line of ``path`` (gzip allowed) as ``line`` (String; null when blank)
    plus ``_line`` (1-based line number). Bytes that are not UTF-8 are replaced."""
    try:
        df = pl.read_csv(
            path,
            has_header=False,
            separator="\x00",
            quote_char=None,
            schema={"line": pl.String},
            truncate_ragged_lines=True,
            encoding="utf8-lossy",
        )
    except pl.exceptions.NoDataError:
        df = pl.DataFrame({"line": []}, schema={"line": pl.String})
    return df.with_row_index(_LINE, offset=1)


def _read_delimited_lines(
    path: str | Path,
    separator: str,
    fields: dict[str, Column],
    n_fields: int | None,
    id_kind: IdKind,
    hint: str,
    has_header: bool = False,
    column_names: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Split each non-blank line on the literal ``separator`` (no quoting) into ``n_fields``
    fields (inferred from the first non-blank line when None) and map ``fields`` to canonical
    columns. Every line must have exactly ``n_fields`` fields."""
    path = _existing(path)
    if id_kind == "int" and n_fields is not None and not has_header and column_names is None:
        fast = _read_repeated_char_separated(path, separator, n_fields, fields)
        if fast is not None:
            return fast
    lines = _read_lines(path)
    if lines["line"].null_count():
        lines = lines.filter(pl.col("line").is_not_null())  # blank lines
    if lines.height == 0:
        _raise_empty(path, hint)
    first = lines["line"][0]
    if n_fields is None:
        n_fields = first.count(separator) + 1
    header: list[str] | None = None
    if has_header:
        header = [h.strip() for h in first.split(separator)]
        lines = lines.slice(1)
    names = _column_names(path, header, column_names, n_fields)
    positions = {canon: _resolve(path, col, names, canon) for canon, col in fields.items()}
    # splitn leaves a too-short line's last fields null and a too-long line's rest in the last.
    parts = lines.select(pl.col("line").str.splitn(separator, n_fields).alias("f"), _LINE)
    parts = parts.unnest("f")
    last = parts[f"field_{n_fields - 1}"]
    ragged = last.null_count() > 0 or (
        n_fields - 1 not in positions.values() and last.str.contains(separator, literal=True).any()
    )
    raw = parts.select(*[pl.col(f"field_{p}").alias(c) for c, p in positions.items()], _LINE)
    try:
        if ragged:
            raise _BadRow(raw.height, "")  # the field-count check below finds the line
        return _finish(raw, id_kind)
    except _BadRow as bad:
        n_sep = pl.col("line").str.count_matches(separator, literal=True)
        wrong = lines.with_row_index("row").filter(n_sep != n_fields - 1).head(1)
        if wrong.height and wrong["row"][0] <= bad.row:
            found = wrong["line"][0].count(separator) + 1
            _raise(
                path,
                int(wrong[_LINE][0]),
                f"expected {n_fields} fields separated by {separator!r}, found {found}",
                hint,
                wrong["line"][0],
            )
        _raise(path, int(lines[_LINE][bad.row]), bad.what, hint, lines["line"][bad.row])
        raise


def _read_repeated_char_separated(
    path: Path, separator: str, n_fields: int, fields: dict[str, Column]
) -> pl.DataFrame | None:
    """Fast path for integer files split by one repeated character (``\t``, ``::``): polars'
    native reader on the single character, every ``len(separator)``-th column being a field and
    the columns between them required empty; ids and timestamps Int64, a rating Float64.
    Returns None on any irregularity, a non-integer timestamp included (the careful per-line
    path then parses the file again, types it and locates any problem)."""
    if len(set(separator)) != 1 or not all(isinstance(c, int) for c in fields.values()):
        return None
    k = len(separator)
    n_cols = (n_fields - 1) * k + 1
    # k spare columns catch extra fields (they must stay empty; empty fields read as null).
    names = [f"column_{i + 1}" for i in range(n_cols + k)]
    gaps = [names[i] for i in range(n_cols + k) if i % k or i >= n_cols]
    wanted = {canon: names[pos * k] for canon, pos in fields.items()}
    dtypes = {col: pl.Float64 if canon == "rating" else pl.Int64 for canon, col in wanted.items()}
    schema = {c: dtypes.get(c, pl.String) for c in names}
    try:
        df = pl.read_csv(
            path,
            has_header=False,
            separator=separator[0],
            quote_char=None,
            schema=schema,
            columns=sorted(set(wanted.values()) | set(gaps), key=names.index),
            missing_columns="insert",
            truncate_ragged_lines=True,
            encoding="utf8-lossy",
        )
    except (pl.exceptions.PolarsError, ValueError):
        return None
    out = df.select(pl.col(col).alias(canon) for canon, col in wanted.items())
    if "rating" in out.columns:
        out = out.with_columns(_finite(out["rating"]))
    if out.null_count().row(0) != (0,) * out.width:
        return None  # blank lines, short lines or empty fields: let the careful path decide
    if gaps and df.select(pl.any_horizontal(pl.col(gaps).is_not_null()).any()).item():
        return None
    return out.select(_output_columns(out))


def _read_csv(
    path: str | Path,
    fields: dict[str, Column],
    id_kind: IdKind,
    key_hint: str,
    separator: str = ",",
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Read the ``fields`` columns of a quoted CSV (RFC 4180: fields may hold separators, quotes
    and newlines) as text, then type them. Rows whose wanted fields are all empty (blank lines)
    are skipped. On any problem, :func:`_diagnose_csv` finds the 1-based line."""
    path = _existing(path)
    opts = dict(separator=separator, quote_char='"', encoding="utf8-lossy")
    try:
        head = pl.read_csv(path, has_header=False, n_rows=1, infer_schema=False, truncate_ragged_lines=True, **opts)
    except pl.exceptions.NoDataError:
        _raise_empty(path, key_hint)
    except pl.exceptions.PolarsError as err:
        raise DataFormatError(
            f"{path}: cannot read the first line as {separator!r}-separated CSV ({err}). {key_hint}."
        ) from err
    n_cols = head.width
    header = [str(v).strip() for v in head.row(0)] if has_header else None
    names = _column_names(path, header, column_names, n_cols)
    positions = {canon: _resolve(path, col, names, canon) for canon, col in fields.items()}
    # One spare column beyond the first line's width catches rows with extra fields.
    names_in_file = [f"column_{i + 1}" for i in range(n_cols + 1)]
    wanted = sorted(set(positions.values()) | {n_cols})
    try:
        df = _read_csv_as_text(path, names_in_file, opts, columns=[names_in_file[i] for i in wanted])
    except pl.exceptions.PolarsError as err:
        _diagnose_csv(path, positions, n_cols, has_header, id_kind, key_hint, opts, err)
        raise  # unreachable: _diagnose_csv always raises
    df = df.slice(int(has_header))
    if df[names_in_file[n_cols]].null_count() < df.height:
        _diagnose_csv(path, positions, n_cols, has_header, id_kind, key_hint, opts, None)
    raw = df.select(pl.col(names_in_file[pos]).alias(canon) for canon, pos in positions.items())
    raw = raw.filter(~pl.all_horizontal(pl.all().is_null()))
    if raw.height == 0:
        _raise_empty(path, key_hint)
    try:
        return _finish(raw, id_kind)
    except _BadRow:
        _diagnose_csv(path, positions, n_cols, has_header, id_kind, key_hint, opts, None)
        raise


def _read_csv_as_text(path: Path, names: list[str], opts: dict, columns: list[str] | None = None) -> pl.DataFrame:
    """The CSV's fields as String columns ``names`` (no header; a row's missing fields are null,
    fields beyond ``len(names)`` are dropped); ``columns``: only these of ``names``."""
    return pl.read_csv(
        path,
        has_header=False,
        schema={c: pl.String for c in names},
        missing_columns="insert",
        truncate_ragged_lines=True,
        columns=columns,
        **opts,
    )


def _diagnose_csv(
    path: Path,
    positions: dict[str, int],
    n_cols: int,
    has_header: bool,
    id_kind: IdKind,
    hint: str,
    opts: dict,
    err: Exception | None,
) -> None:
    """Re-read every field of a CSV known to be malformed, give each row its 1-based starting
    line (1 + the newlines of the rows before it) and raise :class:`DataFormatError` for the
    first bad row: too many fields, a missing value or a value of the wrong type."""
    cols = [f"column_{i + 1}" for i in range(n_cols + 1)]  # a spare one catches extra fields
    full = _read_csv_as_text(path, cols, opts)
    newlines = pl.sum_horizontal(pl.col(cols).str.count_matches("\n", literal=True).fill_null(0))
    full = full.with_columns((1 + (1 + newlines).cum_sum().shift(1, fill_value=0)).alias(_LINE))
    blank = pl.all_horizontal(pl.col(cols).is_null())
    rows = full.slice(int(has_header)).filter(~blank)
    extra = rows.filter(pl.col(cols[-1]).is_not_null()).head(1)
    raw = rows.select(*[pl.col(cols[p]).alias(c) for c, p in positions.items()], pl.col(_LINE))
    first_bad = _first_bad_row(raw, id_kind)
    if first_bad is not None:
        first_bad = (int(raw[_LINE][first_bad[0]]), first_bad[1])
    if extra.height and (first_bad is None or extra[_LINE][0] <= first_bad[0]):
        _raise(
            path,
            int(extra[_LINE][0]),
            f"more than {n_cols} fields (the first line has "
            f"{n_cols}); a field containing the separator {opts['separator']!r} must be "
            f'quoted with "..."',
            hint,
        )
    if first_bad is not None:
        _raise(path, first_bad[0], first_bad[1], hint)
    raise DataFormatError(f"{path}: cannot be parsed as {opts['separator']!r}-separated CSV ({err}). {hint}.") from err


def _read_parquet(path: Path, fields: dict[str, Column]) -> pl.DataFrame:
    """Read ``fields`` of a Parquet file; report bad values by 1-based row number."""
    names = list(pl.read_parquet_schema(path).keys())
    positions = {canon: _resolve(path, col, names, canon) for canon, col in fields.items()}
    df = pl.read_parquet(path, columns=sorted({names[p] for p in positions.values()}))
    out = []
    for canon, pos in positions.items():
        col, dtype = pl.col(names[pos]), df.schema[names[pos]]
        if isinstance(dtype, (pl.Datetime, pl.Date)):
            col = col.dt.epoch("s")
        elif dtype.is_float() and df.select((col.round() == col) | col.is_null()).to_series().all():
            col = col.cast(pl.Int64)  # integral floats (e.g. pandas ids with NaN) become ints
        out.append(col.cast(pl.String).alias(canon))
    raw = df.select(out)
    if raw.height == 0:
        _raise_empty(path, "a Parquet file with rows")
    try:
        return _finish(raw, "auto")
    except _BadRow as bad:
        _raise(
            path,
            bad.row + 1,
            bad.what,
            "non-null ids, numeric or datetime timestamps and numeric ratings in the columns named by "
            "dataset.source.*_col",
            unit="row",
        )
        raise


# --------------------------------------------------------------------------------------------
# Typing, validation and errors
# --------------------------------------------------------------------------------------------


class _BadRow(Exception):
    """Internal: the first bad row (0-based index into the raw frame) and what is wrong; the
    caller knows how to turn the row into a file line."""

    def __init__(self, row: int, what: str) -> None:
        super().__init__(what)
        self.row, self.what = row, what


def _finish(raw: pl.DataFrame, id_kind: IdKind) -> pl.DataFrame:
    """Type a raw String frame (``user``, ``item``, optional ``timestamp`` and ``rating``) into
    the canonical frame; a missing timestamp column becomes the 0-based row index (file order).

    Fast path: one cast per column. Only when a value fails (null, empty id, non-integer where
    an integer is required, a timestamp or rating that is not a finite number) does
    :func:`_first_bad_row` locate the first bad row, raised as :class:`_BadRow`.
    """
    if "timestamp" in raw.columns:
        timestamp = _timestamp_series(raw["timestamp"])
    else:
        timestamp = pl.int_range(raw.height, dtype=pl.Int64, eager=True)
    columns = {
        "user": _id_series(raw["user"], id_kind),
        "item": _id_series(raw["item"], id_kind),
        "timestamp": timestamp,
    }
    if "rating" in raw.columns:
        columns["rating"] = _finite(_float_series(raw["rating"]))
    out = pl.DataFrame(columns)
    bad = any(out.null_count().row(0)) or any(
        out[c].dtype == pl.String and (out[c].str.len_bytes() == 0).any() for c in ("user", "item")
    )
    if bad:
        found = _first_bad_row(raw, id_kind)
        assert found is not None
        raise _BadRow(*found)
    return out


def _output_columns(frame: pl.DataFrame) -> list[str]:
    """The canonical columns, then ``rating`` when the frame has it."""
    return [*CANONICAL_COLUMNS, *(["rating"] if "rating" in frame.columns else [])]


def _int_series(values: pl.Series) -> pl.Series:
    """Int64 cast; null where a value is not an integer (surrounding spaces are allowed)."""
    out = values.cast(pl.Int64, strict=False)
    if out.null_count() != values.null_count():
        out = values.str.strip_chars().cast(pl.Int64, strict=False)
    return out


def _float_series(values: pl.Series) -> pl.Series:
    """Float64 cast; null where a value is not a number (surrounding spaces are allowed)."""
    out = values.cast(pl.Float64, strict=False)
    if out.null_count() != values.null_count():
        out = values.str.strip_chars().cast(pl.Float64, strict=False)
    return out


def _finite(values: pl.Series) -> pl.Series:
    """``values`` with NaN and ±inf made null (so that the bad-row check reports them)."""
    return values.set(~values.is_finite().fill_null(True), None)


#: Float timestamps that are whole numbers below this are exact in a float64 and become Int64.
_EXACT_FLOAT_INT = 2**53


def _timestamp_series(values: pl.Series) -> pl.Series:
    """Int64 when every value is an integer, written as one (``978300760``) or as a float of a
    whole number (``"1.2e9"``, ``"978300760.0"``); Float64 otherwise (``978300760.5``); null
    where a value is not a finite number. Only the order of timestamps is used downstream, and
    a Float64 column orders as its values do."""
    out = _int_series(values)
    if out.null_count() == values.null_count():
        return out
    floats = _finite(_float_series(values))
    if floats.null_count() != values.null_count():
        return out  # some value is not a number: the bad-row check names it
    whole = (floats == floats.round()) & (floats.abs() < _EXACT_FLOAT_INT)
    if whole.fill_null(True).all():
        return floats.cast(pl.Int64)
    return floats


def _id_series(values: pl.Series, id_kind: IdKind) -> pl.Series:
    if id_kind == "str":
        return values.str.strip_chars()
    out = _int_series(values)
    if id_kind == "auto" and out.null_count() != values.null_count():
        return values.str.strip_chars()
    return out


def _as_int(col: pl.Expr) -> pl.Expr:
    return col.str.strip_chars().cast(pl.Int64, strict=False)


def _as_finite_float(col: pl.Expr) -> pl.Expr:
    """The value as a float64; null when it is not a number or not finite."""
    value = col.str.strip_chars().cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value)


def _first_bad_row(raw: pl.DataFrame, id_kind: IdKind) -> tuple[int, str] | None:
    """(row index, problem) of the first row with a missing value, a non-integer id where an
    integer is required, or a timestamp or rating that is not a finite number; None when every
    row is fine. Vectorized: a strict cast per column, then the first flagged row."""
    checks: list[tuple[str, str, pl.Expr]] = []  # (column, problem, flag)
    for canon in ("user", "item", "timestamp", "rating"):
        if canon not in raw.columns:
            continue
        col = pl.col(canon)
        empty = col.is_null() | (col.str.strip_chars().str.len_bytes() == 0)
        checks.append((canon, f"empty or missing {canon} field", empty))
        if canon in ("timestamp", "rating"):
            checks.append((canon, f"non-numeric {canon}", ~empty & _as_finite_float(col).is_null()))
        elif id_kind == "int":
            checks.append((canon, f"non-integer {canon} id", ~empty & _as_int(col).is_null()))
    flags = raw.select(*[e.alias(f"b{k}") for k, (_, _, e) in enumerate(checks)])
    idx = flags.select(pl.any_horizontal(pl.all()).arg_true().first()).item()
    if idx is None:
        return None
    k = next(k for k, flag in enumerate(flags.row(idx)) if flag)
    canon, what, _ = checks[k]
    if what.startswith("non-"):
        what = f"{what} {raw[canon][idx]!r}"
    return idx, what


def _column_names(path: Path, header: list[str] | None, column_names: Sequence[str] | None, n_fields: int) -> list[str]:
    if column_names is not None:
        column_names = [str(c) for c in column_names]
        if len(column_names) != n_fields:
            raise DataFormatError(
                f"{path}: dataset.source.column_names has {len(column_names)} names but the "
                f"file's first line has {n_fields} fields; give one name per field."
            )
        return column_names
    return header if header is not None else [f"column_{i + 1}" for i in range(n_fields)]


def _resolve(path: Path, col: Column, names: list[str], canon: str) -> int:
    """0-based position of ``col`` (a name in ``names`` or a position) for canonical ``canon``."""
    key = f"dataset.source.{canon}_col"
    if isinstance(col, bool):
        raise DataFormatError(f"{key} must be a column name or a 0-based position, got {col!r}")
    if isinstance(col, int):
        if not 0 <= col < len(names):
            raise DataFormatError(
                f"{path}: {key}={col} is out of range: the file has {len(names)} columns {names}; change {key}."
            )
        return col
    if col not in names:
        raise DataFormatError(
            f"{path}: column {col!r} ({canon}) not found; the file's columns "
            f"are {names}. Change {key} (or dataset.source.has_header / "
            f"column_names / separator if the columns look wrong)."
        )
    return names.index(col)


def _raise(path: Path, line: int, what: str, hint: str, text: str | None = None, unit: str = "line") -> None:
    shown = ""
    if text is not None:
        shown = f" [{text[:_PREVIEW]!r}{'...' if len(text) > _PREVIEW else ''}]"
    raise DataFormatError(
        f"{path}: {unit} {line}: {what}{shown}. Expected: {hint}. Fix or "
        f"delete that {unit}, or, if the whole file has another layout, "
        f"check dataset.source.path and dataset.source.format."
    )


def _raise_empty(path: Path, hint: str) -> None:
    raise DataFormatError(f"{path}: no interactions found (the file is empty or blank). {hint}.")
