"""``prepare_dataset`` and ``llmrec data``: filters, counts, manifest, atomic output, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmrec.config import DataConfig, load_config
from llmrec.data.dataset import PreparedDataset
from llmrec.data.prepare import dedupe, k_core, prepare_dataset
from llmrec.data.splits import check_no_leakage
from llmrec.data.validate import DataError
from llmrec.io import sha256_file

REPO = Path(__file__).resolve().parents[2]
FLAGS = "|".join(["0"] * 19)


def write_raw(root: Path, ratings: list[tuple[int, int, int, int]], n_items: int = 6) -> Path:
    """A GroupLens-style directory: ``ratings`` are (user, item, rating, time) in file order."""
    root.mkdir(parents=True, exist_ok=True)
    items = [f"{i}|Movie {i} ({1990 + i})|01-Jan-{1990 + i}||http://x|{FLAGS}" for i in range(1, n_items + 1)]
    (root / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings), encoding="latin-1")
    return root


# Users 1 and 2 have 4 events, user 3 has 2 (too short for leave-one-out), item 6 is never rated.
RATINGS = [
    (1, 1, 5, 10), (2, 2, 4, 11), (1, 2, 3, 12), (1, 3, 4, 12), (2, 3, 2, 13),
    (1, 4, 1, 20), (2, 1, 5, 14), (2, 5, 4, 15), (3, 1, 5, 1), (3, 2, 4, 2),
]  # fmt: skip


def _cfg(raw: Path, **fields: object) -> DataConfig:
    return DataConfig(dataset="ml-100k", path=str(raw), **fields)  # type: ignore[arg-type]


def test_prepare_writes_a_checked_dataset_with_manifest(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", RATINGS)
    dataset = prepare_dataset(_cfg(raw), tmp_path / "out")
    assert len(dataset.catalog) == 6  # the full catalog, including the never-rated item 6
    counts = dataset.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (3, 6, 10)
    assert (counts["valid_rows"], counts["test_rows"]) == (2, 2)
    frame = dataset.interactions
    user1 = frame[frame["user_id"] == "1"]
    assert user1["item_id"].tolist() == ["1", "2", "3", "4"] and user1["split"].tolist() == ["train", "train", "valid", "test"]
    assert (frame["item_index"] == frame["item_id"].astype(int) - 1).all()
    assert frame[frame["user_id"] == "3"]["split"].tolist() == ["train", "train"]
    manifest = dataset.manifest
    assert manifest["split"] == {"kind": "leave_one_out", "short_users": 1, "short_user_policy": "train"}
    assert manifest["source"]["files"]["interactions"]["sha256"] == sha256_file(raw / "u.data")
    assert manifest["config"]["path"] == str(raw) and len(manifest["config_hash"]) == 16
    assert manifest["skipped_rows"]["total"] == 0 and manifest["llmrec_version"]
    check_no_leakage(PreparedDataset.load(tmp_path / "out", verify=True))
    cases = dataset.eval_cases("test")
    assert [c.user_id for c in cases] == ["1", "2"] and cases[0].history.items == (0, 1, 2)


def test_config_hash_tracks_config(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", RATINGS)
    first = prepare_dataset(_cfg(raw), tmp_path / "a").manifest["config_hash"]
    same = prepare_dataset(_cfg(raw, prepared_dir="elsewhere"), tmp_path / "b").manifest["config_hash"]
    other = prepare_dataset(_cfg(raw, short_users="drop"), tmp_path / "c").manifest["config_hash"]
    assert first == same != other


def test_dedupe_min_rating_and_k_core(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [*RATINGS, (1, 1, 5, 10)])  # one exact repeat
    dataset = prepare_dataset(_cfg(raw, min_rating=4.0, k_core=2), tmp_path / "out")
    removed = dataset.manifest["removed"]
    assert removed["duplicates"] == 1 and removed["below_min_rating"] == 3
    # Rated >= 4: u1{1,3} u2{2,1,5} u3{1,2}; items 3 and 5 have one rating each -> dropped; then
    # u1 has only item 1 left and goes too; u2{2,1} and u3{1,2} remain (a fixed point).
    assert removed["k_core"] == 3
    assert sorted(zip(dataset.interactions["user_id"], dataset.interactions["item_id"], strict=True)) == [
        ("2", "1"), ("2", "2"), ("3", "1"), ("3", "2"),
    ]  # fmt: skip
    assert dataset.manifest["split"]["short_users"] == 2 and dataset.manifest["counts"]["test_rows"] == 0
    with pytest.raises(DataError, match="no interactions left after splitting"):
        prepare_dataset(_cfg(raw, min_rating=4.0, k_core=2, short_users="drop"), tmp_path / "out2")


def test_k_core_iterates_to_a_fixed_point() -> None:
    import pandas as pd

    frame = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["1", "2", "1", "2", "2"]})
    kept, removed = k_core(frame, 2)
    assert removed == 1 and set(kept["user_id"]) == {"a", "b"}
    kept, removed = k_core(frame, 3)
    assert removed == 5 and kept.empty
    assert dedupe(pd.DataFrame({"user_id": ["a", "a"], "item_id": ["1", "1"], "timestamp": [1, 1],
                                "action": ["rate", "rate"], "rating": [float("nan")] * 2}))[1] == 1  # fmt: skip


def test_empty_after_filtering_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", RATINGS)
    with pytest.raises(DataError, match=r"no interactions left after k_core=50"):
        prepare_dataset(_cfg(raw, k_core=50), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temporary directory left behind


def test_unknown_item_names_line_or_is_counted(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [*RATINGS[:3], (1, 99, 4, 30), *RATINGS[3:]])
    with pytest.raises(DataError, match=r"u.data:4: field 'item_id': item '99' is not in the catalog"):
        prepare_dataset(_cfg(raw), tmp_path / "out")
    dataset = prepare_dataset(_cfg(raw, on_bad_row="skip"), tmp_path / "out")
    skipped = dataset.manifest["skipped_rows"]
    assert skipped["total"] == 1 and skipped["by_reason"] == {"item_id: item '99' is not in the catalog": 1}
    assert dataset.manifest["counts"]["interactions"] == 10


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", RATINGS)
    prepare_dataset(_cfg(raw), tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_dataset(_cfg(raw), tmp_path / "out")
    prepare_dataset(_cfg(raw, min_rating=3.0), tmp_path / "out", overwrite=True)
    assert PreparedDataset.load(tmp_path / "out").manifest["config"]["min_rating"] == 3.0


def test_temporal_split_prepares(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", RATINGS)
    dataset = prepare_dataset(_cfg(raw, split="temporal", temporal_valid_fraction=0.2, temporal_test_fraction=0.2), tmp_path / "t")
    assert dataset.manifest["split"]["cutoffs"] == {"valid_from": 13, "test_from": 15}
    assert dataset.manifest["counts"]["test_rows"] == 2  # t=15 and t=20
    check_no_leakage(dataset)


def _app() -> typer.Typer:
    from llmrec.commands import data

    app = typer.Typer()
    data.register(app)

    @app.callback()
    def _root() -> None:  # keeps "data" a sub-command even when it is the only one
        pass

    return app


def test_cli_prepare_and_stats(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [*RATINGS, (1, 77, 4, 40)])
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["data", "prepare", "--dataset", "ml-100k", "--path", str(raw), "--out", str(out), "--on-bad-row", "skip"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "interactions" in result.output and "skipped bad rows: 1" in result.output
    result = runner.invoke(_app(), args)
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(_app(), [*args, "--overwrite", "--min-rating", "4", "data.short_users=drop"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["min_rating"] == 4.0 and manifest["config"]["short_users"] == "drop"
    result = runner.invoke(_app(), ["data", "stats", str(out)])
    assert result.exit_code == 0, result.output
    assert "events per user" in result.output and "leave_one_out" in result.output
    bad = runner.invoke(_app(), ["data", "prepare", "--dataset", "ml-100k", "--path", str(raw), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "item '77' is not in the catalog" in bad.output


def test_repository_data_config_loads() -> None:
    cfg = load_config([REPO / "configs" / "ml100k" / "data.yaml"]).data
    assert cfg.dataset == "ml-100k" and cfg.split == "leave_one_out" and cfg.path is None
