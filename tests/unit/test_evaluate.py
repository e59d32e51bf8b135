"""The evaluator: tie-breaking, history exclusion, top-K rankers, sampled mode, writers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from llmrec.data.schema import EvalCase, UserSequence
from llmrec.evaluation.distributed import shard_bounds
from llmrec.evaluation.evaluate import evaluate, target_ranks, top_k_items, write_metrics, write_ranks


def case(user: str, history: list[int], target: int) -> EvalCase:
    n = len(history)
    return EvalCase(user, UserSequence(user, tuple(history), tuple(range(n)), ("rate",) * n, (None,) * n), target)


class FixedScorer:
    """Scores looked up by user id."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def score(self, histories):
        return torch.tensor([self.table[h.user_id] for h in histories], dtype=torch.float32)


class FixedRanker:
    """Returns a fixed list per user id."""

    def __init__(self, table: dict[str, list[int]]):
        self.table = table
        self.seen_exclude = None

    def rank(self, histories, k, exclude):
        self.seen_exclude = exclude
        ids = torch.tensor([self.table[h.user_id][:k] for h in histories])
        return ids, torch.zeros(ids.shape)


def reference_rank(scores: np.ndarray, target: int, excluded: set[int]) -> int:
    """Slow reference: sort by (-score, index) and find the target."""
    if target in excluded:
        return -1
    order = sorted((i for i in range(len(scores)) if i not in excluded), key=lambda i: (-scores[i], i))
    return order.index(target)


def test_ties_go_to_the_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    excluded = torch.zeros(1, 5, dtype=torch.bool)
    ranks = [target_ranks(scores, torch.tensor([t]), excluded).item() for t in range(5)]
    assert ranks == [3, 0, 1, 2, 4]
    assert top_k_items(scores, excluded, 5).tolist() == [[1, 2, 3, 0, 4]]


def test_vectorized_rank_matches_reference_and_top_k():
    generator = np.random.default_rng(0)
    scores = generator.integers(0, 6, size=(40, 30)).astype(np.float32)  # many ties
    targets = generator.integers(0, 30, size=40)
    excluded = generator.random((40, 30)) < 0.2
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(excluded))
    top = top_k_items(torch.from_numpy(scores), torch.from_numpy(excluded), 30).numpy()
    for row in range(40):
        expected = reference_rank(scores[row], int(targets[row]), set(np.flatnonzero(excluded[row]).tolist()))
        assert ranks[row].item() == expected
        if expected >= 0:
            assert top[row, expected] == targets[row]  # the rank is the position in the sorted list


def test_history_items_are_excluded_from_the_ranking():
    scores = {"u": [9.0, 8.0, 1.0, 0.5]}
    with_history = evaluate(FixedScorer(scores), [case("u", [0, 1], 2)], num_items=4, ks=(1,))
    assert with_history.ranks.tolist() == [0] and with_history.metrics["hr@1"] == 1.0
    assert with_history.top_items[0, :2].tolist() == [2, 3]
    without = evaluate(FixedScorer(scores), [case("u", [0, 1], 2)], num_items=4, ks=(1,), exclude_history=False)
    assert without.ranks.tolist() == [2]


def test_target_in_history_is_a_counted_miss():
    result = evaluate(FixedScorer({"u": [1.0, 2.0, 3.0]}), [case("u", [2], 2)], num_items=3, ks=(1, 2))
    assert result.ranks.tolist() == [-1]
    assert result.metrics["hr@2"] == 0.0
    assert result.warnings["target_in_history"] == 1


