"""Exact grounding: the display title verbatim (score 1.0), else the normalized title (score 0.9).

Normalization folds case, accents and punctuation and drops a trailing ``(year)``; when several
items share a normalized title (remakes), a year named in the text picks the right one (score 0.95),
otherwise all are returned in item-index order. Typos are never corrected here.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmrec.data.schema import Catalog
from llmrec.grounding.base import Match, match, normalize_title, register, year_of


@register("exact")
class ExactGrounder:
    name = "exact"

    def __init__(self, catalog: Catalog, min_score: float = 0.9):
        self.catalog, self.min_score = catalog, min_score
        self.by_title: dict[str, list[int]] = {}
        self.by_key: dict[str, list[int]] = {}
        for index, item in enumerate(catalog):
            self.by_title.setdefault(item.display_title(), []).append(index)
            self.by_key.setdefault(normalize_title(item.display_title()), []).append(index)

    def ground(self, texts: Sequence[str], k: int = 1) -> list[list[Match]]:
        return [self._one(text, k) for text in texts]

    def _one(self, text: str, k: int) -> list[Match]:
        text = text.strip()
        if text in self.by_title:
            return [match(self.catalog, i, 1.0, self.name) for i in self.by_title[text][:k]]
        year = year_of(text)
        hits = self.by_key.get(normalize_title(text), [])
        scored = sorted(((0.95 if year and self.catalog[i].year == year else 0.9), i) for i in hits)
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        return [match(self.catalog, i, score, self.name) for score, i in scored[:k]]
