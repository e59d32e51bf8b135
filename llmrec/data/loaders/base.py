"""What every loader returns, and the small helpers they share.

A loader turns raw files into the canonical interaction frame (one row per event, in source
file order) and a :class:`~llmrec.data.schema.Catalog` (in the order of the item file, which
fixes every item's index). Frame columns::

    user_id (str), item_id (str), timestamp (int64, seconds), action (str), rating (float64, NaN = none),
    line (int64, 1-based line in the interaction file; used by error messages, dropped when saved)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.schema import Catalog
from llmrec.data.validate import BadRows, DataError

FRAME_COLUMNS = ["user_id", "item_id", "timestamp", "action", "rating", "line"]
_YEAR_SUFFIX = re.compile(r"^(?P<title>.*\S)\s*\((?P<year>\d{4})\)\s*$")
_YEAR = re.compile(r"(\d{4})\s*$")


@dataclass
class LoadOptions:
    """Plain arguments shared by every loader (filled from ``DataConfig`` by the caller)."""

    on_bad_row: str = "error"  # error | skip
    columns: dict[str, str] = field(default_factory=dict)  # tabular: canonical field -> source column
    catalog_path: str | None = None  # tabular / Amazon: the catalog (meta) file when not found beside the log
    timestamp_unit: str = "s"  # tabular: unit of numeric timestamps (s | ms)
    list_sep: str = "|"  # tabular: separator of list values (categories) in CSV/TSV cells


@dataclass
class LoadedData:
    """A loader's result. Unpacks as ``interactions, catalog = loaded``."""

    interactions: pd.DataFrame
    catalog: Catalog
    files: dict[str, Path]  # role (interactions, catalog, users) -> file read
    bad_rows: BadRows
    details: dict[str, Any] = field(default_factory=dict)  # loader-specific notes for the manifest

    def __iter__(self) -> Iterator[Any]:
        return iter((self.interactions, self.catalog))


def make_frame(
    user_ids: Sequence[str] | np.ndarray | pd.Series,
    item_ids: Sequence[str] | np.ndarray | pd.Series,
    timestamps: Sequence[float] | np.ndarray | pd.Series,
    actions: str | Sequence[str] | np.ndarray | pd.Series,
    ratings: Sequence[float] | np.ndarray | pd.Series | None,
    lines: Sequence[int] | np.ndarray | pd.Series,
) -> pd.DataFrame:
    """Assemble the canonical frame with exact dtypes (strings stay ``object`` for speed)."""
    n = len(user_ids)
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype="object").astype(str).to_numpy(),
            "item_id": pd.Series(item_ids, dtype="object").astype(str).to_numpy(),
            "timestamp": np.asarray(timestamps, dtype="float64").astype("int64"),
            "action": [actions] * n if isinstance(actions, str) else pd.Series(actions).astype(str).to_numpy(),
            "rating": np.full(n, np.nan) if ratings is None else np.asarray(ratings, dtype="float64"),
            "line": np.asarray(lines, dtype="int64"),
        }
    )
    return frame.reset_index(drop=True)


def split_year(title: str) -> tuple[str, str | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", "1995")``; titles without a year are unchanged."""
    match = _YEAR_SUFFIX.match(title)
    if match is None:
        return title.strip(), None
    return match.group("title"), match.group("year")


def year_from_date(text: str) -> str | None:
    """The 4-digit year at the end of a date such as ``01-Jan-1995`` (None when absent)."""
    match = _YEAR.search(text.strip())
    return match.group(1) if match else None


def require_file(directory: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` that exists in ``directory``; ``DataError`` listing them otherwise."""
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"no {what} file found (looked for {', '.join(names)})", directory)


def keep_rows(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """``frame`` restricted to ``mask`` (no copy when every row is kept)."""
    return frame if bool(mask.all()) else frame[mask].reset_index(drop=True)
