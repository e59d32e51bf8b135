"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

As in the paper: item embeddings scaled by sqrt(hidden) plus learned position embeddings,
dropout, ``num_blocks`` blocks of [layer norm -> causal multi-head attention (residual from the
normed query) -> layer norm -> point-wise feed-forward (residual)], a final layer norm, and item
scores as dot products with the (shared) item embeddings. Training differs from the paper in the
loss: full-softmax cross-entropy over the whole catalog at every position (stronger than the
paper's one sampled negative, and what RecBole's reference numbers use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmrec.baselines.sequential import PAD, SequenceModule, SequentialScorer, TrainParams, train_sequential
from llmrec.config import from_dict
from llmrec.data.dataset import PreparedDataset


@dataclass
class SASRecParams:
    """SASRec architecture and training settings (YAML: the ``params`` of a ``sasrec`` entry)."""

    hidden_size: int = 64  # embedding and attention width
    num_blocks: int = 2  # self-attention blocks
    num_heads: int = 1  # attention heads per block
    dropout: float = 0.2  # dropout on embeddings, attention weights and feed-forward
    train: TrainParams = field(default_factory=TrainParams)  # optimization and early stopping


class SASRecBlock(nn.Module):
    """One self-attention block with the paper's layer-norm placement."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        query = self.attention_norm(x)  # (B, L, H): the paper normalizes the query only
        attended, _ = self.attention(query, x, x, attn_mask=causal, need_weights=False)  # (B, L, H)
        x = query + attended
        x = x + self.ffn(self.ffn_norm(x))
        return x * keep  # padded positions stay zero


class SASRec(SequenceModule):
    """Causal self-attention next-item model over ``num_items`` catalog items."""

    def __init__(self, num_items: int, max_len: int, params: SASRecParams):
        super().__init__()
        hidden = params.hidden_size
        self.num_items = num_items
        self.scale = math.sqrt(hidden)
        self.item_embedding = nn.Embedding(num_items + 1, hidden, padding_idx=PAD)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(hidden, params.num_heads, params.dropout) for _ in range(params.num_blocks))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.apply(_init_weights)


    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, H)`` for right-padded item tokens ``(B, L)``."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device).unsqueeze(0)  # (1, L)
        keep = (tokens != PAD).unsqueeze(-1).float()  # (B, L, 1)
        x = self.item_embedding(tokens) * self.scale + self.position_embedding(positions)
        x = self.dropout(x) * keep
        # True = may not attend: a position sees itself and the past. With right padding a real
        # position never sees a padded one, so no key-padding mask is needed.
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
        for block in self.blocks:
            x = block(x, causal, keep)
        return self.final_norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores ``(..., N)`` of every catalog item (item index order) from hidden ``(..., H)``."""
        return hidden @ self.item_embedding.weight[1:].T


def _init_weights(module: nn.Module) -> None:
    # Small N(0, 0.02) weights keep the first logits near zero (default N(0, 1) embeddings times
    # sqrt(H) would start the loss far above log N); attention input projections keep PyTorch's
    # Xavier initialization.
    if isinstance(module, nn.Embedding | nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def build_and_train(dataset: PreparedDataset, params: dict[str, Any], seed: int) -> SequentialScorer:
    """Registry entry: build SASRec from ``params`` (see :class:`SASRecParams`) and train it."""
    config = from_dict(SASRecParams, params, "sasrec.params")
    torch.manual_seed(seed)
    model = SASRec(len(dataset.catalog), config.train.max_len, config)
    return train_sequential(model, dataset, config.train, seed, "sasrec")
