"""Serialization: item text, token budget (most recent items whole), flags, determinism, chat."""

from __future__ import annotations

import re

import pytest

from llmrec.config import PromptConfig
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.prompts import PromptError, load_template
from llmrec.serialize import (
    completion_text,
    item_text,
    relative_time,
    render_prompt,
    serialize_sequence,
    token_ids,
)
from tests.tiny import FIXTURE_TITLES

NUMBERED = """\
{%- macro prefix() -%}History:
{% endmacro -%}
{%- macro item_line(item) -%}{{ item.title }} (#{{ item.position }}){{ "\\n" }}{%- endmacro -%}
{%- macro completion(item) -%}{{ item.title }} (#{{ item.position }}){{ "\\n" }}{%- endmacro -%}
{{- prefix() -}}{%- for item in history -%}{{ item_line(item) }}{%- endfor -%}
"""


def fixture_catalog() -> Catalog:
    items = []
    for i, text in enumerate(FIXTURE_TITLES):
        match = re.fullmatch(r"(.*) \((\d{4})\)", text)
        assert match
        items.append(Item(str(i), match.group(1), ("Drama", "Comedy") if i % 2 else ("Action",), {"year": match.group(2)}))
    return Catalog(items)


def sequence_of(indices: list[int], user: str = "u1") -> UserSequence:
    n = len(indices)
    return UserSequence(user, tuple(indices), tuple(1000 + 86400 * 3 * i for i in range(n)), ("rate",) * n, tuple(float(1 + i % 5) for i in range(n)))


def history_lines(text: str) -> list[str]:
    return text.split("Watched movies:\n", 1)[1].splitlines()


def test_item_text_and_completion_text():
    catalog = fixture_catalog()
    heat = catalog[7]
    assert item_text(heat) == "Heat (1995)"
    assert item_text(heat, PromptConfig(include_year=False)) == "Heat"
    assert completion_text(heat) == "Heat (1995)\n"
    assert item_text(Item("x", " Line\nbreak \t title ")) == "Line break title"
    with pytest.raises(PromptError, match="'x' has an empty title"):
        item_text(Item("x", " \n"))


def test_budget_keeps_the_most_recent_items_whole(tiny_tokenizer):
    catalog, template = fixture_catalog(), load_template("next_item")
    sequence = sequence_of(list(range(30)))
    cfg = PromptConfig(max_history_tokens=40, max_history_items=50)
    out = serialize_sequence(sequence, catalog, template, tiny_tokenizer, cfg)
    kept = out.kept_positions
    assert kept == tuple(range(30 - len(kept), 30)) and 0 < len(kept) < 30
    assert history_lines(out.text) == [item_text(catalog[i]) for i in kept]
    lines = [item_text(catalog[i]) + "\n" for i in kept]
    assert out.history_tokens == len(tiny_tokenizer("".join(lines))["input_ids"]) <= 40
    older = item_text(catalog[kept[0] - 1]) + "\n"
    assert out.history_tokens + len(tiny_tokenizer(older)["input_ids"]) > 40  # the next older item would not fit


def test_max_history_items_and_item_too_long(tiny_tokenizer):
    catalog, template = fixture_catalog(), load_template("next_item")
    sequence = sequence_of(list(range(20)))
    assert serialize_sequence(sequence, catalog, template, tiny_tokenizer, PromptConfig(max_history_items=4)).kept_positions == (16, 17, 18, 19)
    empty = serialize_sequence(sequence, catalog, template, tiny_tokenizer, PromptConfig(max_history_tokens=2))
    assert empty.kept_positions == () and empty.text.endswith("Watched movies:\n")


def test_serialization_is_deterministic(tiny_tokenizer):
    catalog, template = fixture_catalog(), load_template("next_item")
    sequence = sequence_of([5, 3, 9, 1, 7, 2, 8])
    cfg = PromptConfig(max_history_tokens=30, include_time=True, include_rating=True, include_categories=True)
    first = serialize_sequence(sequence, catalog, template, tiny_tokenizer, cfg)
    again = serialize_sequence(sequence, catalog, load_template("next_item"), tiny_tokenizer, cfg)
    assert first == again


def test_flags_render_categories_rating_and_time(tiny_tokenizer):
    catalog, template = fixture_catalog(), load_template("next_item")
    cfg = PromptConfig(include_time=True, include_rating=True, include_categories=True)
    text = render_prompt(sequence_of([7, 20]), catalog, template, tiny_tokenizer, cfg)
    assert history_lines(text) == ["Heat (1995) | Drama, Comedy | rated 1/5", "Fargo (1996) | Action | rated 2/5 | 3 days later"]
    assert relative_time(30) == "moments later" and relative_time(3600) == "1 hour later"
    assert relative_time(86400 * 2 + 5) == "2 days later" and relative_time(86400 * 800) == "2 years later"


def test_prompt_and_completion_tokenize_independently(tiny_tokenizer):
    """The trie decoder tokenizes completions alone: prompt + completion must split at the boundary."""
    catalog, template = fixture_catalog(), load_template("next_item")
    prompt = render_prompt(sequence_of([1, 2, 3]), catalog, template, tiny_tokenizer, PromptConfig())
    for item in catalog:
        completion = completion_text(item)
        joint = tiny_tokenizer(prompt + completion)["input_ids"]
        assert joint == tiny_tokenizer(prompt)["input_ids"] + tiny_tokenizer(completion)["input_ids"]


def test_position_dependent_lines_match_a_brute_force_reference(tmp_path, tiny_tokenizer):
    (tmp_path / "numbered.jinja").write_text(NUMBERED, encoding="utf-8")
    template = load_template("numbered", tmp_path)
    assert template.line_uses_position
    catalog = fixture_catalog()
    sequence = sequence_of(list(range(12)))
    for budget in (0, 9, 25, 60, 500):
        cfg = PromptConfig(template="numbered", max_history_tokens=budget)
        out = serialize_sequence(sequence, catalog, template, tiny_tokenizer, cfg)
        best = 0
        for k in range(1, 13):  # reference: render each window whole and count its tokens
            text = "".join(f"{item_text(catalog[i])} (#{i - (12 - k) + 1})\n" for i in range(12 - k, 12))
            if len(tiny_tokenizer(text)["input_ids"]) <= budget:
                best = k
        assert len(out.kept_positions) == best
        assert out.text == "History:\n" + "".join(f"{item_text(catalog[i])} (#{n + 1})\n" for n, i in enumerate(out.kept_positions))


def test_token_cache_returns_real_token_ids(tiny_tokenizer):
    texts = ["Heat (1995)\n", "Fargo (1996)\n", "Heat (1995)\n"]
    assert token_ids(tiny_tokenizer, texts) == [tuple(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def test_chat_format(tiny_tokenizer):
    catalog, template = fixture_catalog(), load_template("next_item")
    sequence = sequence_of([1, 2])
    with pytest.raises(PromptError, match="has no chat template"):
        render_prompt(sequence, catalog, template, tiny_tokenizer, PromptConfig(chat_format="chat"))
    plain = render_prompt(sequence, catalog, template, tiny_tokenizer, PromptConfig())
    assert render_prompt(sequence, catalog, template, tiny_tokenizer, PromptConfig(chat_format="auto")) == plain
    chat_tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    chat_tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}[SEP]\n{% endfor %}"
        "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
    )
    out = serialize_sequence(sequence, catalog, template, chat_tokenizer, PromptConfig(chat_format="chat"))
    assert out.chat and out.text == "<|endoftext|>user\n" + plain + "[SEP]\n<|endoftext|>assistant\n"
