"""Shared machinery of the neural sequential baselines (GRU4Rec, SASRec).

Both read a user's item indices left to right and predict the next item at every position
with a full softmax over the catalog. This module holds what they share: the training windows,
batching, the training loop with validation-based early stopping (NDCG@10 through the same
evaluator as everything else), and the ``CatalogScorer`` wrapper used at inference.

Item index ``i`` is token ``i + 1``; token 0 is padding. Sequences are right-padded, so with a
causal model the padding never influences a real position.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from llmrec.data.dataset import PreparedDataset
from llmrec.data.schema import UserSequence
from llmrec.evaluation.evaluate import evaluate

log = logging.getLogger(__name__)

PAD = 0  # padding token; item index i is token i + 1
IGNORE = -100  # target of padded positions (skipped by the loss)


@dataclass
class TrainParams:
    """Optimization settings shared by the sequential baselines."""

    max_len: int = 200  # most recent items the model reads (and window length in training)
    batch_size: int = 128  # training windows per step
    learning_rate: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam(W) weight decay
    max_epochs: int = 200  # upper bound on passes over the training windows
    eval_every: int = 5  # epochs between validation rankings
    patience: int = 4  # validations without NDCG@10 gain before stopping
    eval_batch_size: int = 256  # users per scoring call
    num_threads: int = 0  # torch CPU threads (0 = leave torch's setting alone)
    bucket_by_length: bool = False  # batch windows of similar length (faster; changes batch composition)


class SequenceModule(nn.Module):
    """Base of the next-item models: tokens ``(B, L)`` -> hidden ``(B, L, H)`` -> item logits ``(..., N)``."""

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (item index order) from hidden states ``(..., H)``."""
        raise NotImplementedError


def training_windows(sequences: Sequence[UserSequence], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Cut each sequence into (input, next-item target) windows of at most ``max_len`` positions.

    Windows are taken from the end backwards so the most recent events always form a full
    window; every transition ``items[t] -> items[t+1]`` is a target exactly once.
    """
    windows = []
    for sequence in sequences:
        tokens = [item + 1 for item in sequence.items]
        end = len(tokens) - 1  # number of transitions
        while end > 0:
            start = max(0, end - max_len)
            windows.append((tokens[start:end], [t - 1 for t in tokens[start + 1 : end + 1]]))
            end = start
    return windows


def length_buckets(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length windows (less padding than uniform shuffling).

    Windows are shuffled, cut into pools of 50 batches, each pool sorted by length and cut into
    batches, and the batches shuffled again: random order, little padding.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(rows: Sequence[Sequence[int]], fill: int) -> torch.Tensor:
    """Right-pad integer rows to the longest one: ``(B, L)``."""
    width = max(1, max(len(row) for row in rows))
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


class SequentialScorer:
    """``CatalogScorer`` around a trained sequence model: scores = logits after the last history item."""

    def __init__(self, model: SequenceModule, max_len: int, batch_size: int = 256):
        self.model = model
        self.max_len = max_len
        self.batch_size = batch_size
        self.best_valid: dict[str, float] = {}  # validation NDCG@10 and epoch of the kept weights

    def score(self, histories: Sequence[UserSequence]) -> torch.Tensor:
        self.model.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(histories), self.batch_size):
                chunk = histories[start : start + self.batch_size]
                rows = [[item + 1 for item in h.items[-self.max_len :]] for h in chunk]
                tokens = pad_batch(rows, PAD)  # (B, L)
                last = torch.tensor([max(len(r), 1) - 1 for r in rows])  # (B,) empty history reads the pad
                hidden = self.model(tokens)  # (B, L, H)
                final = hidden[torch.arange(len(rows)), last]  # (B, H)
                outputs.append(self.model.item_logits(final))  # (B, N)
        return torch.cat(outputs)


def train_sequential(
    model: SequenceModule, dataset: PreparedDataset, train: TrainParams, seed: int, name: str
) -> SequentialScorer:
    """Train ``model`` on the train split; keep the weights with the best validation NDCG@10.

    Args:
        model: Module with ``forward(tokens) -> hidden`` and ``item_logits(hidden) -> logits``.
        dataset: Prepared dataset (train split for training, valid cases for early stopping).
        train: Optimization settings.
        seed: Seeds the window order (the caller seeds the initialization).
        name: Model name used in log lines.

    Returns:
        A scorer over the best weights found.
    """
    if train.num_threads > 0:
        torch.set_num_threads(train.num_threads)
    windows = training_windows(dataset.sequences(("train",)), train.max_len)
    if not windows:
        raise ValueError(f"{dataset.root}: no training sequence has two or more events")
    valid_cases = dataset.eval_cases("valid")
    num_items = len(dataset.catalog)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    rng = np.random.default_rng(seed)
    scorer = SequentialScorer(model, train.max_len, train.eval_batch_size)
    best: dict[str, Any] = {"ndcg": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    stale = 0
    for epoch in range(1, train.max_epochs + 1):
        started = time.perf_counter()
        loss = _train_epoch(model, optimizer, windows, train.batch_size, rng, train.bucket_by_length)
        if epoch % train.eval_every and epoch != train.max_epochs:
            continue
        ndcg = evaluate(scorer, valid_cases, num_items, ks=(10,), batch_size=train.eval_batch_size).metrics["ndcg@10"]
        log.info("%s epoch %d loss %.4f valid ndcg@10 %.4f (%.1fs)", name, epoch, loss, ndcg, time.perf_counter() - started)
        if ndcg > best["ndcg"]:
            best = {"ndcg": ndcg, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            stale = 0
        else:
            stale += 1
            if stale >= train.patience:
                break
    model.load_state_dict(best["state"])
    model.eval()
    log.info("%s: best valid ndcg@10 %.4f at epoch %d", name, best["ndcg"], best["epoch"])
    scorer.best_valid = {"ndcg@10": float(best["ndcg"]), "epoch": float(best["epoch"])}
    return scorer


def _train_epoch(
    model: SequenceModule,
    optimizer: torch.optim.Optimizer,
    windows: list[tuple[list[int], list[int]]],
    batch_size: int,
    rng: np.random.Generator,
    bucket_by_length: bool,
) -> float:
    model.train()
    total, count = 0.0, 0
    if bucket_by_length:
        batches = length_buckets([len(w[0]) for w in windows], batch_size, rng)
    else:
        order = rng.permutation(len(windows))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in batches:
        picked = [windows[i] for i in batch]
        tokens = pad_batch([w[0] for w in picked], PAD)  # (B, L)
        targets = pad_batch([w[1] for w in picked], IGNORE)  # (B, L)
        hidden = model(tokens)  # (B, L, H)
        keep = targets != IGNORE
        logits = model.item_logits(hidden[keep])  # (T, N): only real positions
        loss = nn.functional.cross_entropy(logits, targets[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * int(keep.sum())
        count += int(keep.sum())
    return total / max(count, 1)
