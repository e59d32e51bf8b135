"""scripts/profile_train_step.py on a tiny random Llama (fp32 and a bf16 base with fp32 adapters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.profile_train_step import main
from tests.unit.train_helpers import TINY_LLAMA, save_tokenizer


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_profile_runs_and_prints_the_op_table(tmp_path: Path, tiny_tokenizer, dtype: str, capsys) -> None:
    arch = json.dumps(TINY_LLAMA).replace(" ", "")
    seconds = main(["-c", "configs/ml100k/smollm2-lora.yaml", "--batch", "2", "--seq-len", "16", "--steps", "1",
                    "--warmup", "1", "--threads", "1", "--profile", f"model.name_or_path={save_tokenizer(tiny_tokenizer, tmp_path)}",
                    f"model.random_init_config={arch}", f"model.dtype={dtype}", "lora.r=4"])
    out = capsys.readouterr().out
    assert seconds > 0 and "tokens/s" in out and "aten::mm" in out
