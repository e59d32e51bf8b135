"""GRU4Rec (Hidasi et al., 2016) as a session-parallel-free sequence model.

Item embeddings -> dropout -> a stacked GRU -> dropout -> a projection back to the embedding
width, scored against the item embeddings; trained with full-softmax cross-entropy over the
catalog at every position (the setting of RecBole's reference GRU4Rec numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmrec.baselines.sequential import PAD, SequenceModule, SequentialScorer, TrainParams, train_sequential
from llmrec.config import from_dict
from llmrec.data.dataset import PreparedDataset


@dataclass
class GRU4RecParams:
    """GRU4Rec architecture and training settings (YAML: the ``params`` of a ``gru4rec`` entry)."""

    embedding_size: int = 64  # item embedding width
    hidden_size: int = 128  # GRU state width
    num_layers: int = 1  # stacked GRU layers
    dropout: float = 0.3  # dropout on the embeddings and the GRU output
    train: TrainParams = field(default_factory=TrainParams)  # optimization and early stopping


class GRU4Rec(SequenceModule):
    """Recurrent next-item model over ``num_items`` catalog items."""

    def __init__(self, num_items: int, params: GRU4RecParams):
        super().__init__()
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, params.embedding_size, padding_idx=PAD)
        self.input_dropout = nn.Dropout(params.dropout)
        self.gru = nn.GRU(params.embedding_size, params.hidden_size, params.num_layers, batch_first=True)
        self.output_dropout = nn.Dropout(params.dropout)
        self.project = nn.Linear(params.hidden_size, params.embedding_size)
        nn.init.xavier_normal_(self.item_embedding.weight)  # N(0, 1) would start with huge logits

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, E)`` for right-padded item tokens ``(B, L)``."""
        x = self.input_dropout(self.item_embedding(tokens))  # (B, L, E)
        states, _ = self.gru(x)  # (B, L, hidden); right padding never reaches a real position
        return self.project(self.output_dropout(states))  # (B, L, E)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores ``(..., N)`` of every catalog item (item index order) from hidden ``(..., E)``."""
        return hidden @ self.item_embedding.weight[1:].T


def build_and_train(dataset: PreparedDataset, params: dict[str, Any], seed: int) -> SequentialScorer:
    """Registry entry: build GRU4Rec from ``params`` (see :class:`GRU4RecParams`) and train it."""
    config = from_dict(GRU4RecParams, params, "gru4rec.params")
    torch.manual_seed(seed)
    model = GRU4Rec(len(dataset.catalog), config)
    return train_sequential(model, dataset, config.train, seed, "gru4rec")
