"""A user's history as prompt text, under a token budget measured with the real tokenizer.

The prompt is ``prefix + marker(1) + line(item_1) + ... + marker(k) + line(item_k) + marker(k+1)``
(see :mod:`llmrec.prompts`); with the default ``next_item`` template the markers are empty and the
prompt ends with the newline of the last history line, so the model answers with the next line.
The most recent items are kept whole (the oldest are dropped, a title is never cut) while
``marker + line`` tokens stay within ``max_history_tokens`` and at most ``max_history_items`` items.

Speed: each line (and marker) is tokenized once per tokenizer and cached by its text, and a whole
user sequence is rendered once (:class:`HistoryLines`) so the windows of every training target
reuse it; ML-100K (943 users, ~100k events) serializes in about a second.

Tokenization contract shared with training and the trie decoder: the prompt text is tokenized with
``add_special_tokens`` = :func:`prompt_adds_special_tokens` (the tokenizer's own BOS for plain
prompts, none for chat prompts, whose template writes its own) and a completion is tokenized with
``add_special_tokens=False``; prompts end with a newline, so the two never merge.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmrec.config import PromptConfig
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.prompts import PromptError, PromptTemplate, TemplateItem, load_template

CHAT_SENTINEL = "\x00llmrec-content\x00"  # stands in for the user message when splitting a chat template
_TIME_UNITS = ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"), (86400, "day"), (3600, "hour"), (60, "minute"))


@dataclass(frozen=True)
class Segment:
    """A piece of a serialized prompt. ``kind``: head | marker | item | tail."""

    text: str
    kind: str
    position: int = -1  # index into the user's sequence for marker / item segments


@dataclass(frozen=True)
class SerializedPrompt:
    """A rendered prompt and what it holds.

    Attributes:
        text: the prompt up to and including the answer marker (``"".join`` of ``segments``).
        kept_positions: indices into the sequence of the history items rendered, oldest first.
        history_tokens: tokens of the kept markers + history lines (what the budget limits).
        segments: head (chat header + instruction), marker/item per kept item, tail (answer marker).
        chat: whether the tokenizer's chat template wrapped the prompt.
    """

    text: str
    kept_positions: tuple[int, ...]
    history_tokens: int
    segments: tuple[Segment, ...]
    chat: bool = False


def item_text(item: Item, cfg: PromptConfig | None = None) -> str:
    """The exact string that stands for ``item`` in a history line and in a completion.

    ``"Heat (1995)"`` with ``include_year`` (the default), else the bare title. Line breaks and
    runs of whitespace in catalog titles are folded to one space, so an item is always one line.
    """
    cfg = cfg or PromptConfig()
    title = item.display_title() if cfg.include_year else item.title
    text = " ".join(title.split())
    if not text:
        raise PromptError(f"item {item.item_id!r} has an empty title; every catalog item needs one to be serialized")
    return text


def completion_text(item: Item, cfg: PromptConfig | None = None, template: PromptTemplate | None = None) -> str:
    """What follows the prompt when ``item`` is the answer: its text plus the end marker (``"\\n"``)."""
    cfg = cfg or PromptConfig()
    template = template or load_template(cfg.template, cfg.prompts_dir)
    return template.completion(target_item(item, cfg))


def target_item(item: Item, cfg: PromptConfig) -> TemplateItem:
    """Template fields of a target item (no interaction fields: they are unknown for an answer)."""
    categories = tuple(item.categories) if cfg.include_categories else ()
    return TemplateItem(title=item_text(item, cfg), item_id=item.item_id, year=item.year, categories=categories)


def relative_time(seconds: float) -> str:
    """``"3 days later"`` style text for a gap of ``seconds`` (under a minute: ``"moments later"``)."""
    seconds = max(0, int(seconds))
    for size, unit in _TIME_UNITS:
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'} later"
    return "moments later"


def history_item(sequence: UserSequence, index: int, catalog: Catalog, cfg: PromptConfig, position: int = 0) -> TemplateItem:
    """Template fields of event ``index`` of ``sequence``; fields switched off in ``cfg`` are empty."""
    item = catalog[sequence.items[index]]
    gap = None
    if cfg.include_time and index > 0:
        gap = relative_time(sequence.timestamps[index] - sequence.timestamps[index - 1])
    return TemplateItem(
        title=item_text(item, cfg),
        item_id=item.item_id,
        year=item.year,
        categories=tuple(item.categories) if cfg.include_categories else (),
        action=sequence.actions[index] if cfg.include_rating else None,
        rating=sequence.ratings[index] if cfg.include_rating else None,
        gap=gap,
        position=position,
    )


# -- tokenization cache -------------------------------------------------------------------------
_TOKEN_CACHES: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, ...]]] = weakref.WeakKeyDictionary()
_MAX_CACHED = 2_000_000


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids of each text (no special tokens), cached per tokenizer and text."""
    cache = _TOKEN_CACHES.setdefault(tokenizer, {})
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    if missing:
        if len(cache) + len(missing) > _MAX_CACHED:
            cache.clear()
        encoded = tokenizer(missing, add_special_tokens=False)["input_ids"]
        cache.update(zip(missing, (tuple(ids) for ids in encoded), strict=True))
    return [cache[t] for t in texts]


