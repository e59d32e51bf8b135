"""MovieLens in the GroupLens layouts: ML-100K (``u.data`` + ``u.item``) and ML-1M (``*.dat``).

ML-100K also comes in RecBole's atomic form (``ml-100k.inter`` ...); :func:`load_ml100k`
detects which one a directory holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.loaders.base import (
    LoadedData,
    LoadOptions,
    keep_rows,
    make_frame,
    require_file,
    split_year,
    year_from_date,
)
from llmrec.data.loaders.recbole_atomic import load_recbole
from llmrec.data.schema import Item
from llmrec.data.validate import BadRows, DataError, build_catalog, parse_numbers, read_delimited

# The 19 genre flags of u.item, in column order (the same list as ML-100K's u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def load_ml100k(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """Load ML-100K from a directory in GroupLens form (``u.data``) or RecBole form (``*.inter``)."""
    options = options or LoadOptions()
    root = Path(path)
    if root.is_dir() and (root / "u.data").is_file():
        return load_ml100k_raw(root, options)
    if root.is_dir() and any(root.glob("*.inter")):
        return load_recbole(root, options)
    raise DataError("not an ML-100K directory: expected u.data + u.item (GroupLens) or ml-100k.inter (RecBole)", root)


def load_ml100k_raw(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """GroupLens ML-100K: ``u.data`` (tab: user, item, rating, time) and ``u.item`` (pipe, latin-1)."""
    options = options or LoadOptions()
    root = Path(path)
    bad_rows = BadRows(options.on_bad_row)
    item_file = require_file(root, ["u.item"], "ML-100K item (u.item)")
    data_file = require_file(root, ["u.data"], "ML-100K rating (u.data)")
    catalog_items, item_lines = _parse_u_item(item_file, _genre_names(root, bad_rows), bad_rows)
    catalog = build_catalog(catalog_items, item_lines, item_file, bad_rows)
    _, rows, lines = read_delimited(data_file, "\t", 4, bad_rows, encoding="latin-1")
    frame = _ratings_frame(rows, lines, data_file, bad_rows)
    files = {"interactions": data_file, "catalog": item_file}
    return LoadedData(frame, catalog, files, bad_rows, {"format": "grouplens-100k"})


def load_ml1m(path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """GroupLens ML-1M: ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1, genres ``|``)."""
    options = options or LoadOptions()
    root = Path(path)
    bad_rows = BadRows(options.on_bad_row)
    movie_file = require_file(root, ["movies.dat"], "ML-1M movie (movies.dat)")
    rating_file = require_file(root, ["ratings.dat"], "ML-1M rating (ratings.dat)")
    _, rows, lines = read_delimited(movie_file, "::", 3, bad_rows, encoding="latin-1")
    items = []
    for (item_id, raw_title, genres), _line in zip(rows, lines, strict=True):
        title, year = split_year(raw_title)
        categories = tuple(g for g in genres.split("|") if g and g != "(no genres listed)")
        items.append(Item(item_id.strip(), title, categories, {"year": year} if year else {}))
    catalog = build_catalog(items, lines, movie_file, bad_rows)
    _, rows, lines = read_delimited(rating_file, "::", 4, bad_rows, encoding="latin-1")
    frame = _ratings_frame(rows, lines, rating_file, bad_rows)
    files = {"interactions": rating_file, "catalog": movie_file}
    return LoadedData(frame, catalog, files, bad_rows, {"format": "grouplens-1m"})


def _ratings_frame(rows: list[list[str]], lines: list[int], path: Path, bad_rows: BadRows) -> pd.DataFrame:
    """user, item, rating, timestamp text rows -> canonical frame, with bad numbers reported."""
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    users, items = [u.strip() for u in columns[0]], [i.strip() for i in columns[1]]
    ratings, ok_rating = parse_numbers(list(columns[2]), lines, path, "rating", bad_rows)
    times, ok_time = parse_numbers(list(columns[3]), lines, path, "timestamp", bad_rows)
    empty = np.array([not u for u in users], dtype=bool) | np.array([not i for i in items], dtype=bool)
    for position in np.flatnonzero(empty):
        field = "user_id" if not users[position] else "item_id"
        bad_rows.report("missing value", path, lines[position], field)
    frame = make_frame(users, items, np.nan_to_num(times), "rate", ratings, lines)
    return keep_rows(frame, ok_rating & ok_time & ~empty)


def _genre_names(root: Path, bad_rows: BadRows) -> tuple[str, ...]:
    """Genre names from ``u.genre`` when present (``name|index``), else the documented list."""
    genre_file = root / "u.genre"
    if not genre_file.is_file():
        return ML100K_GENRES
    _, rows, _ = read_delimited(genre_file, "|", 2, BadRows("skip"), encoding="latin-1")
    names = tuple(name for name, _index in rows)
    return names if len(names) == len(ML100K_GENRES) else ML100K_GENRES


def _parse_u_item(path: Path, genres: tuple[str, ...], bad_rows: BadRows) -> tuple[list[Item], list[int]]:
    """``u.item``: id | title (year) | release date | video date | IMDb URL | 19 genre flags."""
    n_fields = 5 + len(genres)
    _, rows, lines = read_delimited(path, "|", n_fields, bad_rows, encoding="latin-1")
    items, kept_lines = [], []
    for parts, line in zip(rows, lines, strict=True):
        flags = parts[5:]
        if any(flag not in ("0", "1") for flag in flags):
            bad_rows.report(f"genre flags must be 0 or 1, got {'|'.join(flags)!r}", path, line, "genres")
            continue
        title, title_year = split_year(parts[1])
        year = year_from_date(parts[2]) or title_year
        categories = tuple(name for name, flag in zip(genres, flags, strict=True) if flag == "1")
        items.append(Item(parts[0].strip(), title, categories, {"year": year} if year else {}))
        kept_lines.append(line)
    return items, kept_lines
