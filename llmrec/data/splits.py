"""Chronological order, the two splits, and the leakage check every prepared dataset passes.

Order: users in id order (numeric ids numerically), each user's events by timestamp; ties keep
the order of the source file (a stable sort on ``(user, timestamp, source position)``).

Leave-one-out (the default protocol): a user's last event is ``test``, the one before it
``valid``, everything earlier ``train``. Users with fewer than 3 events cannot give both a
validation and a test target: by default (``short_users="train"``) all their events are
training history and they are never evaluated; ``short_users="drop"`` removes them. Either
way the count is reported in the manifest.

Temporal (global): two timestamp cut-offs chosen so that about ``test_fraction`` of all events
are on or after the test cut-off and about ``valid_fraction`` between the two. Events with the
same timestamp always fall in the same split, so no split ever sees a later moment than the
one after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrec.data.dataset import PreparedDataset

SPLIT_RANK = {"train": 0, "valid": 1, "test": 2}
SHORT_USERS = ("train", "drop")


class LeakageError(ValueError):
    """A prepared dataset lets a model see (part of) the answer; the message names user and row."""


@dataclass
class SplitResult:
    """The labelled, ordered frame plus what the split had to decide."""

    frame: pd.DataFrame  # sorted, with a ``split`` column
    short_users: int = 0  # leave-one-out: users with < 3 events (kept as train or dropped)
    dropped_rows: int = 0  # rows removed with dropped short users
    cutoffs: dict[str, int] | None = None  # temporal: first timestamp of valid and of test


def user_sort_key(user_ids: pd.Series) -> np.ndarray:
    """Rank of each user id: numeric ids in numeric order, otherwise text order."""
    unique = pd.unique(user_ids)
    if all(str(u).isdigit() for u in unique):
        ordered = sorted(unique, key=lambda u: (int(u), u))
    else:
        ordered = sorted(unique, key=str)
    rank = {user: position for position, user in enumerate(ordered)}
    return user_ids.map(rank).to_numpy(dtype="int64")


def sort_chronologically(frame: pd.DataFrame) -> pd.DataFrame:
    """Users in id order, each user's events by time; ties keep their order in ``frame``."""
    source_position = np.arange(len(frame))
    order = np.lexsort((source_position, frame["timestamp"].to_numpy(), user_sort_key(frame["user_id"])))
    return frame.iloc[order].reset_index(drop=True)


def leave_one_out(frame: pd.DataFrame, short_users: str = "train") -> SplitResult:
    """Label each user's last event ``test``, the one before ``valid``, the rest ``train``.

    Args:
        frame: canonical interactions, in any order.
        short_users: ``train`` keeps users with < 3 events as training only; ``drop`` removes them.
    """
    if short_users not in SHORT_USERS:
        raise ValueError(f"short_users must be one of {SHORT_USERS}, got {short_users!r}")
    ordered = sort_chronologically(frame)
    users = ordered["user_id"]
    from_end = users.groupby(users, sort=False).cumcount(ascending=False).to_numpy()  # 0 = last event
    length = users.map(users.value_counts()).to_numpy()
    short = length < 3
    split = np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train"))
    split = np.where(short, "train", split)
    n_short = int(users[short].nunique())
    if short_users == "drop":
        kept = ordered[~short].copy()
        kept["split"] = split[~short]
        return SplitResult(kept.reset_index(drop=True), n_short, int(short.sum()))
    ordered = ordered.copy()
    ordered["split"] = split
    return SplitResult(ordered, n_short, 0)


