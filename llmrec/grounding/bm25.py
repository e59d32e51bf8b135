"""BM25 grounding (bm25s) over words plus character n-grams of normalized titles.

Tokens are the lowercase words of ``normalize_title`` plus, with ``ngram > 0``, the character
n-grams of each word padded with ``#`` (bigrams by default: "heat" gives "#h", "he", "ea", "at",
"t#"): a typo then only loses a few n-grams instead of the whole word. Bigrams, not trigrams: on
the fixture perturbation set (tests/unit/test_grounding.py, 300 queries) bigrams missed 3 and
trigrams 15, since a swap in a four-letter word ("Haet") leaves no trigram in common. No stemming,
no stop words; the trailing year is not indexed (normalize_title drops it).

Score = 2 BM25(text, title) / (BM25(title, title) + BM25(text, text)), a Dice-style similarity in
[0, 1] that is 1 only when text and title have the same tokens: a text that covers only part of a
title, or a title plus extra words, scores lower. BM25(title, title) is the column sum of the
index's (token x document) score matrix; BM25(text, text) uses the same Lucene idf and length
normalization with the text as the document. Ties go to the higher raw BM25, then a year named in
the text, then the item index.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from llmrec.data.schema import Catalog
from llmrec.grounding.base import Match, match, normalize_title, register, year_bonus, year_of


def title_tokens(text: str, ngram: int = 2) -> list[str]:
    """Words of the normalized text plus the ``ngram``-character grams of each padded word."""
    words = normalize_title(text).split()
    tokens = list(words)
    if ngram > 0:
        for word in words:
            padded = f"#{word}#"
            tokens += [padded[i:i + ngram] for i in range(max(len(padded) - ngram + 1, 1))]
    return tokens


@register("bm25")
class BM25Grounder:
    name = "bm25"

    def __init__(self, catalog: Catalog, ngram: int = 2, min_score: float = 0.6, k1: float = 1.2, b: float = 0.75):
        import bm25s

        self.catalog, self.ngram, self.min_score, self.k1, self.b = catalog, ngram, min_score, k1, b
        corpus = [title_tokens(item.display_title(), ngram) or ["#"] for item in catalog]
        self.avg_len = sum(len(doc) for doc in corpus) / max(len(corpus), 1)
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(corpus, show_progress=False)
        self.vocab: dict[str, int] = self.index.vocab_dict
        scores = self.index.scores
        # BM25 of each title against itself = its column sum in the (token x document) score matrix
        self.self_score = np.bincount(scores["indices"], weights=scores["data"], minlength=len(catalog))
        doc_freq = np.diff(scores["indptr"])
        self.idf = np.log1p((len(catalog) - doc_freq + 0.5) / (doc_freq + 0.5))  # Lucene idf, as bm25s

    def text_self_score(self, counts: Counter[int], length: int) -> float:
        """BM25 of a text against itself as a document (term frequencies ``counts``, ``length`` tokens)."""
        norm = self.k1 * (1 - self.b + self.b * length / self.avg_len)
        return float(sum(self.idf[t] * tf * (self.k1 + 1) / (tf + norm) for t, tf in counts.items()))

    def ground(self, texts: Sequence[str], k: int = 1) -> list[list[Match]]:
        return [self._one(text, k) for text in texts]

    def _one(self, text: str, k: int) -> list[Match]:
        tokens = title_tokens(text, self.ngram)
        counts = Counter(self.vocab[t] for t in tokens if t in self.vocab)
        if not counts:
            return []
        raw = self.index.get_scores_from_ids(sorted(counts))  # (N,)
        coverage = 2 * raw / (self.self_score + self.text_self_score(counts, len(tokens)))
        take = min(k + 8, len(raw))
        top = np.argpartition(-coverage, take - 1)[:take]
        year = year_of(text)
        order = sorted(top.tolist(), key=lambda i: (-coverage[i], -raw[i], -year_bonus(year, self.catalog, i), i))
        return [match(self.catalog, i, coverage[i], self.name) for i in order[:k] if raw[i] > 0]
