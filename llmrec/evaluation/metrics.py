"""Ranking and tagging metrics as pure functions on NumPy arrays.

Ranking metrics take the 0-based rank of each query's single target item (0 = ranked first).
A negative rank means "not in the model's list" (a top-K ranker that did not return the
target) and counts as a miss at every cut-off. With one target per query:

* ``HR@K``   = 1 if rank < K                     (equals Recall@K)
* ``NDCG@K`` = 1 / log2(rank + 2) if rank < K    (the ideal DCG is 1)
* ``MRR@K``  = 1 / (rank + 1) if rank < K

Each function returns the mean over queries. Tag metrics (precision/recall/F1@K, AUC) serve
the multi-label interest-tag task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def _ranks(ranks: Any) -> IntArray:
    array = np.asarray(ranks, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("ranks is empty: no queries to average over")
    return array


def _check_k(k: int) -> None:
    if k <= 0:
        raise ValueError(f"cut-off K must be positive, got {k}")


def hit_mask(ranks: Any, k: int) -> npt.NDArray[np.bool_]:
    """Per query: True where the target is ranked inside the top ``k``."""
    _check_k(k)
    array = _ranks(ranks)
    return (array >= 0) & (array < k)


def query_gains(ranks: Any, k: int, metric: str) -> npt.NDArray[np.float64]:
    """Per query, the gain that ``metric`` (``hr``, ``ndcg`` or ``mrr``) at ``k`` averages."""
    array = _ranks(ranks)
    hits = hit_mask(array, k)
    gains = np.zeros(array.shape, dtype=np.float64)
    if metric == "hr":
        gains[hits] = 1.0
    elif metric == "ndcg":
        gains[hits] = 1.0 / np.log2(array[hits] + 2.0)
    elif metric == "mrr":
        gains[hits] = 1.0 / (array[hits] + 1.0)
    else:
        raise ValueError(f"metric must be hr, ndcg or mrr, got {metric!r}")
    return gains


def hr_at_k(ranks: Any, k: int) -> float:
    """Hit rate at ``k``: share of queries whose target is in the top ``k``."""
    return float(query_gains(ranks, k, "hr").mean())


def ndcg_at_k(ranks: Any, k: int) -> float:
    """NDCG at ``k`` with one relevant item per query: ``1 / log2(rank + 2)`` inside the top ``k``."""
    return float(query_gains(ranks, k, "ndcg").mean())


def ndcg_standard_error(ranks: Any, k: int) -> float:
    """Standard error of :func:`ndcg_at_k` over the queries: sample std of the per-query gains
    divided by ``sqrt(n)`` (0 for a single query). On 100 users an NDCG@10 near 0.04 carries a
    standard error near 0.015, so two runs scored on 100 users must differ by several hundredths
    before the difference means anything."""
    return standard_error(query_gains(ranks, k, "ndcg"))


def standard_error(values: Any) -> float:
    """Standard error of the mean of ``values`` (sample std / sqrt(n); 0 for fewer than two)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else 0.0


def mrr_at_k(ranks: Any, k: int) -> float:
    """Mean reciprocal rank at ``k``: ``1 / (rank + 1)`` inside the top ``k``, else 0."""
    return float(query_gains(ranks, k, "mrr").mean())


def coverage_at_k(top_lists: Any, k: int, num_items: int) -> float:
    """Catalog coverage: distinct items in all top-``k`` lists divided by ``num_items``.

    Args:
        top_lists: ``(queries, >= k)`` item indices, best first; negative entries are padding.
        k: Cut-off; only the first ``k`` columns count.
        num_items: Catalog size.
    """
    _check_k(k)
    if num_items <= 0:
        raise ValueError(f"num_items must be positive, got {num_items}")
    array = np.asarray(top_lists, dtype=np.int64)
    if array.ndim != 2:
        raise ValueError(f"top_lists must be two-dimensional, got shape {array.shape}")
    if array.shape[1] < k:
        raise ValueError(f"top_lists has {array.shape[1]} columns, fewer than K={k}")
    head = array[:, :k]
    distinct = np.unique(head[(head >= 0) & (head < num_items)])
    return float(distinct.size / num_items)