def temporal_split(frame: pd.DataFrame, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> SplitResult:
    """Global time split: the latest ~``test_fraction`` of events is test, the ~``valid_fraction`` before it valid."""
    if not (0 <= valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= valid_fraction, 0 < test_fraction, sum < 1; got {valid_fraction}, {test_fraction}")
    ordered = sort_chronologically(frame)
    times = np.sort(ordered["timestamp"].to_numpy(), kind="stable")
    n = len(times)
    test_cut = int(times[min(n - 1, int(np.floor(n * (1 - test_fraction))))])
    valid_cut = int(times[min(n - 1, int(np.floor(n * (1 - test_fraction - valid_fraction))))])
    stamps = ordered["timestamp"].to_numpy()
    split = np.where(stamps >= test_cut, "test", np.where(stamps >= valid_cut, "valid", "train"))
    ordered = ordered.copy()
    ordered["split"] = split
    return SplitResult(ordered, cutoffs={"valid_from": valid_cut, "test_from": test_cut})


def check_no_leakage(dataset: PreparedDataset | pd.DataFrame, split_kind: str | None = None) -> None:
    """Raise :class:`LeakageError` when any evaluation target could be seen as input.

    Checks, per user in stored order: events are contiguous and chronological; no ``train``
    event comes at or after a ``valid``/``test`` event (so a target is never training input
    at or after its own position), and no ``valid`` event after a ``test`` event. Under
    leave-one-out each user has at most one ``valid`` and one ``test`` row; under a temporal
    split every ``train`` timestamp precedes every ``valid`` one, which precedes every ``test`` one.

    Args:
        dataset: a prepared dataset, or its interaction frame (``user_id, item_id, timestamp, split``).
        split_kind: ``leave_one_out`` | ``temporal`` | None (read from the manifest when there is one).
    """
    if isinstance(dataset, PreparedDataset):
        frame = dataset.interactions
        split_kind = split_kind or dataset.manifest.get("split", {}).get("kind")
    else:
        frame = dataset
    unknown = set(pd.unique(frame["split"])) - set(SPLIT_RANK)
    if unknown:
        raise LeakageError(f"unknown split label(s) {sorted(unknown)}")
    users = frame["user_id"].to_numpy()
    same_user = np.r_[False, users[1:] == users[:-1]]
    runs = int((~same_user).sum())
    if runs != len(pd.unique(users)):
        raise LeakageError("rows of a user are not contiguous; the order per user cannot be checked")
    _check_order(frame, same_user, frame["timestamp"].to_numpy(), "timestamp goes back in time")
    ranks = frame["split"].map(SPLIT_RANK).to_numpy()
    _check_order(frame, same_user, ranks, "a later split comes before an earlier one (target seen as input)")
    if split_kind == "leave_one_out":
        for label in ("valid", "test"):
            counts = frame.loc[frame["split"] == label, "user_id"].value_counts()
            if (counts > 1).any():
                raise LeakageError(f"leave-one-out: user {counts.index[0]!r} has {int(counts.iloc[0])} {label} rows")
    if split_kind == "temporal":
        _check_global_time(frame)


def _check_order(frame: pd.DataFrame, same_user: np.ndarray, values: np.ndarray, what: str) -> None:
    back = np.flatnonzero(same_user[1:] & (values[1:] < values[:-1])) + 1
    if len(back):
        row = frame.iloc[int(back[0])]
        earlier = frame.iloc[int(back[0]) - 1]
        raise LeakageError(
            f"user {row['user_id']!r}: {what}: row {int(back[0])} (item {row['item_id']!r}, {row['split']}, "
            f"t={int(row['timestamp'])}) follows item {earlier['item_id']!r} ({earlier['split']}, t={int(earlier['timestamp'])})"
        )


def _check_global_time(frame: pd.DataFrame) -> None:
    bounds = frame.groupby("split")["timestamp"].agg(["min", "max"])
    present = [s for s in SPLIT_RANK if s in bounds.index]
    for earlier, later in zip(present, present[1:], strict=False):
        if bounds.loc[earlier, "max"] >= bounds.loc[later, "min"]:
            raise LeakageError(
                f"temporal split: {earlier} reaches t={int(bounds.loc[earlier, 'max'])}, "
                f"not before {later} starts at t={int(bounds.loc[later, 'min'])}"
            )
