"""Loaders by short name: each turns raw files into the canonical frame and a catalog.

>>> interactions, catalog = load_dataset("ml-100k", "/path/to/ml-100k")

``ml-100k`` accepts the GroupLens directory (``u.data``, ``u.item``) or RecBole's atomic files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmrec.data.loaders.amazon import load_amazon2018, load_amazon2023
from llmrec.data.loaders.base import LoadedData, LoadOptions
from llmrec.data.loaders.movielens import load_ml1m, load_ml100k
from llmrec.data.loaders.recbole_atomic import load_recbole
from llmrec.data.loaders.tabular import load_tabular

Loader = Callable[[Path, LoadOptions], LoadedData]

LOADERS: dict[str, Loader] = {
    "ml-100k": load_ml100k,
    "ml-1m": load_ml1m,
    "recbole": load_recbole,
    "amazon2018": load_amazon2018,
    "amazon2023": load_amazon2023,
    "tabular": load_tabular,
}

# Datasets that can be fetched as a named asset when no path is given (see llmrec.assets).
DATASET_ASSETS = {"ml-100k": "ml-100k"}


def get_loader(name: str) -> Loader:
    """The loader registered as ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return LOADERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset loader {name!r}; known: {sorted(LOADERS)}") from None


def load_dataset(name: str, path: str | Path, options: LoadOptions | None = None) -> LoadedData:
    """Load raw files at ``path`` with the loader registered as ``name``."""
    return get_loader(name)(Path(path), options or LoadOptions())


__all__ = ["DATASET_ASSETS", "LOADERS", "LoadOptions", "LoadedData", "Loader", "get_loader", "load_dataset"]
