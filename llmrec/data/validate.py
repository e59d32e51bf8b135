"""Bad input, reported precisely: every data error names the file, the line and the field.

Loaders read files through the helpers here. With ``on_bad_row="error"`` (the default) the
first bad row raises :class:`DataError`; with ``on_bad_row="skip"`` the row is dropped and
counted in a :class:`BadRows` log, whose summary goes into the prepared dataset's manifest.
Line numbers are 1-based, as an editor shows them (a header line counts).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.schema import Catalog, Item

ON_BAD_ROW = ("error", "skip")
# How many skipped rows are kept verbatim in the report (the rest are only counted).
MAX_EXAMPLES = 20


class DataError(ValueError):
    """Invalid input data; ``str(err)`` reads ``FILE:LINE: field 'F': what is wrong``."""

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = self.file or ""
        if line is not None:
            where += f":{line}"
        prefix = f"{where}: " if where else ""
        if field is not None:
            prefix += f"field {field!r}: "
        super().__init__(prefix + message)


@dataclass
class BadRows:
    """Collects bad rows: raises at once in ``error`` mode, counts them in ``skip`` mode."""

    mode: str = "error"
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {self.mode!r}")

    def report(self, reason: str, file: str | Path, line: int | None = None, field: str | None = None) -> None:
        """Raise :class:`DataError` (error mode) or count the row as skipped under ``reason``."""
        error = DataError(reason, file, line, field)
        if self.mode == "error":
            raise error
        self.counts[_reason_key(reason, field)] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts by reason plus the first few offending rows."""
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": list(self.examples)}


def _reason_key(reason: str, field: str | None) -> str:
    head = reason.split(":", 1)[0].split(" (", 1)[0]
    return f"{field}: {head}" if field else head


def open_bytes(path: str | Path) -> bytes:
    """Whole file as bytes; ``.gz`` files are decompressed. Missing files raise ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file does not exist", path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"not a valid gzip file ({err})", path) from None
    return data


def decode_lines(path: str | Path, encoding: str, bad_rows: BadRows) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-empty line, decoding strictly.

    An undecodable line is reported with its line number (and skipped in skip mode).
    """
    data = open_bytes(path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        if bad_rows.mode == "error":
            bad_line = data.count(b"\n", 0, err.start) + 1
            raise DataError(f"bytes not decodable as {encoding} ({err.reason} at byte {err.start})", path, bad_line) from None
        yield from _decode_line_by_line(path, data, encoding, bad_rows)
        return
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if line.strip():
            yield number, line


def decode_text(path: str | Path, encoding: str, bad_rows: BadRows) -> str:
    """Whole file as text; in skip mode an undecodable line becomes an empty line (numbering kept)."""
    data = open_bytes(path)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        if bad_rows.mode == "error":
            line = data.count(b"\n", 0, err.start) + 1
            raise DataError(f"bytes not decodable as {encoding} ({err.reason} at byte {err.start})", path, line) from None
    kept = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            kept.append(raw.decode(encoding))
        except UnicodeDecodeError as err:
            bad_rows.report(f"bytes not decodable as {encoding} ({err.reason})", path, number)
            kept.append("")
    return "\n".join(kept)


def _decode_line_by_line(path: str | Path, data: bytes, encoding: str, bad_rows: BadRows) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode(encoding).rstrip("\r")
        except UnicodeDecodeError as err:
            bad_rows.report(f"bytes not decodable as {encoding} ({err.reason})", path, number)
            continue
        if line.strip():
            yield number, line


def read_delimited(
    path: str | Path,
    sep: str,
    n_fields: int,
    bad_rows: BadRows,
    encoding: str = "utf-8",
    header: bool = False,
    min_fields: int | None = None,
) -> tuple[list[str] | None, list[list[str]], list[int]]:
    """Split a delimited text file into rows, checking the column count of each.

    Args:
        path: the file (``.gz`` allowed).
        sep: field separator (``"\\t"``, ``"|"``, ``"::"``).
        n_fields: columns each row must have (the header's count when ``header`` is set and
            ``n_fields`` is 0).
        bad_rows: where wrong rows go.
        encoding: text encoding, decoded strictly.
        header: the first non-empty line names the columns.
        min_fields: accept rows with at least this many columns (extra ones are kept).

    Returns:
        ``(header_fields or None, rows, line_numbers)``.
    """
    lines = decode_lines(path, encoding, bad_rows)
    names: list[str] | None = None
    if header:
        first = next(lines, None)
        if first is None:
            raise DataError("file is empty (expected a header line)", path, 1)
        names = first[1].split(sep)
        n_fields = n_fields or len(names)
    rows: list[list[str]] = []
    numbers: list[int] = []
    low = min_fields if min_fields is not None else n_fields
    for number, line in lines:
        parts = line.split(sep)
        if len(parts) < low or (min_fields is None and len(parts) != n_fields):
            bad_rows.report(f"expected {n_fields} columns separated by {sep!r}, found {len(parts)}", path, number)
            continue
        rows.append(parts)
        numbers.append(number)
    return names, rows, numbers


def read_json_lines(path: str | Path, bad_rows: BadRows) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse a JSON-lines file (``.gz`` allowed); each non-empty line must be one JSON object."""
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, line in decode_lines(path, "utf-8", bad_rows):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            bad_rows.report(f"not valid JSON ({err.msg} at column {err.colno})", path, number)
            continue
        if not isinstance(record, dict):
            bad_rows.report(f"expected a JSON object, got {type(record).__name__}", path, number)
            continue
        records.append(record)
        numbers.append(number)
    return records, numbers


def parse_numbers(
    values: list[str] | pd.Series,
    lines: list[int] | np.ndarray,
    path: str | Path,
    field: str,
    bad_rows: BadRows,
    required: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert text to float64 in one vectorized pass; report each unparsable value.

    Returns ``(numbers, ok_mask)``. Empty values are bad when ``required``, NaN otherwise.
    """
    series = pd.Series(values, dtype="object")
    text = series.astype(str).str.strip()
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype="float64")
    empty = (text == "").to_numpy()
    bad = np.isnan(numbers) & (~empty | required)
    for position in np.flatnonzero(bad):
        shown = series.iloc[position]
        reason = "missing value" if empty[position] else f"not a number: {shown!r}"
        bad_rows.report(reason, path, int(lines[position]), field)
    return numbers, ~bad


