"""Grounding: map free text (a generated title) to real catalog items, never to invented ones.

A ``Grounder`` answers ``ground(texts, k)`` with up to ``k`` ``Match`` objects per text, best first;
every match carries the grounder's name (``method``) and its score on that grounder's own scale
(documented per grounder). ``min_score`` is the grounder's confidence threshold: ``ground_chain``
tries grounders in order and returns the first match at or above it, or an explicit ``NoMatch``
holding the closest candidates seen. Grounders are built by short name through ``build_grounder``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from llmrec.data.schema import Catalog


@dataclass(frozen=True)
class Match:
    """One catalog item a text was grounded to."""

    item_index: int  # catalog position (score column)
    item_id: str
    title: str  # display title of the item
    score: float  # on the grounder's own scale; higher is better
    method: str  # grounder name


@dataclass(frozen=True)
class NoMatch:
    """No grounder was confident: the text and the closest candidates, for inspection only."""

    text: str
    closest: tuple[Match, ...]
    method: str = "none"


@runtime_checkable
class Grounder(Protocol):
    """Maps texts to catalog items."""

    name: str
    min_score: float  # a match at or above this is confident

    def ground(self, texts: Sequence[str], k: int = 1) -> list[list[Match]]:
        """Up to ``k`` matches per text, best first (ties by item index)."""
        ...


GrounderFactory = Callable[..., Grounder]
GROUNDERS: dict[str, GrounderFactory] = {}


def register(name: str) -> Callable[[GrounderFactory], GrounderFactory]:
    """Class decorator adding a grounder to the registry under a short name."""

    def wrap(factory: GrounderFactory) -> GrounderFactory:
        GROUNDERS[name] = factory
        return factory

    return wrap


def build_grounder(name: str, catalog: Catalog, **params: Any) -> Grounder:
    """Build the grounder registered as ``name`` (exact | trie | fuzzy | bm25 | dense) over ``catalog``."""
    import llmrec.grounding  # noqa: F401  (fills the registry)

    if name not in GROUNDERS:
        raise ValueError(f"unknown grounder {name!r}; known: {sorted(GROUNDERS)}")
    return GROUNDERS[name](catalog, **params)


def ground_chain(text: str, grounders: Sequence[Grounder], k: int = 5) -> Match | NoMatch:
    """The first confident match of ``grounders`` tried in order; else ``NoMatch`` with the closest candidates."""
    closest: list[Match] = []
    for grounder in grounders:
        matches = grounder.ground([text], k=k)[0]
        if matches and matches[0].score >= grounder.min_score:
            return matches[0]
        closest.extend(matches)
    return NoMatch(text, tuple(closest[:k]))


_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_NON_WORD = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")


def year_of(text: str) -> str | None:
    """The trailing ``(1995)`` year of a title, if any."""
    found = _YEAR.search(text.strip())
    return found.group(1) if found else None


_MOVED_ARTICLE = re.compile(r"^(.+?), (The|A|An|La|Le|Les|Il|El|Das|Der|Die)(\s*\(\d{4}\))?$", re.IGNORECASE)


def normalize_title(text: str, strip_year: bool = True) -> str:
    """Lowercase, accents folded, punctuation removed, whitespace collapsed, trailing ``(year)`` dropped."""
    text = text.strip()
    if strip_year:
        text = _YEAR.sub("", text)
    # MovieLens/IMDb list form moves the article to the end: "Godfather, The (1972)" -> "The Godfather (1972)".
    text = _MOVED_ARTICLE.sub(r"\2 \1\3", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _NON_WORD.sub(" ", text.lower())
    return _SPACES.sub(" ", text).strip()


def clean_generation(text: str) -> str:
    """The first line of a raw generation, without list bullets or surrounding quotes."""
    line = text.strip().split("\n", 1)[0].strip()
    line = re.sub(r"^(\d+[.)]\s+|[-*•]\s+)", "", line)
    return line.strip().strip("\"'“”").strip()


def valid_rate(raw_texts: Sequence[str], catalog: Catalog) -> float:
    """Share of raw generations whose first line is exactly a catalog display title (no grounding)."""
    if not raw_texts:
        return 0.0
    titles = {item.display_title() for item in catalog}
    return sum(clean_generation(text) in titles for text in raw_texts) / len(raw_texts)


def match(catalog: Catalog, index: int, score: float, method: str) -> Match:
    """A ``Match`` for catalog position ``index``."""
    item = catalog[index]
    return Match(index, item.item_id, item.display_title(), float(score), method)


def year_bonus(text_year: str | None, catalog: Catalog, index: int) -> float:
    """1.0 when the text names a year and the item has that year, else 0.0 (a tie-breaker)."""
    return 1.0 if text_year is not None and catalog[index].year == text_year else 0.0
