"""Shuffled batches of similar length, so padded batches carry little padding.

A padded batch costs as much as ``batch_size x longest example``. :class:`LengthGroupedSampler`
shuffles the examples, cuts the shuffled order into groups of ``batch_size x group_batches``,
sorts each group by length and shuffles the order of the resulting batches: batches are still
random draws of the data, but each holds examples of neighbouring lengths. The order depends
only on ``(seed, epoch)``, so an interrupted epoch resumes with exactly the same batches.

Used by the training loop for padded (non-packed) batches when ``train.group_by_length`` is on;
the DataLoader then batches consecutive indices (``shuffle=False``), and Accelerate calls
``set_epoch`` on it every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Indices in a seeded order whose consecutive ``batch_size`` runs have similar lengths.

    Args:
        lengths: token count of every example.
        batch_size: the DataLoader's batch size (batches are consecutive runs of this order).
        seed: base seed; epoch ``e`` uses ``seed + e``.
        group_batches: batches per length-sorted group (larger = less padding, less randomness).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_batches: int = 16):
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"batch_size and group_batches must be >= 1, got {batch_size}, {group_batches}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)  # (N,)
        self.batch_size, self.seed, self.group_batches, self.epoch = batch_size, seed, group_batches, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (called by the training loop / Accelerate)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)  # (N,)
        group = self.batch_size * self.group_batches
        batches: list[torch.Tensor] = []
        for start in range(0, len(order), group):
            members = order[start:start + group]
            by_length = members[torch.argsort(self.lengths[members], descending=True, stable=True)]
            batches.extend(by_length.split(self.batch_size))
        last = batches.pop() if batches and len(batches[-1]) < self.batch_size else None  # short batch stays last
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        if last is not None:
            shuffled.append(last)
        return iter(torch.cat(shuffled).tolist() if shuffled else [])
