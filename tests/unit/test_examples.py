"""Training examples: train split only (planted leak check), label layout, windows, cache."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pandas as pd
import pytest

from llmrec.config import ConfigError, PromptConfig, load_config
from llmrec.data.dataset import PreparedDataset, save_prepared
from llmrec.data.schema import Catalog, Item
from llmrec.prompts import PromptError, load_template
from llmrec.serialize import completion_text, item_text
from llmrec.training.examples import IGNORE_INDEX, build_examples, examples_cache_key, window_shift_sizes
from tests.tiny import FIXTURE_TITLES

LEAK_TITLES = ["Leaky Valid", "Leaky Test"]  # only ever valid/test targets: must never reach training text


def make_dataset(root, train_lengths=(12, 5, 3, 9)) -> PreparedDataset:
    """Users with leave-one-out splits; every valid/test event is a planted item no train row uses."""
    items = []
    for i, text in enumerate(FIXTURE_TITLES):
        match = re.fullmatch(r"(.*) \((\d{4})\)", text)
        assert match
        items.append(Item(str(i), match.group(1), ("Drama",), {"year": match.group(2)}))
    base = len(items)
    items += [Item(f"leak{j}", title, ("Drama",), {"year": "2001"}) for j, title in enumerate(LEAK_TITLES)]
    catalog = Catalog(items)
    rows = []
    for u, length in enumerate(train_lengths):
        picks = [(u * 7 + 3 * k) % base for k in range(length)]
        assert len(set(picks)) == length  # no repeats within a user
        events = [(p, "train") for p in picks] + [(base, "valid"), (base + 1, "test")]
        for k, (index, split) in enumerate(events):
            rows.append({"user_id": f"u{u}", "item_id": catalog[index].item_id, "timestamp": 1000 + 3600 * k,
                         "action": "rate", "rating": 4.0, "split": split, "item_index": index})
    save_prepared(root, pd.DataFrame(rows), catalog, {"source": "test"})
    return PreparedDataset.load(root)


def labeled_spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("fmt", ["prompt_completion", "item_span"])
def test_planted_validation_and_test_items_never_reach_training(tmp_path, tiny_tokenizer, fmt):
    data = make_dataset(tmp_path / "data")
    built = build_examples(data, tiny_tokenizer, PromptConfig(), fmt, max_seq_len=256, cache_dir=None)
    assert len(built) > 0
    for row in built:
        text = tiny_tokenizer.decode(row["input_ids"])
        assert "Leaky" not in text
        assert all(label in (IGNORE_INDEX, token) for label, token in zip(row["labels"], row["input_ids"], strict=True))


def test_sequences_other_than_the_train_rows_are_refused(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")

    class Leaky(PreparedDataset):
        def sequences(self, splits=("train",)):
            return super().sequences(("train", "valid"))

    leaky = Leaky(data.root, data.catalog, data.interactions, data.manifest)
    with pytest.raises(RuntimeError, match="train rows"):
        build_examples(leaky, tiny_tokenizer, PromptConfig(), "prompt_completion", max_seq_len=256)


def test_prompt_completion_layout(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")
    built = build_examples(data, tiny_tokenizer, PromptConfig(), "prompt_completion", max_seq_len=256)
    assert len(built) == sum(n - 1 for n in (12, 5, 3, 9))
    assert set(built.column_names) == {"input_ids", "labels", "user_id", "num_targets", "prior_items"}
    assert all(prior == [] for prior in built["prior_items"])  # a catalog-only column
    train = {s.user_id: s for s in data.sequences(("train",))}
    for row in built:
        (span,) = labeled_spans(row["labels"])
        assert span[1] == len(row["input_ids"])  # loss only on the completion at the end
        completion = tiny_tokenizer.decode(row["input_ids"][span[0]:span[1]])
        prompt = tiny_tokenizer.decode(row["input_ids"][:span[0]])
        assert prompt.endswith("\n") and row["num_targets"] == 1
        history = prompt.split("Watched movies:\n", 1)[1].splitlines()
        sequence = train[row["user_id"]]
        t = len(history)  # default budget keeps every earlier item here
        assert history == [item_text(data.catalog[i]) for i in sequence.items[:t]]
        assert completion == completion_text(data.catalog[sequence.items[t]])


def test_prompt_completion_last_n_targets_and_small_budget(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")
    cfg = PromptConfig(max_examples_per_user=2, max_history_tokens=20)
    built = build_examples(data, tiny_tokenizer, cfg, "prompt_completion", max_seq_len=256)
    assert len(built) == 2 * 4
    for row in built:
        prompt = tiny_tokenizer.decode(row["input_ids"][:labeled_spans(row["labels"])[0][0]])
        history = "".join(line + "\n" for line in prompt.split("Watched movies:\n", 1)[1].splitlines())
        assert len(tiny_tokenizer(history)["input_ids"]) <= 20


def test_item_span_windows_label_every_event_but_the_first_once(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")
    cfg = PromptConfig(max_history_items=4)
    built = build_examples(data, tiny_tokenizer, cfg, "item_span", max_seq_len=256)
    train = {s.user_id: s for s in data.sequences(("train",))}
    labeled: dict[str, list[str]] = {u: [] for u in train}
    for row in built:
        ids, labels = row["input_ids"], row["labels"]
        (span,) = labeled_spans(labels)  # the lines after the window's first, contiguous up to the end
        assert span[1] == len(ids)
        lines = tiny_tokenizer.decode(ids).split("Watched movies:\n", 1)[1].splitlines()
        assert 2 <= len(lines) <= 4  # at most max_history_items items per window
        targets = tiny_tokenizer.decode(ids[span[0]:]).splitlines()
        assert targets == lines[1:] and row["num_targets"] == len(targets)
        for n, title in enumerate(targets):  # no target appears in its own context
            assert title not in lines[: n + 1] and title not in tiny_tokenizer.decode(ids[: span[0]])
        labeled[row["user_id"]].extend(targets)
    for user, sequence in train.items():
        expected = [item_text(data.catalog[i]) for i in sequence.items[1:]]
        assert sorted(labeled[user]) == sorted(expected)  # each event but the first exactly once


def window_items(tokenizer, row) -> tuple[str, ...]:
    """The titles of one item_span example's window, oldest first."""
    return tuple(tokenizer.decode(row["input_ids"]).split("Watched movies:\n", 1)[1].splitlines())