def test_metrics_from_scorer_by_hand():
    table = {"a": [0.1, 0.9, 0.5, 0.3], "b": [0.8, 0.1, 0.7, 0.6]}
    cases = [case("a", [], 2), case("b", [0], 1)]  # ranks: a -> 1, b -> 2 (0 excluded; 2, 3 ahead)
    result = evaluate(FixedScorer(table), cases, num_items=4, ks=(1, 2, 3), coverage_k=2, batch_size=1)
    assert result.ranks.tolist() == [1, 2]
    assert result.metrics["hr@1"] == 0.0 and result.metrics["hr@2"] == 0.5 and result.metrics["hr@3"] == 1.0
    assert result.metrics["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 2)
    assert result.metrics["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result.metrics["coverage@2"] == pytest.approx(3 / 4)  # {1, 2} and {2, 3}


def test_scorer_output_is_checked():
    with pytest.raises(ValueError, match="shape"):
        evaluate(FixedScorer({"u": [1.0, 2.0]}), [case("u", [], 0)], num_items=3)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(FixedScorer({"u": [1.0, float("nan"), 0.0]}), [case("u", [], 0)], num_items=3, ks=(1,), coverage_k=1)
    with pytest.raises(ValueError, match="outside the catalog"):
        evaluate(FixedScorer({"u": [1.0]}), [case("u", [], 5)], num_items=1)
    with pytest.raises(TypeError, match="neither"):
        evaluate(object(), [case("u", [], 0)], num_items=1)  # type: ignore[arg-type]


def test_ranker_rank_is_the_list_position_and_misses_are_misses():
    ranker = FixedRanker({"a": [3, 2, 1], "b": [4, 0, 2]})
    result = evaluate(ranker, [case("a", [0], 2), case("b", [], 1)], num_items=5, ks=(1, 3), coverage_k=3)
    assert result.ranks.tolist() == [1, -1]
    assert result.metrics["hr@3"] == 0.5 and result.metrics["hr@1"] == 0.0
    assert result.metrics["valid_item_rate"] == 1.0
    assert ranker.seen_exclude == [{0}, set()]
    assert result.model_kind == "ranker"


def test_ranker_malformed_output_is_counted_never_rewarded():
    # padding, an id outside the catalog, a duplicate and a history item; the target comes last
    ranker = FixedRanker({"u": [7, 1, 1, 0, -1, 2]})
    result = evaluate(ranker, [case("u", [0], 2)], num_items=5, ks=(1, 6), coverage_k=6)
    assert result.ranks.tolist() == [5]  # position in the list as returned: malformed slots still cost places
    assert result.warnings == {
        "padded_slots": 1, "invalid_ids": 1, "duplicate_ids": 1, "history_ids": 1, "target_in_history": 0, "short_lists": 1,
    }
    assert result.metrics["valid_item_rate"] == pytest.approx(2 / 6)
    assert sorted(result.top_items[0][result.top_items[0] >= 0].tolist()) == [1, 2]
    with pytest.raises(ValueError, match="invalid_ids"):
        evaluate(ranker, [case("u", [0], 2)], num_items=5, ks=(6,), coverage_k=6, on_invalid="error")


def test_ranker_returning_too_few_columns_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        evaluate(FixedRanker({"u": [1, 2]}), [case("u", [], 1)], num_items=5, ks=(5,), coverage_k=5)


def test_sampled_mode_is_seeded_and_prefixed():
    generator = np.random.default_rng(1)
    table = {str(u): generator.random(50).tolist() for u in range(20)}
    cases = [case(str(u), [u], (u * 7 + 3) % 50) for u in range(20)]
    first = evaluate(FixedScorer(table), cases, 50, ks=(1, 10), sampled_negatives=10, seed=3, batch_size=6)
    again = evaluate(FixedScorer(table), cases, 50, ks=(1, 10), sampled_negatives=10, seed=3, batch_size=20)
    other = evaluate(FixedScorer(table), cases, 50, ks=(1, 10), sampled_negatives=10, seed=4)
    assert first.sampled_ranks is not None and again.sampled_ranks is not None and other.sampled_ranks is not None
    assert np.array_equal(first.sampled_ranks, again.sampled_ranks)  # per-query seeds: batching does not matter
    assert not np.array_equal(first.sampled_ranks, other.sampled_ranks)
    assert first.sampled_ranks.max() <= 10 and (first.sampled_ranks <= first.ranks).all()
    assert "sampled_ndcg@10" in first.metrics and first.metrics["sampled_hr@10"] >= first.metrics["hr@10"]
    with pytest.raises(ValueError, match="CatalogScorer"):
        evaluate(FixedRanker({"0": [1] * 10}), cases[:1], 50, ks=(10,), sampled_negatives=5)


def test_writers_round_trip(tmp_path):
    result = evaluate(FixedScorer({"a": [0.1, 0.9, 0.5], "b": [0.8, 0.1, 0.7]}), [case("a", [], 2), case("b", [0], 1)],
                      num_items=3, ks=(1, 2), coverage_k=2)
    frame = pd.read_parquet(write_ranks(result, tmp_path / "ranks.parquet"))
    assert frame["rank"].tolist() == [1, 1] and frame["top_items"].map(list).tolist() == [[1, 2], [2, 1]]
    csv = pd.read_csv(write_ranks(result, tmp_path / "ranks.csv"))
    assert csv["top_items"].tolist() == ["1 2", "2 1"]
    payload = json.loads(write_metrics(result, tmp_path / "m.json", {"split": "test"}).read_text())
    assert payload["metrics"]["hr@2"] == 1.0 and payload["split"] == "test" and payload["num_queries"] == 2
    with pytest.raises(ValueError, match="parquet or .csv"):
        write_ranks(result, tmp_path / "ranks.txt")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("total,processes", [(0, 2), (7, 2), (7, 3), (2, 4), (100, 8)])
def test_shards_tile_the_queries(total, processes):
    bounds = [shard_bounds(total, processes, p) for p in range(processes)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
