"""Prefix grounding over normalized titles (a sorted array walked with binary search).

Scores: 1.0 for the whole normalized title; ``len(text) / len(title)`` when the text is a prefix of
a title (a truncated generation: shortest titles first); ``len(title) / len(text)`` when a title is a
prefix of the text at a word boundary (a generation that ran on past the title). A year named in
the text breaks ties between remakes.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence

from llmrec.data.schema import Catalog
from llmrec.grounding.base import Match, match, normalize_title, register, year_bonus, year_of


@register("trie")
class TrieGrounder:
    name = "trie"

    def __init__(self, catalog: Catalog, min_score: float = 0.99, min_prefix_chars: int = 3):
        self.catalog, self.min_score, self.min_prefix_chars = catalog, min_score, min_prefix_chars
        keyed = sorted((normalize_title(item.display_title()), i) for i, item in enumerate(catalog))
        self.keys = [key for key, _ in keyed]
        self.indices = [i for _, i in keyed]

    def ground(self, texts: Sequence[str], k: int = 1) -> list[list[Match]]:
        return [self._one(text, k) for text in texts]

    def _range(self, key: str) -> tuple[int, int]:
        """Positions of the titles that start with ``key``."""
        lo = bisect.bisect_left(self.keys, key)
        hi = bisect.bisect_left(self.keys, key + "\U0010ffff")
        return lo, hi

    def _one(self, text: str, k: int) -> list[Match]:
        key, year = normalize_title(text), year_of(text)
        if len(key) < self.min_prefix_chars:
            return []
        lo, hi = self._range(key)
        candidates = heapq.nsmallest(
            k + 8, range(lo, hi), key=lambda pos: (len(self.keys[pos]), self.indices[pos])
        )  # text is a prefix of these titles (an exact title is the shortest)
        scored = [(len(key) / len(self.keys[pos]), self.indices[pos]) for pos in candidates]
        if not scored:  # a title may be a prefix of the text: longest word-boundary prefix first
            words = key.split(" ")
            for cut in range(len(words) - 1, 0, -1):
                head = " ".join(words[:cut])
                lo = bisect.bisect_left(self.keys, head)
                hits = [self.indices[p] for p in range(lo, min(lo + k + 8, len(self.keys))) if self.keys[p] == head]
                if hits:
                    scored = [(len(head) / len(key), i) for i in hits]
                    break
        scored.sort(key=lambda pair: (-pair[0], -year_bonus(year, self.catalog, pair[1]), pair[1]))
        return [match(self.catalog, i, score, self.name) for score, i in scored[:k]]
