"""Paired comparison of two ranks files against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from llmrec.evaluation.compare import compare_ranks, load_ranks
from llmrec.evaluation.evaluate import EvalResult, write_ranks


def frame(ranks: list[int], tops: list[list[int]], targets: list[int] | None = None) -> pd.DataFrame:
    users = [str(u) for u in range(len(ranks))]
    return pd.DataFrame({"user_id": users, "target": targets or list(range(len(ranks))), "rank": ranks, "top_items": tops})


def test_paired_difference_and_overlap_by_hand():
    a = frame([0, 2, -1], [[0, 5], [7, 8], [3, 4]])
    b = frame([0, 0, 1], [[0, 6], [1, 8], [9, 2]])
    hr, out, mrr = compare_ranks(a, b, ks=[2])
    gains_a = np.array([1.0, 0.0, 0.0])  # rank 2 is outside the top 2
    gains_b = np.array([1.0, 1.0, 1.0 / math.log2(3)])
    assert out.metric == "ndcg@2" and out.users == 3
    assert out.a == pytest.approx(gains_a.mean()) and out.b == pytest.approx(gains_b.mean())
    assert out.diff == pytest.approx((gains_b - gains_a).mean())
    assert out.diff_se == pytest.approx((gains_b - gains_a).std(ddof=1) / math.sqrt(3))
    assert out.overlap == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert out.same_rank == pytest.approx(1 / 3)
    assert (hr.metric, hr.a, hr.b) == ("hr@2", pytest.approx(1 / 3), 1.0)
    assert (mrr.metric, mrr.b) == ("mrr@2", pytest.approx(2.5 / 3))
    (same,) = compare_ranks(a, a, ks=[2], metrics=["hr"])
    assert same.diff == 0.0 and same.diff_se == 0.0 and same.overlap == 1.0 and same.same_rank == 1.0


def test_rows_are_matched_by_user_not_by_position():
    a = frame([0, 5], [[0], [1]])
    b = a.iloc[::-1].reset_index(drop=True)  # the same users, in the other order
    (row,) = compare_ranks(a, b, ks=[1], metrics=["hr"])
    assert row.diff == 0.0 and row.same_rank == 1.0


@pytest.mark.parametrize(("b", "message"), [
    (frame([0, 1, 2], [[0]] * 3), "different users"),
    (frame([0, 1], [[0]] * 2, targets=[0, 9]), "target 1 in the first file and 9"),
])
def test_refuses_pairs_of_different_cases(b: pd.DataFrame, message: str):
    with pytest.raises(ValueError, match=message):
        compare_ranks(frame([0, 1], [[0]] * 2), b)


def test_reads_what_the_evaluator_writes_and_names_bad_files(tmp_path):
    result = EvalResult(metrics={}, user_ids=["u1", "u2"], targets=np.array([3, 4]), ranks=np.array([0, -1]),
                        top_items=np.array([[3, 1], [2, -1]]))
    for suffix in (".parquet", ".csv"):
        path = write_ranks(result, tmp_path / f"r{suffix}")
        loaded = load_ranks(path)
        assert list(loaded["user_id"]) == ["u1", "u2"] and [list(t) for t in loaded["top_items"]] == [[3, 1], [2]]
    pd.DataFrame({"user_id": ["1"], "rank": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['target', 'top_items'\]"):
        load_ranks(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="parquet or .csv"):
        load_ranks(tmp_path / "r.json")


def test_script_prints_and_writes_json(tmp_path, capsys):
    from scripts.compare_ranks import main

    frame([0, 3], [[0, 1], [2, 5]]).to_parquet(tmp_path / "a.parquet")
    frame([1, 3], [[1, 0], [2, 5]]).to_parquet(tmp_path / "b.parquet")
    main([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), "--k", "2", "--out", str(tmp_path / "c.json")])
    assert "ndcg@2" in capsys.readouterr().out
    rows = json.loads((tmp_path / "c.json").read_text())["comparisons"]
    assert [r["metric"] for r in rows] == ["hr@2", "ndcg@2", "mrr@2"] and rows[0]["diff"] == 0.0
