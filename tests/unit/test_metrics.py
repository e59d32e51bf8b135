"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmrec.evaluation.metrics import (
    auc,
    coverage_at_k,
    f1_at_k,
    hr_at_k,
    mrr_at_k,
    multilabel_auc,
    ndcg_at_k,
    ndcg_standard_error,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

# Four queries: target ranked 1st, 3rd, 11th, and not returned by a top-K ranker (-1).
RANKS = [0, 2, 10, -1]


def test_hit_rate_by_hand():
    assert hr_at_k(RANKS, 1) == 0.25
    assert hr_at_k(RANKS, 5) == 0.5
    assert hr_at_k(RANKS, 10) == 0.5  # rank 10 is the 11th place: outside the top 10
    assert hr_at_k(RANKS, 20) == 0.75


def test_ndcg_by_hand():
    assert ndcg_at_k(RANKS, 1) == pytest.approx(0.25)
    assert ndcg_at_k(RANKS, 5) == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)  # (1 + 0.5) / 4
    assert ndcg_at_k(RANKS, 20) == pytest.approx((1.0 + 0.5 + 1.0 / math.log2(12)) / 4)


def test_ndcg_standard_error_by_hand():
    gains = np.array([1.0, 0.5, 0.0, 0.0])  # NDCG@5 gains of RANKS
    assert ndcg_standard_error(RANKS, 5) == pytest.approx(gains.std(ddof=1) / 2.0)
    assert ndcg_standard_error([3], 10) == 0.0
    assert ndcg_standard_error([0, 0, 0], 10) == 0.0  # every query equal: no spread


def test_mrr_by_hand():
    assert mrr_at_k(RANKS, 1) == pytest.approx(0.25)
    assert mrr_at_k(RANKS, 5) == pytest.approx((1 + 1 / 3) / 4)
    assert mrr_at_k(RANKS, 20) == pytest.approx((1 + 1 / 3 + 1 / 11) / 4)


def test_ranking_metrics_names_and_prefix():
    out = ranking_metrics([0, 1], ks=(1, 10), prefix="sampled_")
    assert set(out) == {f"sampled_{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (1, 10)}
    assert out["sampled_hr@1"] == 0.5 and out["sampled_hr@10"] == 1.0


@pytest.mark.parametrize("bad", [[], [[0, 1]]])
def test_ranks_must_be_nonempty_vector(bad):
    with pytest.raises(ValueError):
        hr_at_k(bad, 5)


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        ndcg_at_k([0], 0)


def test_coverage_counts_distinct_items_in_first_k_columns():
    lists = np.array([[0, 1, 2], [1, 0, 5], [3, -1, 9]])
    assert coverage_at_k(lists, 2, num_items=10) == pytest.approx(3 / 10)  # {0, 1, 3}; -1 is padding
    assert coverage_at_k(lists, 3, num_items=10) == pytest.approx(6 / 10)  # {0, 1, 2, 3, 5, 9}
    with pytest.raises(ValueError, match="fewer than K"):
        coverage_at_k(lists, 4, num_items=10)


def test_tag_precision_recall_f1_by_hand():
    predicted = [["a", "b", "c"], ["x", "y", "x"]]
    truth = [{"a", "c", "d", "e"}, {"z"}]
    # query 0: 2 hits of k=3 -> p=2/3, r=2/4, f1=4/7; query 1: no hit
    assert precision_at_k(predicted, truth, 3) == pytest.approx((2 / 3) / 2)
    assert recall_at_k(predicted, truth, 3) == pytest.approx(0.5 / 2)
    assert f1_at_k(predicted, truth, 3) == pytest.approx((4 / 7) / 2)
    # a short list still divides by k; a repeated tag counts once
    assert precision_at_k([["a", "a"]], [{"a"}], 4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="empty truth"):
        recall_at_k([["a"]], [set()], 1)


def test_binary_auc_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4) 1, (0.8>0.1) 1, (0.4=0.4) 0.5, (0.4>0.1) 1
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)
    assert auc([0, 1], [0.9, 0.1]) == 0.0
    with pytest.raises(ValueError, match="one class"):
        auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([2, 0], [0.2, 0.3])


def test_multilabel_auc_micro_and_macro():
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 1]])
    scores = np.array([[0.9, 0.2, 0.5], [0.3, 0.8, 0.5], [0.1, 0.4, 0.5]])
    # tag 0: positives 0.9, 0.1 vs negative 0.3 -> 1/2; tag 1: 0.8 vs 0.2, 0.4 -> 1; tag 2 has no negative
    assert multilabel_auc(labels, scores, "macro") == pytest.approx(0.75)
    assert multilabel_auc(labels, scores, "micro") == pytest.approx(auc(labels.ravel(), scores.ravel()))
    with pytest.raises(ValueError, match="micro or macro"):
        multilabel_auc(labels, scores, "weighted")
