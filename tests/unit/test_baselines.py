"""Baselines on a synthetic dataset with an obvious sequential rule (next item = last item + 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from llmrec.baselines import gru4rec, pop, sasrec
from llmrec.baselines.sequential import length_buckets, pad_batch, training_windows
from llmrec.config import ConfigError
from llmrec.data.dataset import PreparedDataset, save_prepared
from llmrec.data.schema import Catalog, Item, UserSequence
from llmrec.evaluation.evaluate import evaluate

NUM_ITEMS = 20
FAST = {"max_len": 8, "batch_size": 16, "learning_rate": 0.01, "max_epochs": 30, "eval_every": 5, "patience": 2}


@pytest.fixture(scope="module")
def cyclic_dataset(tmp_path_factory) -> PreparedDataset:
    """60 users walk the catalog in steps of +1 from a random start; 12 events each, LOO split."""
    generator = np.random.default_rng(0)
    rows = []
    for user in range(60):
        start = int(generator.integers(NUM_ITEMS))
        for t in range(12):
            split = "test" if t == 11 else "valid" if t == 10 else "train"
            item = (start + t) % NUM_ITEMS
            rows.append((f"u{user}", f"i{item}", 1000 * t, "rate", 4.0, split, item))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "action", "rating", "split", "item_index"])
    catalog = Catalog(Item(f"i{i}", f"Item {i}") for i in range(NUM_ITEMS))
    root = save_prepared(tmp_path_factory.mktemp("cyclic") / "data", frame, catalog, {"source": "synthetic"})
    return PreparedDataset.load(root)


def seq(items: list[int]) -> UserSequence:
    n = len(items)
    return UserSequence("u", tuple(items), tuple(range(n)), ("rate",) * n, (None,) * n)


def test_training_windows_cover_every_transition_once():
    windows = training_windows([seq([5, 6, 7, 8, 9, 10, 11]), seq([3]), seq([1, 2])], max_len=3)
    pairs = [(i, t) for inputs, targets in windows for i, t in zip(inputs, targets, strict=True)]
    # inputs are tokens (index + 1), targets are item indices
    assert sorted(pairs) == sorted([(6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (11, 11), (2, 2)])
    assert all(len(inputs) <= 3 for inputs, _ in windows)
    assert windows[0] == ([9, 10, 11], [9, 10, 11])  # the most recent window is full


def test_length_buckets_is_a_permutation_with_little_padding():
    lengths = list(np.random.default_rng(1).integers(1, 100, size=500))
    batches = length_buckets(lengths, 16, np.random.default_rng(2))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.2 * sum(lengths)
    assert pad_batch([[1, 2], [3]], 0).tolist() == [[1, 2], [3, 0]]


def test_pop_counts_training_events_only(cyclic_dataset):
    model = pop.build_and_train(cyclic_dataset, {}, seed=0)
    expected = np.zeros(NUM_ITEMS)
    for sequence in cyclic_dataset.sequences(("train",)):
        for item in sequence.items:
            expected[item] += 1
    assert model.counts.numpy().tolist() == expected.tolist()
    assert model.score([seq([1]), seq([])]).shape == (2, NUM_ITEMS)
    with pytest.raises(ValueError, match="no parameters"):
        pop.build_and_train(cyclic_dataset, {"x": 1}, seed=0)


@pytest.mark.parametrize(
    "module,params",
    [
        (sasrec, {"hidden_size": 16, "num_blocks": 1, "num_heads": 2, "dropout": 0.1, "train": FAST}),
        (gru4rec, {"embedding_size": 16, "hidden_size": 16, "dropout": 0.1, "train": FAST}),
    ],
)
def test_sequential_baselines_learn_the_rule_and_are_seeded(cyclic_dataset, module, params):
    torch.set_num_threads(1)
    model = module.build_and_train(cyclic_dataset, params, seed=0)
    cases = cyclic_dataset.eval_cases("test")
    result = evaluate(model, cases, NUM_ITEMS, ks=(1, 5))
    popularity = evaluate(pop.build_and_train(cyclic_dataset, {}, 0), cases, NUM_ITEMS, ks=(1, 5))
    assert result.metrics["hr@1"] >= 0.8 > popularity.metrics["hr@5"]
    assert model.best_valid["ndcg@10"] > 0.5
    again = module.build_and_train(cyclic_dataset, params, seed=0)
    histories = [c.history for c in cases[:5]]
    assert torch.allclose(model.score(histories), again.score(histories))  # same seed, same model


def test_histories_longer_than_max_len_and_empty_ones_are_scored(cyclic_dataset):
    params = {"hidden_size": 8, "num_blocks": 1, "train": {**FAST, "max_epochs": 1, "eval_every": 1}}
    model = sasrec.build_and_train(cyclic_dataset, params, seed=1)
    scores = model.score([seq(list(range(NUM_ITEMS)) * 2), seq([])])
    assert scores.shape == (2, NUM_ITEMS) and torch.isfinite(scores).all()


def test_params_are_typed_and_checked(cyclic_dataset):
    with pytest.raises(ConfigError, match="hidden_sise"):
        sasrec.build_and_train(cyclic_dataset, {"hidden_sise": 8}, seed=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        gru4rec.build_and_train(cyclic_dataset, {"train": {"learning_rate": "fast"}}, seed=0)
