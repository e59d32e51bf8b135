"""scripts/probe_item_side.py end to end on a tiny random Llama and the fixture dataset (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.probe_item_side import main
from tests.fixtures_run import build_dataset
from tests.unit.train_helpers import TINY_LLAMA, save_tokenizer


def test_probe_scores_the_three_item_sides_through_the_evaluator(tmp_path: Path, tiny_tokenizer) -> None:
    data = tmp_path / "data"
    build_dataset(data)
    arch = json.dumps(TINY_LLAMA).replace(" ", "")
    rows = main(["--prepared", str(data), "--epochs", "2", "--out", str(tmp_path / "probe.json"),
                 f"model.name_or_path={save_tokenizer(tiny_tokenizer, tmp_path)}", f"model.random_init_config={arch}"])
    assert [r["item_side"] for r in rows] == ["linear", "mlp", "ids"]
    assert all(0.0 <= float(r["valid_ndcg@10"]) <= 1.0 and float(r["train_loss"]) > 0 for r in rows)
    assert json.loads((tmp_path / "probe.json").read_text())["rows"] == rows
    # the item sides really differ: the MLP and the free vectors train parameters the linear side lacks
    assert len({round(float(r["train_loss"]), 6) for r in rows}) == 3


def test_probe_scores_the_chosen_sides_on_the_test_split(tmp_path: Path, tiny_tokenizer) -> None:
    data = tmp_path / "data"
    build_dataset(data)
    arch = json.dumps(TINY_LLAMA).replace(" ", "")
    rows = main(["--prepared", str(data), "--epochs", "1", "--split", "test", "--sides", "mlp", "--title-source", "hidden",
                 "--out", str(tmp_path / "probe.json"),
                 f"model.name_or_path={save_tokenizer(tiny_tokenizer, tmp_path)}", f"model.random_init_config={arch}"])
    assert [r["item_side"] for r in rows] == ["mlp"] and "valid_ndcg@10" not in rows[0]
    assert 0.0 <= float(rows[0]["test_ndcg@10"]) <= 1.0
    report = json.loads((tmp_path / "probe.json").read_text())
    assert report["split"] == "test" and report["title_source"] == "hidden"