@pytest.mark.parametrize("fmt", ["item_span", "catalog"])
def test_window_shifts_cut_each_history_again_with_moved_boundaries(tmp_path, tiny_tokenizer, fmt):
    data = make_dataset(tmp_path / "data")
    one = build_examples(data, tiny_tokenizer, PromptConfig(max_history_items=4), fmt, max_seq_len=256)
    three = build_examples(data, tiny_tokenizer, PromptConfig(max_history_items=4, window_shifts=3), fmt, max_seq_len=256)
    first_cut = {(r["user_id"], window_items(tiny_tokenizer, r)) for r in one}
    windows = [(r["user_id"], window_items(tiny_tokenizer, r)) for r in three]
    assert first_cut <= set(windows)  # cut 0 is the single cut
    assert all(2 <= len(items) <= 4 for _, items in windows)
    train = {s.user_id: s for s in data.sequences(("train",))}
    repeated = [w for w, count in Counter(windows).items() if count > 1]
    assert len(set(windows)) > len(first_cut)  # the other cuts move the boundaries
    for user, items in repeated:  # a window recurs only where a whole short history fits in it
        assert items == tuple(item_text(data.catalog[i]) for i in train[user].items)
    for user, sequence in train.items():  # every event but the first is a target once per cut
        targets = [t for r in three if r["user_id"] == user for t in window_items(tiny_tokenizer, r)[1:]]
        assert sorted(targets) == sorted(3 * [item_text(data.catalog[i]) for i in sequence.items[1:]])
    assert sum(three["num_targets"]) == 3 * sum(one["num_targets"])


