"""A prepared dataset directory: the one on-disk form every model, baseline and evaluator reads.

Layout (written by :func:`save_prepared`, read by :class:`PreparedDataset`)::

    DIR/interactions.parquet   user_id, item_id, timestamp, action, rating, split, item_index
                               sorted by user, then chronologically (ties keep source order)
    DIR/catalog.parquet        item_id, title, categories (list), attributes (JSON text)
    DIR/manifest.json          source, counts, checksums, config + its hash, llmrec version

``split`` is ``train``, ``valid`` or ``test``. Under leave-one-out each user has exactly one
``valid`` and one ``test`` row (their second-to-last and last events).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llmrec.data.schema import Catalog, EvalCase, Item, UserSequence
from llmrec.io import atomic_dir, sha256_file, write_json

SPLITS = ("train", "valid", "test")
# The splits a model may read as input when it is queried on a given split: no leakage of the
# target split (or a later one) into its own input.
INPUT_SPLITS = {"train": (), "valid": ("train",), "test": ("train", "valid")}
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "action", "rating", "split", "item_index"]


def catalog_fingerprint(catalog: Catalog) -> str:
    """Content hash of a catalog (ids, titles, categories, attributes, order).

    Stored in every manifest and run directory, so a run can tell when the catalog it was
    trained on has changed.
    """
    digest = hashlib.sha256()
    for item in catalog:
        record = [item.item_id, item.title, list(item.categories), sorted(item.attributes.items())]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def catalog_to_frame(catalog: Catalog) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [i.item_id for i in catalog],
            "title": [i.title for i in catalog],
            "categories": [list(i.categories) for i in catalog],
            "attributes": [json.dumps(dict(i.attributes), ensure_ascii=False, sort_keys=True) for i in catalog],
        }
    )


def catalog_from_frame(frame: pd.DataFrame) -> Catalog:
    items = [
        Item(
            item_id=str(row.item_id),
            title=str(row.title),
            categories=tuple(str(c) for c in row.categories),
            attributes=json.loads(row.attributes) if row.attributes else {},
        )
        for row in frame.itertuples(index=False)
    ]
    return Catalog(items)


def save_prepared(
    out_dir: str | Path,
    interactions: pd.DataFrame,
    catalog: Catalog,
    manifest: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a prepared dataset atomically; ``manifest`` gets checksums and counts added."""
    missing = [c for c in INTERACTION_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions frame lacks columns {missing}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        interactions[INTERACTION_COLUMNS].to_parquet(tmp / "interactions.parquet", index=False)
        catalog_to_frame(catalog).to_parquet(tmp / "catalog.parquet", index=False)
        manifest = dict(manifest)
        manifest["counts"] = dataset_counts(interactions, catalog)
        manifest["catalog_fingerprint"] = catalog_fingerprint(catalog)
        manifest["checksums"] = {
            name: sha256_file(tmp / name) for name in ("interactions.parquet", "catalog.parquet")
        }
        write_json(tmp / "manifest.json", manifest)
    return out_dir


def dataset_counts(interactions: pd.DataFrame, catalog: Catalog) -> dict[str, int]:
    counts = {
        "users": int(interactions["user_id"].nunique()),
        "items": len(catalog),
        "interactions": len(interactions),
    }
    for split in SPLITS:
        counts[f"{split}_rows"] = int((interactions["split"] == split).sum())
    return counts


@dataclass
class PreparedDataset:
    """A prepared dataset loaded into memory (ML-100K: ~100k rows, well under a second)."""

    root: Path
    catalog: Catalog
    interactions: pd.DataFrame
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path, verify: bool = False) -> PreparedDataset:
        """Load ``root``; with ``verify=True`` the parquet files are checked against the manifest."""
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{root} is not a prepared dataset (no manifest.json); run `llmrec data prepare` first"
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if verify:
            for name, expected in manifest.get("checksums", {}).items():
                actual = sha256_file(root / name)
                if actual != expected:
                    raise ValueError(f"{root / name}: sha256 {actual} does not match the manifest ({expected})")
        catalog = catalog_from_frame(pd.read_parquet(root / "catalog.parquet"))
        interactions = pd.read_parquet(root / "interactions.parquet")
        return cls(root=root, catalog=catalog, interactions=interactions, manifest=manifest)

    @property
    def users(self) -> list[str]:
        """User ids in stored order."""
        return list(dict.fromkeys(self.interactions["user_id"].tolist()))

    @property
    def fingerprint(self) -> str:
        return str(self.manifest.get("catalog_fingerprint") or catalog_fingerprint(self.catalog))

    def sequences(self, splits: Sequence[str] = ("train",)) -> list[UserSequence]:
        """Each user's events from ``splits``, oldest first (users with none are left out)."""
        frame = self.interactions[self.interactions["split"].isin(list(splits))]
        return [_to_sequence(str(user), group) for user, group in frame.groupby("user_id", sort=False)]

    def user_sequence(self, user_id: str, splits: Sequence[str] = SPLITS) -> UserSequence:
        """One user's events from ``splits``; ``KeyError`` naming the user when unknown."""
        frame = self.interactions
        rows = frame[(frame["user_id"] == user_id) & frame["split"].isin(list(splits))]
        if rows.empty and not (frame["user_id"] == user_id).any():
            raise KeyError(f"user id {user_id!r} is not in {self.root}")
        return _to_sequence(user_id, rows)

    def eval_cases(self, split: str) -> list[EvalCase]:
        """One query per user who has an event in ``split`` (valid or test).

        The target is the user's first event in ``split``; the history is every earlier event of
        that user from the splits allowed as input (``INPUT_SPLITS``), so nothing of the target
        split or later leaks in.
        """
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        allowed = set(INPUT_SPLITS[split])
        cases = []
        for user, group in self.interactions.groupby("user_id", sort=False):
            marks = group["split"].to_numpy()
            hits = (marks == split).nonzero()[0]
            if len(hits) == 0:
                continue
            first = int(hits[0])
            before = group.iloc[:first]
            before = before[before["split"].isin(allowed)]
            target = int(group["item_index"].iloc[first])
            cases.append(EvalCase(str(user), _to_sequence(str(user), before), target))
        return cases


def _to_sequence(user_id: str, rows: pd.DataFrame) -> UserSequence:
    ratings = tuple(None if pd.isna(r) else float(r) for r in rows["rating"].tolist())
    return UserSequence(
        user_id=user_id,
        items=tuple(int(i) for i in rows["item_index"].tolist()),
        timestamps=tuple(int(t) for t in rows["timestamp"].tolist()),
        actions=tuple(str(a) for a in rows["action"].tolist()),
        ratings=ratings,
    )
