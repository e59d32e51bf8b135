"""Interest-tag task: targets, evaluation, and the two baselines every tag model is compared with.

The task: given a user's history, rank the tag vocabulary (the catalog's categories, 19 genres
on ML-100K) so that the categories of the user's held-out next item come first. Every tag model
is a :class:`TagScorer` returning a ``(B, T)`` score matrix over the vocabulary.

Baselines:

* :class:`MostFrequentTags`: the tags most common among training interactions (same list for
  every user).
* :class:`CooccurrenceTags`: tags of the user's recent items, each spread through a tag
  co-occurrence table ``P(next item has tag b | a recent item has tag a)`` counted on the train
  split, more recent items weighted higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from llmrec.data.schema import Catalog, EvalCase, UserSequence
from llmrec.evaluation.metrics import f1_at_k, multilabel_auc, precision_at_k, recall_at_k

FloatArray = npt.NDArray[np.float64]
DEFAULT_TAG_KS = (1, 3, 5)


@runtime_checkable
class TagScorer(Protocol):
    """A model that scores every tag of ``tags`` for each history (higher = more likely)."""

    tags: list[str]

    def score_tags(self, histories: Sequence[UserSequence]) -> FloatArray:
        """``(len(histories), len(tags))`` scores."""
        ...


def tag_matrix(catalog: Catalog, tags: Sequence[str]) -> FloatArray:
    """``(N, T)`` 0/1 matrix: item ``i`` carries tag ``t``."""
    column = {tag: j for j, tag in enumerate(tags)}
    matrix = np.zeros((len(catalog), len(tags)), dtype=np.float64)
    for i, item in enumerate(catalog):
        for category in item.categories:
            if category in column:
                matrix[i, column[category]] = 1.0
    return matrix


def cases_with_tags(cases: Sequence[EvalCase], catalog: Catalog) -> list[EvalCase]:
    """The cases whose target item has at least one category (recall is undefined otherwise)."""
    return [case for case in cases if catalog[case.target].categories]


def ranked_tags(scores: FloatArray, tags: Sequence[str]) -> list[list[str]]:
    """Tags of each row, best first (ties broken by vocabulary order)."""
    order = np.argsort(-scores, axis=1, kind="stable")  # (B, T)
    return [[tags[j] for j in row] for row in order]


def evaluate_tags(
    scorer: TagScorer,
    cases: Sequence[EvalCase],
    catalog: Catalog,
    ks: Sequence[int] = DEFAULT_TAG_KS,
    batch_size: int = 64,
) -> dict[str, float]:
    """Precision/recall/F1@K and micro/macro AUC of ``scorer`` against the targets' categories.

    Cases whose target has no category are left out (their count is reported as ``skipped``).
    """
    usable = cases_with_tags(cases, catalog)
    if not usable:
        raise ValueError("no evaluation case has a target with categories")
    tags = list(scorer.tags)
    truth_matrix = tag_matrix(catalog, tags)[[c.target for c in usable]]  # (Q, T)
    scores = np.concatenate(
        [scorer.score_tags([c.history for c in usable[s : s + batch_size]]) for s in range(0, len(usable), batch_size)]
    )  # (Q, T)
    predicted = ranked_tags(scores, tags)
    truth = [list(catalog[c.target].categories) for c in usable]
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"precision@{k}"] = precision_at_k(predicted, truth, k)
        metrics[f"recall@{k}"] = recall_at_k(predicted, truth, k)
        metrics[f"f1@{k}"] = f1_at_k(predicted, truth, k)
    metrics["auc_micro"] = multilabel_auc(truth_matrix, scores, "micro")
    metrics["auc_macro"] = multilabel_auc(truth_matrix, scores, "macro")
    metrics["queries"] = float(len(usable))
    metrics["skipped"] = float(len(cases) - len(usable))
    return metrics


class MostFrequentTags:
    """Scores every tag by its share of training interactions (the same for every user)."""

    def __init__(self, catalog: Catalog, tags: Sequence[str] | None = None):
        self.catalog = catalog
        self.tags = list(tags) if tags is not None else catalog.categories()
        self._items = tag_matrix(catalog, self.tags)
        self.frequency = np.zeros(len(self.tags))

    def fit(self, sequences: Sequence[UserSequence]) -> MostFrequentTags:
        counts = np.zeros(len(self.catalog))
        for sequence in sequences:
            np.add.at(counts, list(sequence.items), 1.0)
        total = counts @ self._items  # (T,)
        self.frequency = total / max(total.sum(), 1.0)
        return self

    def score_tags(self, histories: Sequence[UserSequence]) -> FloatArray:
        return np.tile(self.frequency, (len(histories), 1))  # (B, T)


class CooccurrenceTags:
    """Tags of the user's recent items, spread through next-item tag co-occurrence.

    Args:
        catalog: the item table.
        tags: the vocabulary (default: every catalog category).
        window: recent items that vote.
        decay: weight of the ``j``-th most recent item is ``decay ** j``.
        prior: weight of the global tag frequency added to every row (breaks ties, cold users).
    """

    def __init__(
        self, catalog: Catalog, tags: Sequence[str] | None = None, window: int = 10, decay: float = 0.8, prior: float = 0.1
    ):
        self.catalog = catalog
        self.tags = list(tags) if tags is not None else catalog.categories()
        self.window = window
        self.decay = decay
        self.prior = prior
        self._items = tag_matrix(catalog, self.tags)  # (N, T)
        self.transition = np.zeros((len(self.tags), len(self.tags)))  # (T, T) P(next tag | recent tag)
        self.frequency = np.zeros(len(self.tags))

    def fit(self, sequences: Sequence[UserSequence]) -> CooccurrenceTags:
        counts = np.zeros((len(self.tags), len(self.tags)))
        for sequence in sequences:
            items = self._items[list(sequence.items)]  # (L, T)
            for t in range(1, len(sequence)):
                recent = items[max(0, t - self.window) : t].sum(axis=0)  # (T,)
                counts += np.outer(recent, items[t])
        self.transition = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        self.frequency = MostFrequentTags(self.catalog, self.tags).fit(sequences).frequency
        return self

    def score_tags(self, histories: Sequence[UserSequence]) -> FloatArray:
        scores = np.tile(self.prior * self.frequency, (len(histories), 1))  # (B, T)
        for b, history in enumerate(histories):
            recent = list(history.items[-self.window :])[::-1]  # newest first
            if not recent:
                continue
            weights = self.decay ** np.arange(len(recent))  # (W,)
            votes = weights @ self._items[recent]  # (T,)
            scores[b] += votes @ self.transition / weights.sum()
        return scores
