"""The prepared-dataset format: round trip, eval cases without leakage, catalog fingerprint."""

from __future__ import annotations

import pandas as pd
import pytest

from llmrec.data.dataset import PreparedDataset, catalog_fingerprint, save_prepared
from llmrec.data.schema import Catalog, Item


def _catalog() -> Catalog:
    return Catalog(Item(str(i), f"Movie {i}", ("Drama",) if i % 2 else ("Comedy",), {"year": "1995"}) for i in range(6))


def _frame() -> pd.DataFrame:
    rows = []
    # user a: 4 events -> train, train, valid, test; user b: 3 events -> train, valid, test
    for user, items in (("a", [0, 1, 2, 3]), ("b", [5, 4, 3])):
        splits = ["train"] * (len(items) - 2) + ["valid", "test"]
        for t, (item, split) in enumerate(zip(items, splits, strict=True)):
            rows.append((user, str(item), 100 + t, "rate", 4.0, split, item))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "action", "rating", "split", "item_index"])


def test_round_trip_and_eval_cases(tmp_path) -> None:
    catalog = _catalog()
    save_prepared(tmp_path / "ds", _frame(), catalog, {"source": "test"})
    ds = PreparedDataset.load(tmp_path / "ds", verify=True)
    assert ds.manifest["counts"] == {
        "users": 2, "items": 6, "interactions": 7, "train_rows": 3, "valid_rows": 2, "test_rows": 2,
    }
    assert ds.catalog[1].display_title() == "Movie 1 (1995)"
    assert ds.fingerprint == catalog_fingerprint(catalog)
    valid = {c.user_id: c for c in ds.eval_cases("valid")}
    test = {c.user_id: c for c in ds.eval_cases("test")}
    assert valid["a"].history.items == (0, 1) and valid["a"].target == 2
    assert test["a"].history.items == (0, 1, 2) and test["a"].target == 3
    assert test["b"].history.items == (5, 4) and test["b"].target == 3
    train = {s.user_id: s.items for s in ds.sequences(("train",))}
    assert train == {"a": (0, 1), "b": (5,)}


def test_checksum_mismatch_is_reported(tmp_path) -> None:
    save_prepared(tmp_path / "ds", _frame(), _catalog(), {})
    with open(tmp_path / "ds" / "catalog.parquet", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ValueError, match="catalog.parquet: sha256"):
        PreparedDataset.load(tmp_path / "ds", verify=True)


def test_fingerprint_changes_with_catalog() -> None:
    changed = Catalog(list(_catalog())[:-1] + [Item("5", "Movie 5 (remastered)")])
    assert catalog_fingerprint(changed) != catalog_fingerprint(_catalog())


def test_unknown_user_and_missing_dir(tmp_path) -> None:
    save_prepared(tmp_path / "ds", _frame(), _catalog(), {})
    ds = PreparedDataset.load(tmp_path / "ds")
    with pytest.raises(KeyError, match="'zz' is not in"):
        ds.user_sequence("zz")
    with pytest.raises(FileNotFoundError, match="llmrec data prepare"):
        PreparedDataset.load(tmp_path / "nothing")