def build_catalog(items: list[Item], lines: list[int], path: str | Path, bad_rows: BadRows) -> Catalog:
    """A catalog from parsed items in file order, rejecting missing titles and conflicting duplicates.

    An item id listed twice with the same title keeps its first entry; with different titles it
    is a bad row (the data cannot say which title is right).
    """
    kept: dict[str, Item] = {}
    for item, line in zip(items, lines, strict=True):
        if not item.item_id:
            bad_rows.report("missing item id", path, line, "item_id")
            continue
        if not item.title.strip():
            bad_rows.report(f"missing title for item {item.item_id!r}", path, line, "title")
            continue
        first = kept.get(item.item_id)
        if first is not None:
            if first.title != item.title:
                bad_rows.report(
                    f"duplicate item id {item.item_id!r} with a different title ({first.title!r} vs {item.title!r})",
                    path,
                    line,
                    "item_id",
                )
            continue
        kept[item.item_id] = item
    if not kept:
        raise DataError("no usable items in the catalog", path)
    return Catalog(kept.values())


def check_items_in_catalog(frame: pd.DataFrame, catalog: Catalog, path: str | Path, bad_rows: BadRows) -> pd.DataFrame:
    """Rows whose item is not in ``catalog`` are bad (error) or dropped (skip).

    ``frame`` must carry the ``line`` column the loaders add, so the message names the row.
    """
    known = frame["item_id"].isin(catalog.item_ids).to_numpy()
    for position in np.flatnonzero(~known):
        row = frame.iloc[position]
        bad_rows.report(f"item {row['item_id']!r} is not in the catalog", path, int(row["line"]), "item_id")
    return frame[known] if not known.all() else frame


def require_rows(frame: pd.DataFrame, what: str, path: str | Path | None = None) -> None:
    """Raise :class:`DataError` when ``frame`` is empty after ``what`` (a loading or filtering step)."""
    if frame.empty:
        raise DataError(f"no interactions left after {what}", path)
