"""Chronological order with ties, leave-one-out, temporal split, and the leakage check."""

from __future__ import annotations

import pandas as pd
import pytest

from llmrec.data.splits import (
    LeakageError,
    check_no_leakage,
    leave_one_out,
    sort_chronologically,
    temporal_split,
)


def _frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "action": "rate",
            "rating": 4.0,
        }
    )


# User "2" has ties at t=5 (b before c in the file) and at t=9 (e before d); user "10" sorts after "2".
ROWS = [
    ("10", "x", 3), ("2", "b", 5), ("2", "a", 1), ("2", "c", 5), ("10", "y", 1),
    ("2", "e", 9), ("10", "z", 2), ("2", "d", 9), ("7", "solo", 4), ("7", "pair", 6),
]  # fmt: skip


def test_sort_is_stable_for_ties_and_numeric_user_order() -> None:
    ordered = sort_chronologically(_frame(ROWS))
    assert ordered["user_id"].tolist() == ["2"] * 5 + ["7"] * 2 + ["10"] * 3
    assert ordered["item_id"].tolist() == ["a", "b", "c", "e", "d", "solo", "pair", "y", "z", "x"]


def test_leave_one_out_by_hand() -> None:
    result = leave_one_out(_frame(ROWS))
    labels = dict(zip(result.frame["item_id"], result.frame["split"], strict=True))
    # user 2: a b c | e (valid) | d (test): the tie at t=9 keeps file order, so d is last.
    assert [labels[i] for i in "abced"] == ["train", "train", "train", "valid", "test"]
    assert [labels[i] for i in "yzx"] == ["train", "valid", "test"]
    assert labels["solo"] == labels["pair"] == "train"  # only 2 events: training history only
    assert result.short_users == 1 and result.dropped_rows == 0
    check_no_leakage(result.frame, "leave_one_out")


def test_leave_one_out_can_drop_short_users() -> None:
    result = leave_one_out(_frame(ROWS), short_users="drop")
    assert "7" not in set(result.frame["user_id"]) and result.dropped_rows == 2 and result.short_users == 1
    counts = result.frame.groupby("user_id")["split"].value_counts().unstack(fill_value=0)
    assert (counts["test"] == 1).all() and (counts["valid"] == 1).all()


def test_temporal_split_keeps_equal_timestamps_together() -> None:
    rows = [("u", f"i{t}", t) for t in range(10)] + [("v", "tie", 8)]
    result = temporal_split(_frame(rows), valid_fraction=0.2, test_fraction=0.2)
    frame = result.frame
    assert result.cutoffs is not None
    assert set(frame.loc[frame["timestamp"] == 8, "split"]) == {"test"}
    assert frame.loc[frame["split"] == "train", "timestamp"].max() < frame.loc[frame["split"] == "valid", "timestamp"].min()
    check_no_leakage(frame, "temporal")


def test_leakage_check_catches_a_target_seen_as_training_input() -> None:
    frame = leave_one_out(_frame(ROWS)).frame
    # Plant a leak: user 10's test item appears again as a training event after the test event.
    test_row = frame[(frame["user_id"] == "10") & (frame["split"] == "test")].iloc[0]
    leak = test_row.copy()
    leak["split"] = "train"
    leak["timestamp"] = int(test_row["timestamp"]) + 1
    leaked = pd.concat([frame, leak.to_frame().T], ignore_index=True)
    leaked["timestamp"] = leaked["timestamp"].astype("int64")
    with pytest.raises(LeakageError, match=r"user '10': a later split comes before an earlier one.*item 'x', train"):
        check_no_leakage(leaked, "leave_one_out")


def test_leakage_check_catches_swapped_labels_and_disorder() -> None:
    frame = leave_one_out(_frame(ROWS)).frame
    swapped = frame.copy()
    user2 = swapped.index[swapped["user_id"] == "2"]
    swapped.loc[user2[-1], "split"], swapped.loc[user2[-2], "split"] = "valid", "test"  # test before valid
    with pytest.raises(LeakageError, match="later split comes before"):
        check_no_leakage(swapped)
    reversed_time = frame.copy()
    reversed_time.loc[user2[0], "timestamp"] = 100
    with pytest.raises(LeakageError, match="goes back in time"):
        check_no_leakage(reversed_time)
    scattered = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    with pytest.raises(LeakageError, match="not contiguous"):
        check_no_leakage(scattered)


def test_leakage_check_loo_counts_and_temporal_bounds() -> None:
    frame = leave_one_out(_frame(ROWS)).frame
    two_tests = frame.copy()
    user10 = two_tests.index[two_tests["user_id"] == "10"]
    two_tests.loc[user10[1], "split"] = "test"
    two_tests.loc[user10[0], "split"] = "train"
    with pytest.raises(LeakageError, match="user '10' has 2 test rows"):
        check_no_leakage(two_tests, "leave_one_out")
    # Per user everything is in order, but globally user 10's test event precedes user 2's training.
    with pytest.raises(LeakageError, match="temporal split: train reaches"):
        check_no_leakage(frame, "temporal")
