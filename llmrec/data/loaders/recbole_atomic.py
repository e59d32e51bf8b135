"""RecBole atomic files: ``NAME.inter``, ``NAME.item`` (and ``NAME.user``, recorded but unused).

Each file is tab-separated with a typed header such as
``item_id:token	movie_title:token_seq	release_year:token	class:token_seq``.
``token_seq`` values are space-separated tokens (the categories of an item); a title of type
``token_seq`` is kept as the whole text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.loaders.base import LoadedData, LoadOptions, keep_rows, make_frame
from llmrec.data.schema import Catalog, Item
from llmrec.data.validate import BadRows, DataError, build_catalog, parse_numbers, read_delimited

TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
YEAR_FIELDS = ("release_year", "year")
CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def load_recbole(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """Load a RecBole dataset from its directory (or its ``.inter`` file).

    Raises:
        DataError: when the ``.inter`` or ``.item`` file is missing or a row is malformed.
    """
    options = options or LoadOptions()
    bad_rows = BadRows(options.on_bad_row)
    inter_file = _find_inter(Path(path))
    item_file = inter_file.with_suffix(".item")
    if not item_file.is_file():
        raise DataError(f"RecBole item file {item_file.name} is missing (titles come from it)", item_file.parent)
    catalog = _load_items(item_file, bad_rows)
    frame = _load_inter(inter_file, bad_rows)
    files = {"interactions": inter_file, "catalog": item_file}
    user_file = inter_file.with_suffix(".user")
    if user_file.is_file():
        files["users"] = user_file
    return LoadedData(frame, catalog, files, bad_rows, {"format": "recbole-atomic", "name": inter_file.stem})


def _find_inter(path: Path) -> Path:
    if path.is_file() and path.suffix == ".inter":
        return path
    if not path.is_dir():
        raise DataError("expected a RecBole directory or .inter file", path)
    candidates = sorted(path.glob("*.inter"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise DataError(f"expected exactly one .inter file, found {found}", path)
    return candidates[0]


def parse_header(names: list[str], path: Path) -> list[str]:
    """``["item_id:token", ...]`` -> ``["item_id", ...]``; every field must carry a known type."""
    fields = []
    for column, raw in enumerate(names, start=1):
        name, sep, kind = raw.strip().rpartition(":")
        if not sep or not name or kind not in RECBOLE_TYPES:
            raise DataError(f"header column {column} {raw!r} is not NAME:TYPE with TYPE in {RECBOLE_TYPES}", path, 1)
        fields.append(name)
    return fields


def _load_inter(path: Path, bad_rows: BadRows) -> pd.DataFrame:
    names, rows, lines = read_delimited(path, "\t", 0, bad_rows, header=True)
    fields = parse_header(names or [], path)
    for required in ("user_id", "item_id"):
        if required not in fields:
            raise DataError(f"header lacks {required}:token (has {fields})", path, 1, required)
    column = {name: [row[i] for row in rows] for i, name in enumerate(fields)}
    ok = np.ones(len(rows), dtype=bool)
    ratings = None
    if "rating" in column:
        ratings, ok_rating = parse_numbers(column["rating"], lines, path, "rating", bad_rows)
        ok &= ok_rating
    if "timestamp" in column:
        times, ok_time = parse_numbers(column["timestamp"], lines, path, "timestamp", bad_rows)
        ok &= ok_time
    else:  # no clock: file order is the only order there is
        times = np.zeros(len(rows))
    users = [u.strip() for u in column["user_id"]]
    items = [i.strip() for i in column["item_id"]]
    for position, (user, item) in enumerate(zip(users, items, strict=True)):
        if not user or not item:
            bad_rows.report("missing value", path, lines[position], "user_id" if not user else "item_id")
            ok[position] = False
    frame = make_frame(users, items, np.nan_to_num(times), "rate", ratings, lines)
    return keep_rows(frame, ok)


def _load_items(path: Path, bad_rows: BadRows) -> Catalog:
    names, rows, lines = read_delimited(path, "\t", 0, bad_rows, header=True)
    fields = parse_header(names or [], path)
    if "item_id" not in fields:
        raise DataError(f"header lacks item_id:token (has {fields})", path, 1, "item_id")
    title_field = next((f for f in TITLE_FIELDS if f in fields), None)
    if title_field is None:
        raise DataError(f"no title field (one of {TITLE_FIELDS}) in header {fields}", path, 1)
    year_field = next((f for f in YEAR_FIELDS if f in fields), None)
    category_field = next((f for f in CATEGORY_FIELDS if f in fields), None)
    extra = [f for f in fields if f not in ("item_id", title_field, year_field, category_field)]
    items = []
    for row in rows:
        record = dict(zip(fields, row, strict=True))
        attributes = {name: record[name].strip() for name in extra if record[name].strip()}
        year = record[year_field].strip() if year_field else ""
        if year.isdigit() and len(year) == 4:
            attributes["year"] = year
        categories = tuple(record[category_field].split()) if category_field else ()
        items.append(Item(record["item_id"].strip(), record[title_field].strip(), categories, attributes))
    return build_catalog(items, lines, path, bad_rows)