def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """Tokens the tokenizer puts before a text on its own (a BOS for Llama-style, none for GPT-2)."""
    probe = "x"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return tuple(full[:start])
    return ()


# -- chat format --------------------------------------------------------------------------------
def uses_chat(tokenizer: Any, cfg: PromptConfig) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template (``cfg.chat_format``)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_format == "plain":
        return False
    if cfg.chat_format == "auto":
        return has_template
    if cfg.chat_format == "chat":
        if not has_template:
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise PromptError(f"prompt.chat_format is 'chat' but tokenizer {name!r} has no chat template; use plain or auto")
        return True
    raise PromptError(f"prompt.chat_format must be plain, chat or auto, got {cfg.chat_format!r}")


def prompt_adds_special_tokens(tokenizer: Any, cfg: PromptConfig) -> bool:
    """``add_special_tokens`` for prompt text: the chat template already writes its own BOS."""
    return not uses_chat(tokenizer, cfg)


def chat_frame(tokenizer: Any) -> tuple[str, str]:
    """Text the chat template puts before and after a single user message (with the assistant cue)."""
    messages = [{"role": "user", "content": CHAT_SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str) or text.count(CHAT_SENTINEL) != 1:
        raise PromptError("the tokenizer's chat template does not keep the user message verbatim; use prompt.chat_format=plain")
    before, after = text.split(CHAT_SENTINEL)
    return before, after


# -- history windows ------------------------------------------------------------------------------
class HistoryLines:
    """One user's history rendered once; picks the most recent window that fits a budget.

    Args:
        sequence: the user's events, oldest first (all of them are history).
        catalog: maps the sequence's item indices to items.
        template: a sequence template (``next_item``).
        tokenizer: the model's tokenizer (token counts are real).
        cfg: which fields to render.
    """

    def __init__(self, sequence: UserSequence, catalog: Catalog, template: PromptTemplate, tokenizer: Any, cfg: PromptConfig):
        self.sequence = sequence
        self.template = template
        self.tokenizer = tokenizer
        self.items = [history_item(sequence, i, catalog, cfg) for i in range(len(sequence))]
        self.lines: list[str] = []
        self.cumulative = [0]  # cumulative[i] = tokens of lines[:i] (position-free templates)
        self._marker_cumulative = [0]  # _marker_cumulative[k] = tokens of marker(1) .. marker(k)
        if not template.line_uses_position:
            self.lines = [template.item_line(item) for item in self.items]
            for ids in token_ids(tokenizer, self.lines):
                self.cumulative.append(self.cumulative[-1] + len(ids))

    def marker_tokens(self, count: int) -> int:
        """Tokens of ``marker(1) .. marker(count)``."""
        if not self.template.has_marker or count == 0:
            return 0
        while len(self._marker_cumulative) <= count:
            (ids,) = token_ids(self.tokenizer, [self.template.marker(len(self._marker_cumulative))])
            self._marker_cumulative.append(self._marker_cumulative[-1] + len(ids))
        return self._marker_cumulative[count]

    def window(self, end: int, max_items: int, max_tokens: int) -> tuple[int, list[str]]:
        """Largest window ``[start, end)`` within the limits, and its lines (positions 1..k).

        Returns:
            ``(start, lines)``; ``start == end`` when not even the latest item fits.
        """
        limit = min(end, max_items)
        if not self.template.line_uses_position:
            k = 0
            while k < limit and self._fast_cost(end, k + 1) <= max_tokens:
                k += 1
            return end - k, self.lines[end - k:end]
        for k in range(limit, 0, -1):  # a line that prints its position: re-render per window size
            lines = self._numbered_lines(end - k, end)
            cost = sum(len(ids) for ids in token_ids(self.tokenizer, lines)) + self.marker_tokens(k)
            if cost <= max_tokens:
                return end - k, lines
        return end, []

    def cost(self, start: int, end: int, lines: Sequence[str]) -> int:
        """Tokens of markers + lines of the window ``[start, end)``."""
        return sum(len(ids) for ids in token_ids(self.tokenizer, list(lines))) + self.marker_tokens(end - start)

    def _fast_cost(self, end: int, k: int) -> int:
        return self.cumulative[end] - self.cumulative[end - k] + self.marker_tokens(k)

    def _numbered_lines(self, start: int, end: int) -> list[str]:
        return [
            self.template.item_line(_with_position(self.items[i], i - start + 1)) for i in range(start, end)
        ]


def _with_position(item: TemplateItem, position: int) -> TemplateItem:
    return TemplateItem(item.title, item.item_id, item.year, item.categories, item.action, item.rating, item.gap, position)


def assemble(
    template: PromptTemplate,
    start: int,
    end: int,
    lines: Sequence[str],
    history_tokens: int,
    frame: tuple[str, str] | None,
) -> SerializedPrompt:
    """Join head, markers, lines and the answer marker into a :class:`SerializedPrompt`."""
    before, after = frame or ("", "")
    segments = [Segment(before + template.prefix(), "head")]
    for offset, line in enumerate(lines):
        marker = template.marker(offset + 1)
        if marker:
            segments.append(Segment(marker, "marker", start + offset))
        segments.append(Segment(line, "item", start + offset))
    segments.append(Segment(after + template.marker(len(lines) + 1), "tail"))
    text = "".join(s.text for s in segments)
    return SerializedPrompt(text, tuple(range(start, end)), history_tokens, tuple(segments), frame is not None)


def serialize_sequence(
    sequence: UserSequence,
    catalog: Catalog,
    template: PromptTemplate,
    tokenizer: Any,
    cfg: PromptConfig,
    max_history_tokens: int | None = None,
) -> SerializedPrompt:
    """Render ``sequence`` (all of it is history) as a prompt ending in the answer marker.

    Keeps the most recent items whole: at most ``cfg.max_history_items`` items whose markers and
    lines take at most ``max_history_tokens`` (default ``cfg.max_history_tokens``) tokens of
    ``tokenizer``. Deterministic: the same inputs give the same text.
    """
    budget = cfg.max_history_tokens if max_history_tokens is None else max_history_tokens
    history = HistoryLines(sequence, catalog, template, tokenizer, cfg)
    end = len(sequence)
    start, lines = history.window(end, cfg.max_history_items, budget)
    frame = chat_frame(tokenizer) if uses_chat(tokenizer, cfg) else None
    return assemble(template, start, end, lines, history.cost(start, end, lines), frame)


def render_prompt(sequence: UserSequence, catalog: Catalog, template: PromptTemplate, tokenizer: Any, cfg: PromptConfig) -> str:
    """The prompt text for ``sequence``, up to and including the answer marker (model continues with a title)."""
    return serialize_sequence(sequence, catalog, template, tokenizer, cfg).text