def test_catalog_examples_carry_the_users_items_before_their_first_labelled_line(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")
    cfg = PromptConfig(max_history_items=4, window_shifts=3)
    built = build_examples(data, tiny_tokenizer, cfg, "catalog", max_seq_len=256)
    train = {s.user_id: s for s in data.sequences(("train",))}
    before_window = 0
    for row in built:
        prior, targets = row["prior_items"], [label for label in row["labels"] if label != IGNORE_INDEX]
        items = list(train[row["user_id"]].items)
        # the items before the window, the window's unlabelled first line, then its targets: a prefix of the history
        assert prior + targets == items[:len(prior) + len(targets)] and len(targets) == row["num_targets"]
        assert tiny_tokenizer.decode(row["input_ids"]).split("Watched movies:\n", 1)[1].splitlines()[0] == (
            item_text(data.catalog[prior[-1]]))  # the window's first line is the last prior item
        before_window += len(prior) > 1
    assert before_window > 0  # some windows start after the history's first item
    spans = build_examples(data, tiny_tokenizer, cfg, "item_span", max_seq_len=256)
    assert all(prior == [] for prior in spans["prior_items"])  # a catalog-only column


def test_window_shift_sizes_and_their_config_checks():
    assert window_shift_sizes(20, 1) == [0]
    assert window_shift_sizes(20, 3) == [0, 6, 13]
    assert window_shift_sizes(4, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_history_items >= 4"):
        window_shift_sizes(3, 3)
    for overrides, message in ((["prompt.window_shifts=0"], "window_shifts must be >= 1"),
                               (["prompt.window_shifts=2", "train.format=prompt_completion"], "needs train.format item_span or catalog"),
                               (["prompt.window_shifts=3", "prompt.max_history_items=3"], "max_history_items >= window_shifts")):
        with pytest.raises(ConfigError, match=message):
            load_config([], overrides)


def test_cache_is_reused_and_keyed_by_settings(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    first = build_examples(data, tiny_tokenizer, PromptConfig(), "item_span", 256, cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")
    stamp = (cache / entries[0] / "dataset_info.json").stat().st_mtime_ns
    again = build_examples(data, tiny_tokenizer, PromptConfig(), "item_span", 256, cache)
    assert (cache / entries[0] / "dataset_info.json").stat().st_mtime_ns == stamp
    assert again.to_dict() == first.to_dict()
    build_examples(data, tiny_tokenizer, PromptConfig(include_time=True), "item_span", 256, cache)
    build_examples(data, tiny_tokenizer, PromptConfig(), "prompt_completion", 256, cache)
    build_examples(data, tiny_tokenizer, PromptConfig(), "item_span", 128, cache)
    assert len(list(cache.iterdir())) == 4


def test_cache_key_ignores_fields_added_later_at_their_default(tmp_path, tiny_tokenizer, monkeypatch):
    """A cache written before ``prompt.window_shifts`` existed is the one a default config finds."""
    data = make_dataset(tmp_path / "data")
    template = load_template(PromptConfig().template, PromptConfig().prompts_dir)

    def key(cfg: PromptConfig) -> str:
        return examples_cache_key(data, template, tiny_tokenizer, cfg, "item_span", 256)

    now, shifted = key(PromptConfig()), key(PromptConfig(window_shifts=3))
    real_asdict = dataclasses.asdict

    def old_schema(obj):
        tree = real_asdict(obj)
        tree.pop("window_shifts", None)
        return tree

    monkeypatch.setattr(dataclasses, "asdict", old_schema)
    assert key(PromptConfig()) == now
    assert shifted != now


def test_bad_inputs_fail_clearly(tmp_path, tiny_tokenizer):
    data = make_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match="fmt must be one of"):
        build_examples(data, tiny_tokenizer, PromptConfig(), "whole", 256)
    with pytest.raises(PromptError, match="max_seq_len=8 leaves no room"):
        build_examples(data, tiny_tokenizer, PromptConfig(), "item_span", 8)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "glued.jinja").write_text(
        # the prefix ends in a digit and every line starts with digits: BPE merges across the boundary
        '{%- macro prefix() -%}Watched 1{% endmacro -%}'
        '{%- macro item_line(item) -%}{{ item.year[1:] }} {{ item.title }}{{ "\\n" }}{%- endmacro -%}'
        '{%- macro completion(item) -%}{{ item.year[1:] }} {{ item.title }}{{ "\\n" }}{%- endmacro -%}'
        '{{- prefix() -}}{%- for item in history -%}{{ item_line(item) }}{%- endfor -%}',
        encoding="utf-8",
    )
    glued = PromptConfig(template="glued", prompts_dir=str(tmp_path / "p"))
    with pytest.raises(PromptError, match="piece by piece differs"):
        build_examples(data, tiny_tokenizer, glued, "item_span", 256)
