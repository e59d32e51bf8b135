"""Two CPU processes (torchrun, gloo) reproduce one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.train_helpers import save_tokenizer

SCRIPT = Path(__file__).with_name("dist_train_script.py")


def _env() -> dict[str, str]:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(SCRIPT.parents[2]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path: Path, tiny_tokenizer) -> None:
    tok_dir = save_tokenizer(tiny_tokenizer, tmp_path)
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, str(SCRIPT), str(tok_dir), str(single), "4"], check=True, env=_env(),
                   timeout=150)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    subprocess.run([*torchrun, str(SCRIPT), str(tok_dir), str(double), "2"], check=True, env=_env(), timeout=150)
    one = json.loads((single / "result.json").read_text())
    two = json.loads((double / "result.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert one["lrs"] == pytest.approx(two["lrs"], rel=1e-6)  # the schedule steps once per optimizer step
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
