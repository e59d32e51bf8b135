"""Atomic outputs: a failure leaves nothing half-written."""

from __future__ import annotations

import pytest

from llmrec.io import atomic_dir, atomic_file, stable_hash


def test_atomic_dir_failure_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_with_overwrite(tmp_path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(FileExistsError), atomic_dir(target):
        pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_keeps_old_content_on_failure(tmp_path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_file(target) as handle:
        handle.write("new")
        raise ValueError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stable_hash_ignores_key_order() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
