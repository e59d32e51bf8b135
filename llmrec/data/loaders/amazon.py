"""Amazon Reviews, 2018 (McAuley lab, ``reviewerID``/``asin``) and 2023 (``user_id``/``parent_asin``).

Layout: a directory holding one reviews file and one ``meta_*`` file, JSON lines, optionally
gzipped (``Books.jsonl.gz`` + ``meta_Books.jsonl.gz``); or the reviews file itself, with the meta
file given as ``catalog_path`` or lying beside it as ``meta_<name>``.

Every review becomes a ``review`` interaction with its star rating. 2018 timestamps are
seconds (``unixReviewTime``); 2023 timestamps are milliseconds and are converted to seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.loaders.base import LoadedData, LoadOptions, keep_rows, make_frame
from llmrec.data.schema import Catalog, Item
from llmrec.data.validate import BadRows, DataError, build_catalog, parse_numbers, read_json_lines

JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


@dataclass(frozen=True)
class AmazonLayout:
    """Field names of one release of the Amazon reviews data."""

    release: str
    user: str
    item: str
    rating: str
    time: str
    time_divisor: int  # raw time units per second
    meta_item: str
    meta_categories: str
    meta_brand: str


AMAZON_2018 = AmazonLayout("2018", "reviewerID", "asin", "overall", "unixReviewTime", 1, "asin", "category", "brand")
AMAZON_2023 = AmazonLayout("2023", "user_id", "parent_asin", "rating", "timestamp", 1000, "parent_asin", "categories", "store")


def load_amazon2018(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """Amazon Reviews 2018: reviews (reviewerID, asin, overall, unixReviewTime) + meta (asin, title, category, brand)."""
    return load_amazon(path, AMAZON_2018, options)


def load_amazon2023(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """Amazon Reviews 2023: reviews (user_id, parent_asin, rating, timestamp ms) + meta (parent_asin, title, categories, store)."""
    return load_amazon(path, AMAZON_2023, options)


def load_amazon(path: str | Path, layout: AmazonLayout, options: LoadOptions | None = None) -> LoadedData:
    """Load one Amazon category in the given release's layout."""
    options = options or LoadOptions()
    bad_rows = BadRows(options.on_bad_row)
    reviews_file, meta_file = find_amazon_files(Path(path), options.catalog_path)
    catalog = _load_meta(meta_file, layout, bad_rows)
    frame = _load_reviews(reviews_file, layout, bad_rows)
    files = {"interactions": reviews_file, "catalog": meta_file}
    return LoadedData(frame, catalog, files, bad_rows, {"format": f"amazon-{layout.release}"})


def _is_json(path: Path) -> bool:
    return path.is_file() and path.name.endswith(JSON_SUFFIXES)


def find_amazon_files(path: Path, catalog_path: str | None) -> tuple[Path, Path]:
    """``(reviews_file, meta_file)`` for a directory or a reviews file (see the module docstring)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_json(p))
        metas = [p for p in files if p.name.startswith("meta_")]
        reviews = [p for p in files if not p.name.startswith("meta_")]
        if len(reviews) != 1:
            raise DataError(f"expected one reviews JSON-lines file, found {[p.name for p in reviews]}", path)
        reviews_file = reviews[0]
    elif _is_json(path):
        reviews_file, metas = path, [path.with_name(f"meta_{path.name}")]
    else:
        raise DataError("expected a directory or a reviews .json(l)(.gz) file", path)
    if catalog_path is not None:
        metas = [Path(catalog_path)]
    metas = [p for p in metas if p.is_file()]
    if len(metas) != 1:
        raise DataError(
            f"expected one meta_*.json(l)(.gz) catalog file beside {reviews_file.name} (or data.catalog_path)",
            path,
        )
    return reviews_file, metas[0]


def _load_reviews(path: Path, layout: AmazonLayout, bad_rows: BadRows) -> pd.DataFrame:
    records, lines = read_json_lines(path, bad_rows)
    ok = np.ones(len(records), dtype=bool)
    users, items = [], []
    for position, record in enumerate(records):
        user, item = _text(record.get(layout.user)), _text(record.get(layout.item))
        for field, value in ((layout.user, user), (layout.item, item)):
            if not value and ok[position]:
                bad_rows.report("missing value", path, lines[position], field)
                ok[position] = False
        users.append(user)
        items.append(item)
    ratings, ok_rating = parse_numbers([_text(r.get(layout.rating)) for r in records], lines, path, layout.rating, bad_rows)
    times, ok_time = parse_numbers([_text(r.get(layout.time)) for r in records], lines, path, layout.time, bad_rows)
    seconds = np.floor_divide(np.nan_to_num(times), layout.time_divisor)
    frame = make_frame(users, items, seconds, "review", ratings, lines)
    return keep_rows(frame, ok & ok_rating & ok_time)


def _load_meta(path: Path, layout: AmazonLayout, bad_rows: BadRows) -> Catalog:
    records, lines = read_json_lines(path, bad_rows)
    items = []
    for record in records:
        attributes = {}
        brand = _text(record.get(layout.meta_brand))
        if brand:
            attributes["brand"] = brand
        main = _text(record.get("main_category"))
        if main:
            attributes["main_category"] = main
        items.append(
            Item(
                item_id=_text(record.get(layout.meta_item)),
                title=_text(record.get("title")),
                categories=_categories(record.get(layout.meta_categories)),
                attributes=attributes,
            )
        )
    return build_catalog(items, lines, path, bad_rows)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _categories(value: Any) -> tuple[str, ...]:
    """Amazon categories are a list (sometimes nested one level in 2018 files); keep order, drop repeats."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    flat: list[str] = []
    for entry in value:
        flat.extend(entry if isinstance(entry, list) else [entry])
    return tuple(dict.fromkeys(str(c).strip() for c in flat if str(c).strip()))
