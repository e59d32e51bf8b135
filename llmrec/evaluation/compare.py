"""Paired comparison of two models' per-user ranks on the same evaluation cases.

Two rows of a results table differ by noise as well as by merit. Ranked on the *same* users,
the right error bar for their difference is the standard error of the per-user difference: much
smaller than either row's own when the two models succeed on the same users (two variants of one
model), about the same when they recommend different items. This module reports that difference,
its standard error, and how alike the two top-K lists are (e.g. the search error of a beam search
against exact full-catalog scores of the same model, or two models' agreement).

Launch (thin entry point)::

    python scripts/compare_ranks.py reports/x/ranks/sasrec-seed0.parquet reports/x/ranks/smollm2-lora-seed0.parquet

The inputs are the ``ranks.parquet`` files written by ``llmrec evaluate`` and the ``ranks/``
folder of ``llmrec benchmark`` (columns ``user_id``, ``target``, ``rank``, ``top_items``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.evaluation.metrics import query_gains, standard_error

RANK_COLUMNS = ("user_id", "target", "rank", "top_items")


def load_ranks(path: str | Path) -> pd.DataFrame:
    """A per-user ranks file (``.parquet`` or ``.csv`` as :func:`write_ranks` writes them).

    Raises:
        ValueError: an unknown suffix or a missing column, naming the file.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, dtype={"user_id": str})
        if "top_items" in frame:
            frame["top_items"] = [[int(t) for t in str(v).split()] if isinstance(v, str) else [] for v in frame["top_items"]]
    else:
        raise ValueError(f"{path}: per-user ranks are read from .parquet or .csv")
    missing = [c for c in RANK_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a ranks file has {list(RANK_COLUMNS)}")
    frame["user_id"] = frame["user_id"].astype(str)
    if frame["user_id"].duplicated().any():
        raise ValueError(f"{path}: user {frame['user_id'][frame['user_id'].duplicated()].iloc[0]!r} appears twice")
    return frame


@dataclass(frozen=True)
class PairedComparison:
    """``b`` against ``a`` on the same users (``diff`` = b - a)."""

    metric: str  # e.g. ndcg@10
    users: int
    a: float
    a_se: float
    b: float
    b_se: float
    diff: float
    diff_se: float  # standard error of the per-user difference's mean
    overlap: float  # mean share of a's top-K that is also in b's top-K
    same_rank: float  # share of users whose target has the same rank in both (misses included)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_ranks(
    a: pd.DataFrame, b: pd.DataFrame, ks: Sequence[int] = (10,), metrics: Sequence[str] = ("hr", "ndcg", "mrr")
) -> list[PairedComparison]:
    """Compare two ranks frames of the same evaluation cases, user by user: one row per (K, metric).

    Raises:
        ValueError: the frames hold different users, or a user's target differs (different
            splits or datasets): a paired comparison would be meaningless.
    """
    left, right = a.set_index("user_id"), b.set_index("user_id")
    users_a, users_b = set(left.index), set(right.index)
    if users_a != users_b:
        raise ValueError(f"the two ranks files hold different users ({len(users_a - users_b)} only in the first, "
                         f"{len(users_b - users_a)} only in the second)")
    right = right.loc[left.index]
    differs = left["target"].to_numpy() != right["target"].to_numpy()
    if differs.any():
        user = left.index[int(np.argmax(differs))]
        raise ValueError(f"user {user!r} has target {left['target'][user]} in the first file and "
                         f"{right['target'][user]} in the second: not the same evaluation cases")
    ranks_a, ranks_b = left["rank"].to_numpy(), right["rank"].to_numpy()
    same_rank = float(np.mean(ranks_a == ranks_b))
    tops = [(list(x), list(y)) for x, y in zip(left["top_items"], right["top_items"], strict=True)]
    rows = []
    for k in ks:
        overlap = float(np.mean([len(set(x[:k]) & set(y[:k])) / k for x, y in tops]))
        for metric in metrics:
            gains_a, gains_b = query_gains(ranks_a, k, metric), query_gains(ranks_b, k, metric)
            rows.append(PairedComparison(
                metric=f"{metric}@{k}", users=len(left),
                a=float(gains_a.mean()), a_se=standard_error(gains_a),
                b=float(gains_b.mean()), b_se=standard_error(gains_b),
                diff=float((gains_b - gains_a).mean()), diff_se=standard_error(gains_b - gains_a),
                overlap=overlap, same_rank=same_rank,
            ))
    return rows
