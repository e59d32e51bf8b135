"""Grounding: map generated text to real catalog items (exact | trie | fuzzy | bm25 | dense)."""

from llmrec.grounding import bm25, dense, exact, fuzzy, trie  # noqa: F401  (register the grounders)
from llmrec.grounding.base import (
    GROUNDERS,
    Grounder,
    Match,
    NoMatch,
    build_grounder,
    ground_chain,
    normalize_title,
    valid_rate,
)

__all__ = ["GROUNDERS", "Grounder", "Match", "NoMatch", "build_grounder", "ground_chain", "normalize_title",
           "valid_rate"]
