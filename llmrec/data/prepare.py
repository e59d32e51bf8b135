"""Raw files -> a prepared dataset directory (the one form every model and evaluator reads).

Steps, in order: load (named loader) -> drop rows whose item is not in the catalog -> drop
exact duplicates -> minimum rating -> iterative k-core -> chronological sort -> split ->
item index -> leakage check -> atomic save with a manifest. The full catalog is kept (items
nobody interacted with are still rankable), so ML-100K always has 1682 items.

Launch: ``llmrec data prepare --dataset ml-100k --out data/ml-100k``
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import llmrec
from llmrec.config import DataConfig
from llmrec.data.dataset import SPLITS, PreparedDataset, save_prepared
from llmrec.data.loaders import DATASET_ASSETS, LoadedData, LoadOptions, load_dataset
from llmrec.data.splits import SplitResult, check_no_leakage, leave_one_out, temporal_split
from llmrec.data.validate import DataError, check_items_in_catalog, require_rows
from llmrec.io import sha256_file, stable_hash

# Config fields that do not change the prepared data (left out of its hash).
_UNHASHED = ("prepared_dir",)


def load_options(cfg: DataConfig) -> LoadOptions:
    """The loader arguments from a data config."""
    return LoadOptions(
        on_bad_row=cfg.on_bad_row,
        columns=dict(cfg.columns),
        catalog_path=cfg.catalog_path,
        timestamp_unit=cfg.timestamp_unit,
        list_sep=cfg.list_sep,
    )


def resolve_source(dataset: str, path: str | None, cache_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Where the raw files are: ``path`` when given, else the dataset's named asset (fetched if needed)."""
    if path is not None:
        return Path(path), {"kind": "path", "path": str(Path(path).resolve())}
    asset = DATASET_ASSETS.get(dataset)
    if asset is None:
        raise DataError(f"dataset {dataset!r} has no downloadable asset; pass --path (data.path) to its raw files")
    from llmrec.assets import fetch

    root = fetch(asset, cache_dir=cache_dir)
    return root, {"kind": "asset", "asset": asset, "path": str(root)}


