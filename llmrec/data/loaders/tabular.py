"""Generic logs: CSV, TSV, JSON lines or Parquet, with a column mapping from the config.

``columns`` maps a canonical field to the source column; unmapped fields default to the
column of the same name. Interaction fields: ``user_id``, ``item_id`` (required),
``timestamp`` (numbers in ``timestamp_unit`` or date strings; without it file order is the
order), ``action`` (kept verbatim, e.g. ``view``/``cart``/``purchase``; without it every event is
``rate`` when there is a rating, else ``view``), ``rating``. Catalog fields (in
``catalog_path``, or in the log itself when there is no catalog file): ``title`` (required),
``categories`` (a list, or text split on ``list_sep``), ``catalog_item_id`` (when the catalog
names its id column differently), and ``attr.NAME`` for attributes (default: every other
catalog column).

Line numbers in messages are the file's lines (CSV/TSV: the header is line 1; JSON lines:
one record per line; Parquet: row number + 1).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.loaders.base import LoadedData, LoadOptions, keep_rows, make_frame
from llmrec.data.schema import Catalog, Item
from llmrec.data.validate import (
    BadRows,
    DataError,
    build_catalog,
    decode_text,
    parse_numbers,
    read_json_lines,
)

INTERACTION_FIELDS = ("user_id", "item_id", "timestamp", "action", "rating")
CATALOG_FIELDS = ("title", "categories", "catalog_item_id")
_SKIPPED = re.compile(r"Skipping line (\d+): (.*)")


def load_tabular(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """Load an interaction log (and its catalog) in any supported tabular format."""
    options = options or LoadOptions()
    bad_rows = BadRows(options.on_bad_row)
    mapping = _check_mapping(options.columns)
    log_file = Path(path)
    table, lines = read_table(log_file, bad_rows)
    frame = _interactions(table, lines, log_file, mapping, options, bad_rows)
    files = {"interactions": log_file}
    if options.catalog_path is not None:
        catalog_file = Path(options.catalog_path)
        catalog_table, catalog_lines = read_table(catalog_file, bad_rows)
        catalog = _catalog(catalog_table, catalog_lines, catalog_file, mapping, options, bad_rows)
        files["catalog"] = catalog_file
    elif mapping.get("title", "title") in table.columns:
        firsts = ~table[mapping.get("item_id", "item_id")].duplicated().to_numpy()
        catalog = _catalog(table[firsts], lines[firsts], log_file, mapping, options, bad_rows, log_columns=True)
    else:
        raise DataError("no catalog: set data.catalog_path or map a title column (data.columns.title)", log_file)
    return LoadedData(frame, catalog, files, bad_rows, {"format": f"tabular-{table_format(log_file)}"})


def table_format(path: Path) -> str:
    """``csv`` | ``tsv`` | ``jsonl`` | ``parquet`` from the file name (``.gz`` allowed for text)."""
    name = path.name.lower().removesuffix(".gz")
    for suffixes, kind in (((".csv",), "csv"), ((".tsv", ".tab"), "tsv"), ((".jsonl", ".json"), "jsonl"), ((".parquet",), "parquet")):
        if name.endswith(suffixes):
            return kind
    raise DataError("unknown table format (expected .csv, .tsv, .jsonl, .json or .parquet)", path)


def read_table(path: Path, bad_rows: BadRows) -> tuple[pd.DataFrame, np.ndarray]:
    """Read any supported table as text/object columns plus each row's 1-based line number."""
    kind = table_format(path)
    if not path.is_file():
        raise DataError("file does not exist", path)
    if kind == "parquet":
        table = pd.read_parquet(path)
        return table, np.arange(1, len(table) + 1)
    if kind == "jsonl":
        records, numbers = read_json_lines(path, bad_rows)
        return pd.DataFrame.from_records(records), np.asarray(numbers, dtype="int64")
    return _read_delimited_table(path, "," if kind == "csv" else "\t", bad_rows)


