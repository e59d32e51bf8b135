"""Our ranking metrics against an independent implementation (torchmetrics retrieval)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec.evaluation.evaluate import target_ranks
from llmrec.evaluation.metrics import hr_at_k, mrr_at_k, ndcg_at_k

torchmetrics = pytest.importorskip("torchmetrics.retrieval")


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_full_ranking_metrics_match_torchmetrics(k):
    generator = np.random.default_rng(k)
    queries, items = 300, 60
    scores = torch.from_numpy(generator.random((queries, items)))  # continuous: no ties
    targets = torch.from_numpy(generator.integers(0, items, queries))
    ranks = target_ranks(scores, targets, torch.zeros(queries, items, dtype=torch.bool)).numpy()

    relevance = torch.zeros(queries, items, dtype=torch.long)
    relevance[torch.arange(queries), targets] = 1
    indexes = torch.arange(queries).unsqueeze(1).expand(-1, items)
    flat = (scores.flatten(), relevance.flatten(), indexes.flatten())
    expected = {
        "hr": torchmetrics.RetrievalHitRate(top_k=k)(*flat[:2], indexes=flat[2]).item(),
        "ndcg": torchmetrics.RetrievalNormalizedDCG(top_k=k)(*flat[:2], indexes=flat[2]).item(),
        "mrr": torchmetrics.RetrievalMRR(top_k=k)(*flat[:2], indexes=flat[2]).item(),
    }
    assert hr_at_k(ranks, k) == pytest.approx(expected["hr"], abs=1e-6)
    assert ndcg_at_k(ranks, k) == pytest.approx(expected["ndcg"], abs=1e-6)
    assert mrr_at_k(ranks, k) == pytest.approx(expected["mrr"], abs=1e-6)
    assert 0 < hr_at_k(ranks, k) < 1 or k == 1  # the case is not degenerate
