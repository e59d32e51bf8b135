"""Most-popular baseline: every user gets the items ranked by their training-split count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import UserSequence


class Popularity:
    """A ``CatalogScorer`` whose score of an item is its interaction count (the same for all users)."""

    def __init__(self, counts: Sequence[float] | np.ndarray):
        self.counts = torch.as_tensor(np.asarray(counts, dtype=np.float32))  # (N,)

    @classmethod
    def fit(cls, sequences: Sequence[UserSequence], num_items: int) -> Popularity:
        """Count every item occurrence in ``sequences`` (the training split)."""
        counts = np.zeros(num_items, dtype=np.float32)
        for sequence in sequences:
            np.add.at(counts, np.asarray(sequence.items, dtype=np.int64), 1.0)
        return cls(counts)

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(histories), -1).clone()  # (B, N)


def build_and_train(dataset: PreparedDataset, params: dict[str, Any], seed: int) -> Popularity:
    """Registry entry: Pop has no parameters and no randomness (``params`` must be empty)."""
    if params:
        raise ValueError(f"pop takes no parameters, got {sorted(params)}")
    return Popularity.fit(dataset.sequences(("train",)), len(dataset.catalog))
