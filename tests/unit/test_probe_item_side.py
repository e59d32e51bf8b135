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


def test_probe_flags_change_what_is_probed_and_are_recorded(tmp_path: Path, tiny_tokenizer) -> None:
    data = tmp_path / "data"
    build_dataset(data)
    arch = json.dumps(TINY_LLAMA).replace(" ", "")
    model = [f"model.name_or_path={save_tokenizer(tiny_tokenizer, tmp_path)}", f"model.random_init_config={arch}"]
    def probe(*flags: str) -> tuple[float, dict]:
        out = tmp_path / f"probe{len(list(tmp_path.glob('probe*.json')))}.json"
        (row,) = main(["--prepared", str(data), "--epochs", "1", "--sides", "mlp", *flags, "--out", str(out), *model])
        return float(row["train_loss"]), json.loads(out.read_text())
    base, report = probe()
    assert (report["title_categories"], report["last"], report["mlp_width"]) == (False, 5, 0)
    for flags, key, value in ((["--title-categories"], "title_categories", True), (["--last", "2"], "last", 2),
                              (["--mlp-width", "24"], "mlp_width", 24)):
        loss, report = probe(*flags)
        assert report[key] == value and loss != base  # each flag changes the probe's training
    # the week vectors start at zero, so they show from the second pass on
    base, report = probe("--epochs", "2")
    loss, report = probe("--epochs", "2", "--time-context")
    assert report["time_context"] is True and loss != base


def test_probe_texts_with_categories_are_history_lines_without_interaction_fields(tmp_path: Path) -> None:
    from llmrec.config import PromptConfig
    from llmrec.data.dataset import PreparedDataset
    from llmrec.prompts import load_template
    from scripts.probe_item_side import probe_texts

    build_dataset(tmp_path / "data")
    catalog = PreparedDataset.load(tmp_path / "data").catalog
    template = load_template("next_item")
    plain = probe_texts(catalog, PromptConfig(), template, categories=False)
    with_categories = probe_texts(catalog, PromptConfig(include_rating=True), template, categories=True)
    for item, title, line in zip(catalog, plain, with_categories, strict=True):
        assert line == f"{title} | {', '.join(item.categories)}" if item.categories else line == title


def test_week_of_counts_weeks_from_the_first_train_event_and_clips() -> None:
    from scripts.probe_item_side import WEEK, WeekOf

    weeks = WeekOf([1000, 1000 + 3 * WEEK + 5])
    assert weeks.count == 5  # weeks 0-3 and one slot for later weeks or no history
    assert weeks.of([1000, 1000 + WEEK, 999, 1000 + 10 * WEEK, None]).tolist() == [0, 1, 0, 4, 4]