def dedupe(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact repeats (same user, item, time, action and rating), keeping the first."""
    repeated = frame.duplicated(subset=["user_id", "item_id", "timestamp", "action", "rating"]).to_numpy()
    return frame[~repeated].reset_index(drop=True), int(repeated.sum())


def filter_min_rating(frame: pd.DataFrame, min_rating: float | None) -> tuple[pd.DataFrame, int]:
    """Keep rows rated at least ``min_rating`` (rows without a rating are dropped); None keeps all."""
    if min_rating is None:
        return frame, 0
    keep = (frame["rating"] >= min_rating).to_numpy()
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def k_core(frame: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Repeatedly drop users and items with fewer than ``k`` rows until none are left (k <= 1: off)."""
    if k <= 1:
        return frame, 0
    start = len(frame)
    while True:
        user_counts = frame["user_id"].map(frame["user_id"].value_counts())
        item_counts = frame["item_id"].map(frame["item_id"].value_counts())
        keep = ((user_counts >= k) & (item_counts >= k)).to_numpy()
        if keep.all():
            return frame.reset_index(drop=True), start - len(frame)
        frame = frame[keep]


def split_frame(frame: pd.DataFrame, cfg: DataConfig) -> SplitResult:
    """Apply the configured split (``leave_one_out`` or ``temporal``)."""
    if cfg.split == "leave_one_out":
        return leave_one_out(frame, cfg.short_users)
    if cfg.split == "temporal":
        return temporal_split(frame, cfg.temporal_valid_fraction, cfg.temporal_test_fraction)
    raise DataError(f"unknown split {cfg.split!r} (expected leave_one_out or temporal)")


def build_interactions(loaded: LoadedData, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Filter, sort, split and index the loaded rows; returns the frame and what each step removed."""
    source = loaded.files["interactions"]
    frame = check_items_in_catalog(loaded.interactions, loaded.catalog, source, loaded.bad_rows)
    require_rows(frame, "loading and validation", source)
    removed: dict[str, int] = {}
    if cfg.dedupe:
        frame, removed["duplicates"] = dedupe(frame)
    frame, removed["below_min_rating"] = filter_min_rating(frame, cfg.min_rating)
    require_rows(frame, f"min_rating={cfg.min_rating}", source)
    frame, removed["k_core"] = k_core(frame, cfg.k_core)
    require_rows(frame, f"k_core={cfg.k_core}", source)
    result = split_frame(frame, cfg)
    removed["short_users_dropped_rows"] = result.dropped_rows
    frame = result.frame
    require_rows(frame, "splitting", source)
    lookup = {item_id: index for index, item_id in enumerate(loaded.catalog.item_ids)}
    frame["item_index"] = frame["item_id"].map(lookup).to_numpy(dtype="int64")
    frame["timestamp"] = frame["timestamp"].astype("int64")
    split_info: dict[str, Any] = {"kind": cfg.split, "short_users": result.short_users, "short_user_policy": cfg.short_users}
    if result.cutoffs is not None:
        split_info["cutoffs"] = result.cutoffs
    return frame.drop(columns=["line"]), {"removed": removed, "split": split_info}


def build_manifest(
    cfg: DataConfig, loaded: LoadedData, source: dict[str, Any], steps: dict[str, Any]
) -> dict[str, Any]:
    """Everything needed to tell how a prepared dataset was made (counts are added when saved)."""
    config = dataclasses.asdict(cfg)
    hashed = {k: v for k, v in config.items() if k not in _UNHASHED}
    source = dict(source)
    source["files"] = {role: {"name": p.name, "sha256": sha256_file(p)} for role, p in loaded.files.items()}
    source["format"] = loaded.details.get("format")
    return {
        "dataset": cfg.dataset,
        "source": source,
        "config": config,
        "config_hash": stable_hash(hashed),
        "split": steps["split"],
        "removed": steps["removed"],
        "skipped_rows": loaded.bad_rows.summary(),
        "llmrec_version": llmrec.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_dataset(
    cfg: DataConfig,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
) -> PreparedDataset:
    """Load, clean, split and save ``cfg.dataset``; returns the dataset as written.

    Args:
        cfg: the data config (dataset, path, filters, split, bad-row policy).
        out_dir: destination directory (default ``cfg.prepared_dir``); written atomically.
        overwrite: replace an existing directory.
        cache_dir: asset cache for datasets fetched by name (default ``~/.cache/llmrec``).

    Raises:
        DataError: bad input (naming file, line and field) or nothing left after a filter.
        LeakageError: the split would let a model see a target (a bug, never expected).
    """
    out = Path(out_dir or cfg.prepared_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    root, source = resolve_source(cfg.dataset, cfg.path, cache_dir)
    loaded = load_dataset(cfg.dataset, root, load_options(cfg))
    frame, steps = build_interactions(loaded, cfg)
    check_no_leakage(frame, cfg.split)
    manifest = build_manifest(cfg, loaded, source, steps)
    save_prepared(out, frame, loaded.catalog, manifest, overwrite=overwrite)
    return PreparedDataset.load(out)


def dataset_stats(dataset: PreparedDataset) -> dict[str, Any]:
    """Counts and sequence-length statistics of a prepared dataset (what ``llmrec data stats`` shows)."""
    frame = dataset.interactions
    lengths = frame.groupby("user_id", sort=False).size().to_numpy()
    n_users, n_items = len(lengths), len(dataset.catalog)
    stats: dict[str, Any] = {
        "users": n_users,
        "items": n_items,
        "items_with_interactions": int(frame["item_id"].nunique()),
        "interactions": len(frame),
        "density": len(frame) / max(1, n_users * n_items),
        "events_per_user_min": int(lengths.min()) if n_users else 0,
        "events_per_user_median": float(np.median(lengths)) if n_users else 0.0,
        "events_per_user_max": int(lengths.max()) if n_users else 0,
        "actions": {str(k): int(v) for k, v in frame["action"].value_counts().items()},
    }
    for split in SPLITS:
        stats[f"{split}_rows"] = int((frame["split"] == split).sum())
    return stats
