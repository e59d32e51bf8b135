"""Prompt templates: loading, sandboxed rendering, field checks, sequence contracts, saving with a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.prompts import (
    PROMPTS_ENV,
    PromptError,
    TemplateItem,
    default_prompts_dir,
    load_template,
    load_template_file,
    sample_fields,
    save_templates,
)

GOOD_SEQUENCE = """\
{%- macro prefix() -%}Watched:
{% endmacro -%}
{%- macro item_line(item) -%}{{ item.title }}{{ "\\n" }}{%- endmacro -%}
{%- macro completion(item) -%}{{ item.title }}{{ "\\n" }}{%- endmacro -%}
{{- prefix() -}}{%- for item in history -%}{{ item_line(item) }}{%- endfor -%}
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.jinja"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_templates_load_and_next_item_is_a_sequence_template():
    assert (default_prompts_dir() / "README.md").is_file()
    for name in ("next_item", "interest_tags", "explain"):
        assert load_template(name).path.parent == default_prompts_dir()
    template = load_template("next_item")
    assert template.is_sequence and not template.has_marker and not template.line_uses_position


def test_next_item_renders_the_documented_format():
    text = load_template("next_item").render(**sample_fields())
    assert text == (
        "The user watched these movies in order. Recommend the next movie.\n"
        "Watched movies:\n"
        "Heat (1995) | Action, Crime | rated 4/5\n"
        "Fargo (1996) | Crime, Drama | rated 5/5 | 3 days later\n"
        "Babe (1995) | Children's, Comedy | view | 2 hours later\n"
    )


def test_unknown_top_level_field_fails_at_load_naming_template_line_and_field(tmp_path):
    _write(tmp_path, "bad", "Hello\n{{ usr_name }} watched {{ num_items }} movies")
    with pytest.raises(PromptError, match=r"template bad .*bad\.jinja, line 2\): unknown field 'usr_name'"):
        load_template("bad", tmp_path)


def test_unknown_item_field_fails_at_load(tmp_path):
    _write(tmp_path, "bad_item", "{% for item in history %}{{ item.director }}\n{% endfor %}")
    with pytest.raises(PromptError, match=r"template bad_item .*line 1.*unknown field.*director"):
        load_template("bad_item", tmp_path)


def test_missing_field_at_render_names_the_template():
    template = load_template("explain")
    with pytest.raises(PromptError, match=r"template explain .*unknown field.*target"):
        template.render(history=[], num_items=0)


def test_titles_are_data_never_template_code():
    template = load_template("next_item")
    evil = [TemplateItem("{{ 7*7 }} {% for x in [1] %}x{% endfor %} (1999)", "9", position=1)]
    text = template.render(history=evil, num_items=1)
    assert "{{ 7*7 }} {% for x in [1] %}x{% endfor %} (1999)\n" in text
    assert "49" not in text


def test_sandbox_blocks_python_internals(tmp_path):
    _write(tmp_path, "escape", "{{ history.__class__.__mro__ }}")
    with pytest.raises(PromptError, match="escape"):
        load_template("escape", tmp_path)


def test_prompts_dir_argument_and_environment_override(tmp_path, monkeypatch):
    _write(tmp_path, "next_item", GOOD_SEQUENCE)
    assert load_template("next_item", tmp_path).path == tmp_path / "next_item.jinja"
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    assert load_template("next_item").render(**sample_fields()).startswith("Watched:\nHeat (1995)\n")
    with pytest.raises(PromptError, match=r"template 'nope' not found.*\['next_item'\]"):
        load_template("nope")


def test_sequence_contract_completion_must_match_item_line(tmp_path):
    broken = GOOD_SEQUENCE.replace('{%- macro completion(item) -%}{{ item.title }}', '{%- macro completion(item) -%}> {{ item.title }}')
    _write(tmp_path, "mismatch", broken)
    with pytest.raises(PromptError, match="completion\\(item\\) must equal item_line"):
        load_template("mismatch", tmp_path)


def test_sequence_contract_body_must_be_the_pieces(tmp_path):
    _write(tmp_path, "body", GOOD_SEQUENCE + "Answer:")
    with pytest.raises(PromptError, match="body must render"):
        load_template("body", tmp_path)


def test_syntax_error_names_file_and_line(tmp_path):
    _write(tmp_path, "syntax", "ok\n{% for item in history %}")
    with pytest.raises(PromptError, match=r"syntax\.jinja, line \d+\): syntax error"):
        load_template("syntax", tmp_path)


def test_save_templates_copies_exact_bytes_and_reloads_verbatim(tmp_path):
    written = save_templates(tmp_path / "run" / "prompts", ["next_item", "explain"])
    for path in written:
        original = default_prompts_dir() / path.name
        assert path.read_bytes() == original.read_bytes()
    reloaded = load_template_file(written[0])
    assert reloaded.render(**sample_fields()) == load_template("next_item").render(**sample_fields())
    assert not list((tmp_path / "run" / "prompts").glob(".*tmp*"))
