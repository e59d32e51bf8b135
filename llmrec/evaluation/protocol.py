"""What the evaluator needs from a model: score the whole catalog, or rank its top K.

Every model in llmrec (Pop, GRU4Rec, SASRec, the encoder recommender, the fine-tuned decoder,
a loaded ``Recommender``) implements one of these two protocols, and one evaluator scores them
all the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from llmrec.data.schema import UserSequence


@runtime_checkable
class CatalogScorer(Protocol):
    """A model that gives every catalog item a score (higher is better)."""

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        """Scores of shape ``(len(histories), num_items)``, columns in catalog item-index order."""
        ...


@runtime_checkable
class TopKRanker(Protocol):
    """A model that only returns its own top-K list (e.g. constrained beam search).

    Items outside the returned list are treated as ranked below K.
    """

    def rank(
        self, histories: Sequence[UserSequence], k: int, exclude: Sequence[set[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(item_indices, scores)``, each ``(len(histories), k)``, best first.

        ``exclude[b]`` holds item indices that must not appear in row ``b``. A row that has fewer
        than ``k`` valid items pads with ``-1`` (and ``-inf`` score); the evaluator counts those.
        """
        ...
