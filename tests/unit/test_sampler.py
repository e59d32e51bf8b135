"""Length-grouped sampling: a seeded permutation per epoch whose batches carry less padding."""

from __future__ import annotations

import random

import pytest

from llmrec.training.sampler import LengthGroupedSampler


def padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    return sum(max(lengths[i] for i in order[s:s + batch_size]) * len(order[s:s + batch_size])
               for s in range(0, len(order), batch_size))


def test_each_epoch_is_a_seeded_permutation_with_less_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(203)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=5, group_batches=4)
    first = list(sampler)
    assert sorted(first) == list(range(203)) and len(sampler) == 203
    assert list(sampler) == first, "same epoch, same order (exact resume)"
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(203)) and second != first
    shuffled = list(range(203))
    rng.shuffle(shuffled)
    assert padded_tokens(first, lengths, 8) < 0.8 * padded_tokens(shuffled, lengths, 8)
    assert list(LengthGroupedSampler(lengths, 8, seed=5, group_batches=4)) == first


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedSampler([1, 2], batch_size=0, seed=0)