def ranking_metrics(ranks: Any, ks: Sequence[int], prefix: str = "") -> dict[str, float]:
    """``{prefix}hr@K``, ``{prefix}ndcg@K`` and ``{prefix}mrr@K`` for every K in ``ks``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}hr@{k}"] = hr_at_k(ranks, k)
        out[f"{prefix}ndcg@{k}"] = ndcg_at_k(ranks, k)
        out[f"{prefix}mrr@{k}"] = mrr_at_k(ranks, k)
    return out


# ---------------------------------------------------------------------------- multi-label tags


def _tag_overlaps(
    predicted: Sequence[Sequence[Any]], truth: Sequence[Iterable[Any]], k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    _check_k(k)
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted lists but {len(truth)} truth sets")
    if not predicted:
        raise ValueError("no queries to average over")
    hits, sizes = [], []
    for i, (ranked, relevant) in enumerate(zip(predicted, truth, strict=True)):
        relevant_set = set(relevant)
        if not relevant_set:
            raise ValueError(f"query {i} has an empty truth set; recall is undefined")
        top = list(dict.fromkeys(ranked[:k]))  # a repeated tag counts once
        hits.append(sum(tag in relevant_set for tag in top))
        sizes.append(len(relevant_set))
    return np.asarray(hits, dtype=np.float64), np.asarray(sizes, dtype=np.float64)


def precision_at_k(predicted: Sequence[Sequence[Any]], truth: Sequence[Iterable[Any]], k: int) -> float:
    """Mean over queries of ``|top-k ∩ truth| / k`` (a short list still divides by ``k``)."""
    hits, _ = _tag_overlaps(predicted, truth, k)
    return float((hits / k).mean())


def recall_at_k(predicted: Sequence[Sequence[Any]], truth: Sequence[Iterable[Any]], k: int) -> float:
    """Mean over queries of ``|top-k ∩ truth| / |truth|``."""
    hits, sizes = _tag_overlaps(predicted, truth, k)
    return float((hits / sizes).mean())


def f1_at_k(predicted: Sequence[Sequence[Any]], truth: Sequence[Iterable[Any]], k: int) -> float:
    """Mean over queries of the harmonic mean of that query's precision@k and recall@k."""
    hits, sizes = _tag_overlaps(predicted, truth, k)
    precision = hits / k
    recall = hits / sizes
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(f1.mean())


def auc(labels: Any, scores: Any) -> float:
    """Binary ROC AUC (Mann-Whitney U; tied scores count one half).

    Raises:
        ValueError: when the labels are not all 0/1, or one class is absent.
    """
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC is undefined when only one class is present")
    # Average ranks of tied scores give the tie-aware Mann-Whitney statistic.
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # 1-based average rank
    positive_rank_sum = ranks[y == 1].sum()
    return float((positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def multilabel_auc(labels: Any, scores: Any, average: str = "macro") -> float:
    """ROC AUC for ``(queries, tags)`` 0/1 labels and scores.

    Args:
        labels: ``(queries, tags)`` 0/1 matrix.
        scores: ``(queries, tags)`` scores, higher = more likely.
        average: ``micro`` pools every (query, tag) pair; ``macro`` averages per-tag AUCs over
            the tags that have both a positive and a negative query (the others are undefined).
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be the same 2-D shape")
    if average == "micro":
        return auc(y.ravel(), s.ravel())
    if average != "macro":
        raise ValueError(f"average must be micro or macro, got {average!r}")
    per_tag = [auc(y[:, j], s[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < y.shape[0]]
    if not per_tag:
        raise ValueError("macro AUC is undefined: no tag has both positive and negative queries")
    return float(np.mean(per_tag))