def _read_delimited_table(path: Path, sep: str, bad_rows: BadRows) -> tuple[pd.DataFrame, np.ndarray]:
    text = decode_text(path, "utf-8", bad_rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = pd.read_csv(
                io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                on_bad_lines="error" if bad_rows.mode == "error" else "warn",
            )  # fmt: skip
        except pd.errors.ParserError as err:
            match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
            if match is None:
                raise DataError(f"cannot parse as {'CSV' if sep == ',' else 'TSV'} ({err})", path) from None
            expected, line, saw = match.groups()
            raise DataError(f"expected {expected} columns, found {saw}", path, int(line)) from None
        except pd.errors.EmptyDataError:
            raise DataError("file is empty (expected a header line)", path, 1) from None
    skipped = set()
    for warning in caught:
        for line, reason in _SKIPPED.findall(str(warning.message)):
            skipped.add(int(line))
            bad_rows.report(reason.strip().replace("fields", "columns"), path, int(line))
    lines = _row_lines(table, skipped, quoted='"' in text)
    blank = (table == "").all(axis=1).to_numpy() if len(table.columns) else np.zeros(len(table), dtype=bool)
    return table[~blank].reset_index(drop=True), lines[~blank]


def _row_lines(table: pd.DataFrame, skipped: set[int], quoted: bool) -> np.ndarray:
    """Line of each parsed row: header is line 1; skipped bad lines and quoted newlines shift later rows."""
    extra = np.zeros(len(table), dtype="int64")
    if quoted:
        extra = table.apply(lambda col: col.str.count("\n")).sum(axis=1).to_numpy(dtype="int64")
    lines = np.empty(len(table), dtype="int64")
    line = 2
    for position in range(len(table)):
        while line in skipped:
            line += 1
        lines[position] = line
        line += 1 + int(extra[position])
    return lines


def _check_mapping(columns: dict[str, str]) -> dict[str, str]:
    known = INTERACTION_FIELDS + CATALOG_FIELDS
    unknown = [k for k in columns if k not in known and not k.startswith("attr.")]
    if unknown:
        raise DataError(f"unknown data.columns key(s) {unknown}; known: {list(known)} and attr.NAME")
    return dict(columns)


def _column(table: pd.DataFrame, mapping: dict[str, str], field: str, path: Path, required: bool) -> pd.Series | None:
    name = mapping.get(field, field)
    if name in table.columns:
        return table[name]
    if required or field in mapping:
        header_line = 1 if table_format(path) in ("csv", "tsv") else None
        raise DataError(f"column {name!r} not found (columns: {list(table.columns)})", path, header_line, field)
    return None


def _interactions(
    table: pd.DataFrame, lines: np.ndarray, path: Path, mapping: dict[str, str], options: LoadOptions, bad_rows: BadRows
) -> pd.DataFrame:
    users = _as_text(_column(table, mapping, "user_id", path, True))
    items = _as_text(_column(table, mapping, "item_id", path, True))
    ok = (users != "").to_numpy() & (items != "").to_numpy()
    for position in np.flatnonzero(~ok):
        bad_rows.report("missing value", path, int(lines[position]), "user_id" if users.iloc[position] == "" else "item_id")
    ratings = None
    rating_column = _column(table, mapping, "rating", path, False)
    if rating_column is not None:
        ratings, ok_rating = parse_numbers(_as_text(rating_column), lines, path, "rating", bad_rows, required=False)
        ok &= ok_rating
    times, ok_time = _timestamps(_column(table, mapping, "timestamp", path, False), lines, path, options, bad_rows)
    action_column = _column(table, mapping, "action", path, False)
    actions: Any = _as_text(action_column) if action_column is not None else ("rate" if ratings is not None else "view")
    if action_column is not None:
        missing = (actions == "").to_numpy()
        for position in np.flatnonzero(missing & ok):
            bad_rows.report("missing value", path, int(lines[position]), "action")
        ok &= ~missing
    frame = make_frame(users, items, times, actions, ratings, lines)
    return keep_rows(frame, ok & ok_time)


def _timestamps(
    column: pd.Series | None, lines: np.ndarray, path: Path, options: LoadOptions, bad_rows: BadRows
) -> tuple[np.ndarray, np.ndarray]:
    if column is None:  # no clock: file order is the only order there is
        return np.zeros(len(lines)), np.ones(len(lines), dtype=bool)
    text = _as_text(column)
    numeric = pd.to_numeric(text.where(text != ""), errors="coerce")
    if numeric.notna().sum() >= max(1, int(0.5 * (text != "").sum())):
        seconds, ok = parse_numbers(text, lines, path, "timestamp", bad_rows)
        divisor = {"s": 1, "ms": 1000}.get(options.timestamp_unit)
        if divisor is None:
            raise DataError(f"data.timestamp_unit must be s or ms, got {options.timestamp_unit!r}")
        return np.floor_divide(np.nan_to_num(seconds), divisor), ok
    parsed = pd.to_datetime(text.where(text != ""), errors="coerce", utc=True, format="mixed")
    ok = parsed.notna().to_numpy()
    for position in np.flatnonzero(~ok):
        bad_rows.report(f"not a date or number: {text.iloc[position]!r}", path, int(lines[position]), "timestamp")
    # Datetime resolution differs across pandas versions (ns, us, s); a Timedelta division does not.
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return np.nan_to_num(np.asarray(seconds, dtype="float64")), ok


def _catalog(
    table: pd.DataFrame,
    lines: np.ndarray,
    path: Path,
    mapping: dict[str, str],
    options: LoadOptions,
    bad_rows: BadRows,
    log_columns: bool = False,
) -> Catalog:
    id_column = mapping.get("item_id", "item_id")
    if "catalog_item_id" in mapping and not log_columns:
        id_column = mapping["catalog_item_id"]
    ids = _as_text(_column(table, {"item_id": id_column}, "item_id", path, True))
    titles = _as_text(_column(table, mapping, "title", path, True))
    categories = _column(table, mapping, "categories", path, False)
    attr_columns = _attribute_columns(table, mapping, log_columns)
    items = []
    for position in range(len(table)):
        cats = _split_list(categories.iloc[position], options.list_sep) if categories is not None else ()
        attributes = {}
        for name, source in attr_columns.items():
            value = table[source].iloc[position]
            if value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value).strip():
                attributes[name] = str(value).strip()
        items.append(Item(ids.iloc[position], titles.iloc[position], cats, attributes))
    return build_catalog(items, [int(x) for x in lines], path, bad_rows)


def _attribute_columns(table: pd.DataFrame, mapping: dict[str, str], log_columns: bool) -> dict[str, str]:
    explicit = {k.removeprefix("attr."): v for k, v in mapping.items() if k.startswith("attr.")}
    if explicit or log_columns:
        return explicit
    used = {mapping.get(f, f) for f in ("item_id", "catalog_item_id", "title", "categories")}
    return {c: c for c in table.columns if c not in used}


def _split_list(value: Any, sep: str) -> tuple[str, ...]:
    if isinstance(value, list | tuple | np.ndarray):
        return tuple(str(v).strip() for v in value if str(v).strip())
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    return tuple(part.strip() for part in str(value).split(sep) if part.strip())


def _as_text(column: pd.Series | None) -> pd.Series:
    """Values as stripped text; missing values become ``""`` (integers keep no ``.0``)."""
    if column is None:
        return pd.Series([], dtype="object")
    values = column.astype("object").where(column.notna(), "")
    text = values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return text.str.strip().reset_index(drop=True)
