"""scripts/bench_train.py end to end on a tiny random Llama and the fixture dataset (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench_train import main
from tests.fixtures_run import build_dataset
from tests.unit.train_helpers import TINY_LLAMA, save_tokenizer


def bench_args(tmp_path: Path, tokenizer_dir: Path, *overrides: str) -> list[str]:
    arch = json.dumps(TINY_LLAMA).replace(" ", "")
    return ["--steps", "2", "--warmup", "1", "--ceiling-n", "256", "--device", "cpu", "--out", str(tmp_path / "bench.json"),
            f"data.prepared_dir={tmp_path / 'data'}", f"model.name_or_path={tokenizer_dir}",
            f"model.random_init_config={arch}", "model.dtype=fp32", "train.batch_size=2", "train.max_seq_len=128",
            "train.threads=1", "lora.r=4", *overrides]


@pytest.mark.parametrize("overrides", [(), ("train.packing=false", "train.logits_only_on_labels=false")])
def test_bench_train_reports_throughput_and_mfu(tmp_path: Path, tiny_tokenizer, overrides: tuple[str, ...]) -> None:
    build_dataset(tmp_path / "data")
    result = main(bench_args(tmp_path, save_tokenizer(tiny_tokenizer, tmp_path), *overrides))
    assert json.loads((tmp_path / "bench.json").read_text())["tokens_per_s"] == result["tokens_per_s"]
    assert len(result["steps"]) == 2 and all(s["tokens"] > 0 and s["seconds"] > 0 for s in result["steps"])
    assert result["tokens_per_s"]["min"] <= result["tokens_per_s"]["median"] <= result["tokens_per_s"]["max"]
    assert result["ceilings_flops"]["fp32"] > 1e6 and 0 < result["mfu"] < 1.5
    assert result["achieved_flops"] == pytest.approx(result["tokens_per_s"]["median"] * result["flops_per_token"])
    assert result["threads"] == 1 and result["peak_memory_bytes"] > 0 and 0 < result["cpu_share"] < 1.5
    assert result["settings"]["packing"] is (not overrides) and 0 < result["label_share"] <= 1
